package store

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// referenceRoot is the RFC 6962 Merkle tree hash, computed naively.
func referenceRoot(leaves [][]byte) []byte {
	switch len(leaves) {
	case 0:
		h := sha256.Sum256(nil)
		return h[:]
	case 1:
		return leaves[0]
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	return hasher.HashChildren(referenceRoot(leaves[:k]), referenceRoot(leaves[k:]))
}

// Proofs are served from stored subtree nodes; check them against a naive
// tree for sizes around the stored levels.
func TestProofsMatchReferenceTree(t *testing.T) {
	ctx := context.Background()
	const n = 600
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{NoSync: true})
	fillLogBatched(t, l, 0, n, 97, func(i int) *Entry { return testEntry(i, kindOf(i)) })
	leaves := make([][]byte, n)
	for i := range leaves {
		rec, err := l.LeafData(ctx, uint64(i))
		if err != nil {
			t.Fatal(err)
		}
		leaves[i] = leafHash(rec)
	}
	if size, root := l.Root(); size != n || !bytes.Equal(root, referenceRoot(leaves)) {
		t.Fatalf("root of %d entries differs from the reference", size)
	}
	for _, size := range []uint64{1, 2, 3, 255, 256, 257, 300, 511, 512, 513, 600} {
		root := referenceRoot(leaves[:size])
		for _, i := range []uint64{0, 1, size / 2, 255, 256, size - 1} {
			if i >= size {
				continue
			}
			p, err := l.InclusionProof(ctx, i, size)
			if err != nil {
				t.Fatalf("InclusionProof(%d, %d): %v", i, size, err)
			}
			if err := verifyInclusionRaw(i, size, leaves[i], p, root); err != nil {
				t.Fatalf("inclusion %d in %d: %v", i, size, err)
			}
		}
		for _, size1 := range []uint64{1, 7, 256, 257, 300} {
			if size1 > size {
				continue
			}
			p, err := l.ConsistencyProof(ctx, size1, size)
			if err != nil {
				t.Fatalf("ConsistencyProof(%d, %d): %v", size1, size, err)
			}
			if err := verifyConsistencyRaw(size1, size, p, referenceRoot(leaves[:size1]), root); err != nil {
				t.Fatalf("consistency %d→%d: %v", size1, size, err)
			}
		}
	}
}

