package store

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
)

// fuzzLog is a small signed log with a checkpoint, for the proof targets.
func fuzzLog(f *testing.F) (l *Log, cp []byte, leaves [][]byte) {
	f.Helper()
	l = openTest(f, filepath.Join(f.TempDir(), "log.db"), Options{NoSync: true, Signer: testSigner(f)})
	fillLog(f, l, 9)
	cp, err := l.WriteCheckpoint(context.Background())
	if err != nil {
		f.Fatal(err)
	}
	for i := range 9 {
		rec, err := l.LeafData(context.Background(), uint64(i))
		if err != nil {
			f.Fatal(err)
		}
		leaves = append(leaves, rec)
	}
	return l, cp, leaves
}

// flatten joins proof hashes; unflatten splits fuzz bytes into 32-byte
// hashes (a short tail is a hash of the wrong length).
func flatten(p [][]byte) []byte { return bytes.Join(p, nil) }

func unflatten(b []byte) [][]byte {
	var p [][]byte
	for len(b) > 0 {
		n := min(32, len(b))
		p = append(p, b[:n])
		b = b[n:]
	}
	return p
}

// An inclusion proof checked offline against a signed checkpoint: any
// checkpoint text, leaf, index and proof bytes are refused with
// ErrInvalidCheckpoint or ErrInvalidProof, never a panic; one that passes
// proves a leaf the log holds at that index.
func FuzzVerifyInclusion(f *testing.F) {
	l, cp, leaves := fuzzLog(f)
	for _, i := range []uint64{0, 4, 8} {
		p, err := l.InclusionProof(context.Background(), i, 9)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(cp, leaves[i], i, flatten(p))
	}
	f.Add(cp, []byte("x"), uint64(1<<63), []byte{})
	f.Add([]byte("transitca\n9\n\n"), leaves[0], uint64(0), []byte{1, 2, 3})
	v := testVerifier(f)
	f.Fuzz(func(t *testing.T, checkpoint, leaf []byte, index uint64, proof []byte) {
		_, err := VerifyInclusion(checkpoint, v, leaf, index, unflatten(proof))
		if err != nil {
			if !errors.Is(err, ErrInvalidProof) && !errors.Is(err, ErrInvalidCheckpoint) {
				t.Fatalf("error wraps neither ErrInvalidProof nor ErrInvalidCheckpoint: %v", err)
			}
			return
		}
		if index >= uint64(len(leaves)) || !bytes.Equal(leaf, leaves[index]) {
			t.Fatalf("a proof for leaf %x at index %d passed; the log holds no such leaf", leaf, index)
		}
	})
}

// A consistency proof between two signed checkpoints: anything but the
// log's own checkpoints and proofs is refused with a sentinel, never a
// panic.
func FuzzVerifyConsistency(f *testing.F) {
	l, cp9, _ := fuzzLog(f)
	fillLogFrom(f, l, 9, 8)
	cp17, err := l.WriteCheckpoint(context.Background())
	if err != nil {
		f.Fatal(err)
	}
	p, err := l.ConsistencyProof(context.Background(), 9, 17)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(cp9, cp17, flatten(p))
	f.Add(cp17, cp9, flatten(p))
	f.Add(cp9, cp9, []byte{})
	v := testVerifier(f)
	f.Fuzz(func(t *testing.T, older, newer, proof []byte) {
		err := VerifyConsistency(older, newer, v, unflatten(proof))
		if err != nil && !errors.Is(err, ErrInvalidProof) && !errors.Is(err, ErrInvalidCheckpoint) {
			t.Fatalf("error wraps neither ErrInvalidProof nor ErrInvalidCheckpoint: %v", err)
		}
	})
}

// A page token comes back from the caller: any string is a page token of
// this query or ErrInvalidQuery, never a panic.
func FuzzQueryPageToken(f *testing.F) {
	l, _, _ := fuzzLog(f)
	q := Query{Namespace: "ns-1", Limit: 1}
	_, next, err := l.Query(context.Background(), q)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(next)
	f.Add("")
	f.Add("AQ")
	f.Fuzz(func(t *testing.T, tok string) {
		q := q
		q.PageToken = tok
		if _, _, err := l.Query(context.Background(), q); err != nil && !errors.Is(err, ErrInvalidQuery) {
			t.Fatalf("page token %q: %v, want ErrInvalidQuery", tok, err)
		}
	})
}
