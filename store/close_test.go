package store

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// blockingSigner is a note signer whose Sign waits until release is
// closed, like a Transit key behind an unreachable Vault.
type blockingSigner struct {
	note.Signer
	release chan struct{}
}

func (s blockingSigner) Sign(msg []byte) ([]byte, error) {
	<-s.release
	return nil, errors.New("vault unreachable")
}

// Close must not hang or fail when the checkpoint key cannot sign; the
// checkpoint it could not write is written soon after the next Open.
func TestCloseWithUnreachableSigner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	release := make(chan struct{})
	defer close(release)
	quiet := slog.New(slog.DiscardHandler)
	l, err := Open(path, Options{
		Signer: blockingSigner{testSigner(t), release}, Verifiers: noteVerifiers(testVerifier(t)),
		CheckpointEvery: 10, CheckpointInterval: time.Hour, CloseTimeout: 300 * time.Millisecond, Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	fillLog(t, l, 25) // the checkpoint loop is now stuck signing
	start := time.Now()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v with the signer unreachable", d)
	}

	l2 := openTest(t, path, Options{Signer: testSigner(t), CheckpointInterval: time.Hour, Logger: quiet})
	if l2.Size() != 25 {
		t.Fatalf("reopened log has %d entries, want 25", l2.Size())
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		sizes, err := l2.Checkpoints(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(sizes) > 0 && sizes[len(sizes)-1] == 25 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint of size 25 after reopening (checkpoints %v)", sizes)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