func TestInclusionProofOffline(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{Signer: testSigner(t)})
	entries := fillLog(t, l, 20)
	cp, err := l.WriteCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The auditor has only the checkpoint, the published verifier key
	// text, the entry and the proof.
	v := testVerifier(t)
	e := entries[13]
	p, err := l.InclusionProof(ctx, e.Seq, 20)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := e.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyInclusion(cp, v, leaf, e.Seq, p)
	if err != nil {
		t.Fatalf("VerifyInclusion of an entry in the log: %v", err)
	}
	if got.Origin != testOrigin || got.Size != 20 {
		t.Fatalf("checkpoint = %+v", got)
	}

	notInLog := testEntry(999, KindIssuance)
	notInLog.Seq = e.Seq
	forged, err := notInLog.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	altered := *e
	altered.GrantedTTL += time.Hour
	alteredLeaf, err := altered.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := NewNoteVerifier(testOrigin, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, 32)).Public().(ed25519.PublicKey))
	for _, tc := range []struct {
		name  string
		cp    []byte
		v     note.Verifier
		leaf  []byte
		index uint64
		proof [][]byte
		want  error
	}{
		{"entry not in the log", cp, v, forged, e.Seq, p, ErrInvalidProof},
		{"altered entry", cp, v, alteredLeaf, e.Seq, p, ErrInvalidProof},
		{"wrong index", cp, v, leaf, e.Seq + 1, p, ErrInvalidProof},
		{"index beyond the checkpoint", cp, v, leaf, 20, p, ErrInvalidProof},
		{"truncated proof", cp, v, leaf, e.Seq, p[1:], ErrInvalidProof},
		{"wrong verifier key", cp, otherKey, leaf, e.Seq, p, ErrInvalidCheckpoint},
		{"altered checkpoint", bytes.Replace(cp, []byte("\n20\n"), []byte("\n21\n"), 1), v, leaf, e.Seq, p, ErrInvalidCheckpoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := VerifyInclusion(tc.cp, tc.v, tc.leaf, tc.index, tc.proof); !errors.Is(err, tc.want) {
				t.Fatalf("VerifyInclusion: %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := l.InclusionProof(ctx, 20, 20); !errors.Is(err, ErrNotFound) {
		t.Fatalf("InclusionProof for an index not in the log: %v, want ErrNotFound", err)
	}
	if _, err := l.InclusionProof(ctx, 0, 21); !errors.Is(err, ErrNotFound) {
		t.Fatalf("InclusionProof for a tree larger than the log: %v, want ErrNotFound", err)
	}
}

func TestConsistencyBetweenCheckpoints(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{Signer: testSigner(t)})
	fillLog(t, l, 13)
	cp1, err := l.WriteCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fillLogBatched(t, l, 13, 300, 100, func(i int) *Entry { return testEntry(i, kindOf(i)) })
	cp2, err := l.WriteCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v := testVerifier(t)
	p, err := l.ConsistencyProof(ctx, 13, 313)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyConsistency(cp1, cp2, v, p); err != nil {
		t.Fatalf("VerifyConsistency: %v", err)
	}
	bad := append([][]byte(nil), p...)
	bad[0] = bytes.Repeat([]byte{1}, 32)
	if err := VerifyConsistency(cp1, cp2, v, bad); !errors.Is(err, ErrInvalidProof) {
		t.Fatalf("VerifyConsistency with a bad proof: %v", err)
	}
	if err := VerifyConsistency(cp2, cp1, v, p); !errors.Is(err, ErrInvalidProof) {
		t.Fatalf("VerifyConsistency with sizes reversed: %v", err)
	}
	// Stored checkpoints are listed and retrievable.
	sizes, err := l.Checkpoints(ctx)
	if err != nil || len(sizes) != 2 || sizes[0] != 13 || sizes[1] != 313 {
		t.Fatalf("Checkpoints = %v, %v", sizes, err)
	}
	got, err := l.CheckpointAt(ctx, 13)
	if err != nil || !bytes.Equal(got, cp1) {
		t.Fatalf("CheckpointAt(13) = %q, %v", got, err)
	}
	latest, err := l.LatestCheckpoint(ctx)
	if err != nil || !bytes.Equal(latest, cp2) {
		t.Fatalf("LatestCheckpoint = %q, %v", latest, err)
	}
}

func TestCheckpointSchedule(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "log.db")
	t.Run("every N entries", func(t *testing.T) {
		l := openTest(t, path, Options{Signer: testSigner(t), CheckpointEvery: 10, CheckpointInterval: time.Hour})
		fillLog(t, l, 25)
		waitFor(t, func() bool { return l.Stats().CheckpointSize >= 10 })
	})
	t.Run("interval", func(t *testing.T) {
		l := openTest(t, path, Options{Signer: testSigner(t), CheckpointEvery: 1 << 20, CheckpointInterval: 20 * time.Millisecond})
		fillLogFrom(t, l, 25, 3)
		waitFor(t, func() bool { return l.Stats().CheckpointSize == 28 })
	})
	t.Run("on close", func(t *testing.T) {
		l := openTest(t, path, Options{Signer: testSigner(t), CheckpointEvery: 1 << 20, CheckpointInterval: time.Hour})
		fillLogFrom(t, l, 28, 4)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		ro := openTest(t, path, Options{ReadOnly: true})
		cp, err := ro.LatestCheckpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		body, err := OpenCheckpoint(cp, testVerifier(t))
		if err != nil || body.Size != 32 {
			t.Fatalf("checkpoint after Close = %+v, %v; want size 32", body, err)
		}
		if want := testOrigin + "\n32\n"; !bytes.HasPrefix(cp, []byte(want)) {
			t.Fatalf("checkpoint text %q does not start with %q", cp, want)
		}
	})
	t.Run("no signer", func(t *testing.T) {
		l := openTest(t, filepath.Join(t.TempDir(), "nosig.db"), Options{})
		fillLog(t, l, 2)
		if _, err := l.LatestCheckpoint(ctx); !errors.Is(err, ErrNotFound) {
			t.Fatalf("LatestCheckpoint without a signer: %v", err)
		}
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNoteKeysInteroperate(t *testing.T) {
	pub := testKey.Public().(ed25519.PublicKey)
	ours, err := VerifierKey(testOrigin, pub)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := note.NewEd25519VerifierKey(testOrigin, pub)
	if err != nil {
		t.Fatal(err)
	}
	if ours != theirs {
		t.Fatalf("VerifierKey = %q, note.NewEd25519VerifierKey = %q", ours, theirs)
	}
	s := testSigner(t)
	v, err := note.NewVerifier(theirs)
	if err != nil {
		t.Fatal(err)
	}
	if s.KeyHash() != v.KeyHash() || s.Name() != v.Name() {
		t.Fatalf("signer %s/%08x, verifier %s/%08x", s.Name(), s.KeyHash(), v.Name(), v.KeyHash())
	}
	msg, err := note.Sign(&note.Note{Text: "hello\n"}, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
		t.Fatalf("note signed by NoteSigner does not open with the standard verifier: %v", err)
	}
	if s.VerifierKey() != theirs {
		t.Fatal("NoteSigner.VerifierKey differs")
	}
}

type badSigner struct{ crypto.Signer }

func (b badSigner) Sign(r io.Reader, msg []byte, o crypto.SignerOpts) ([]byte, error) {
	return make([]byte, ed25519.SignatureSize), nil
}

func TestNoteSignerChecks(t *testing.T) {
	if _, err := NewNoteSigner("bad name", testKey); err == nil {
		t.Error("NewNoteSigner accepted a name with a space")
	}
	if _, err := NewNoteSigner("a+b", testKey); err == nil {
		t.Error("NewNoteSigner accepted a name with '+'")
	}
	ec, _ := ecdsaKey()
	if _, err := NewNoteSigner("x", ec); err == nil {
		t.Error("NewNoteSigner accepted an ECDSA key")
	}
	s, err := NewNoteSigner("x", badSigner{testKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign([]byte("m")); err == nil {
		t.Error("a signature that does not verify was accepted")
	}
	if _, err := VerifierKey("x", ed25519.PublicKey{1, 2}); err == nil {
		t.Error("VerifierKey accepted a short key")
	}
}
