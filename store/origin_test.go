package store

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
)

// FileOrigin names the log a file holds by its newest checkpoint, without
// opening it for appending: nothing for a missing file or one without a
// checkpoint.
func TestFileOrigin(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "issuance.db")
	check := func(want string) {
		t.Helper()
		got, err := FileOrigin(path)
		if err != nil || got != want {
			t.Fatalf("FileOrigin = %q, %v; want %q", got, err, want)
		}
	}
	check("")
	l, err := Open(path, Options{Signer: testSigner(t), Origin: "transitca.test/log/r1", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if l.Origin() != "transitca.test/log/r1" {
		t.Fatalf("Origin() = %q", l.Origin())
	}
	if _, err := l.Append(ctx, &Entry{Kind: KindAdmin, Action: "test", Actor: "alice"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	check("transitca.test/log/r1") // Close writes the final checkpoint
}
