package store

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"
)

// otherVerifier is the verifier of a key that signed none of the test
// logs' checkpoints.
func otherVerifier(t *testing.T) note.Verifier {
	t.Helper()
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, ed25519.SeedSize))
	vkey, err := VerifierKey(testOrigin, key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A verifier key that signed none of the checkpoints is a wrong key, not a
// corrupt log: the error says so and names the key that did sign them.
// One checkpoint among good ones signed by another key is corruption.
func TestVerifyWithTheWrongKey(t *testing.T) {
	orig := buildTamperLog(t)
	l := openTest(t, orig, Options{ReadOnly: true, Verifiers: noteVerifiers(otherVerifier(t))})
	_, err := l.Verify(context.Background(), nil)
	if !errors.Is(err, ErrWrongKey) || errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), testSigner(t).VerifierKey()[:len(testOrigin)+9]) {
		t.Fatalf("Verify with another key: %v; want ErrWrongKey naming the key that signed, not ErrCorrupt", err)
	}
	if _, err := Open(copyFile(t, orig), Options{Verifiers: noteVerifiers(otherVerifier(t))}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Open with another key: %v; want ErrWrongKey", err)
	}

	// The checkpoint of size 200 re-signed with another key.
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, ed25519.SeedSize))
	s, err := NewNoteSigner(testOrigin, other)
	if err != nil {
		t.Fatal(err)
	}
	path := tamper(t, orig, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCheckpoints)
		old := mustGet(t, b, seqKey(200))
		n, err := note.Open(old, note.VerifierList(testVerifier(t)))
		if err != nil {
			return err
		}
		resigned, err := note.Sign(&note.Note{Text: n.Text}, s)
		if err != nil {
			return err
		}
		return b.Put(seqKey(200), resigned)
	})
	l = openTest(t, path, Options{ReadOnly: true, Verifiers: noteVerifiers(testVerifier(t))})
	_, err = l.Verify(context.Background(), nil)
	if errors.Is(err, ErrWrongKey) {
		t.Fatalf("one checkpoint signed by another key: %v; want corruption, not a wrong key", err)
	}
	checkVerifyError(t, "Verify", err, 100, "not signed by a known key")
}
