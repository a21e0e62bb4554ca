package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/transitca/transitca/internal/faultfs"
)

// dirNames lists dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// A snapshot is taken whole before it is read: while it lies unread no
// bbolt transaction is open, appends go on and their pages are reused
// (the file does not grow for them beyond their own data), and what is
// read later is the log as it was when the snapshot was taken, a file
// that opens and verifies. The copy is no file of the data directory,
// then or after Close.
func TestSnapshotHoldsNoTransaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := openTest(t, filepath.Join(dir, "log.db"), Options{Signer: testSigner(t)})
	fillLog(t, l, 2000)
	if _, err := l.WriteCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	size, root := l.Root()
	names := dirNames(t, dir)

	snap, err := l.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	if n := l.db.Stats().OpenTxN; n != 0 {
		t.Fatalf("%d bbolt read transactions open while the snapshot lies unread, want 0", n)
	}
	if got := dirNames(t, dir); !slices.Equal(got, names) {
		t.Errorf("the data directory holds %v with a snapshot open, want %v", got, names)
	}
	// Appends meanwhile reuse freed pages: the data grows by about what
	// they hold, as it does with no snapshot at all.
	extent := func() int64 {
		var n int64
		if err := l.view(func(tx *bolt.Tx) error { n = tx.Size(); return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := extent()
	fillLogFrom(t, l, 2000, 500)
	grown := extent() - before
	if grown > 500*4<<10 {
		t.Errorf("500 appends with a snapshot unread grew the data by %d bytes", grown)
	}

	var buf bytes.Buffer
	n, err := io.Copy(&buf, snap)
	if err != nil || n != snap.Size() {
		t.Fatalf("reading the snapshot: %d of %d bytes, %v", n, snap.Size(), err)
	}
	if err := snap.Close(); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, dir); !slices.Equal(got, names) {
		t.Errorf("the data directory holds %v after the snapshot closed, want %v", got, names)
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	if err := writeFile(backup, buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	b := openTest(t, backup, Options{ReadOnly: true, Verifiers: noteVerifiers(testVerifier(t))})
	res, err := b.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != size || !bytes.Equal(res.Root, root) {
		t.Fatalf("the snapshot verifies to size %d root %x; the log had %d %x when it was taken", res.Size, res.Root, size, root)
	}
}

// A snapshot whose context ends while it is written fails with the
// context's error and leaves nothing behind; so does one on a closed log.
func TestSnapshotCanceled(t *testing.T) {
	dir := t.TempDir()
	l := openTest(t, filepath.Join(dir, "log.db"), Options{})
	fillLog(t, l, 100)
	names := dirNames(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if snap, err := l.Snapshot(ctx); !errors.Is(err, context.Canceled) {
		if snap != nil {
			snap.Close()
		}
		t.Fatalf("Snapshot with a cancelled context: %v, want context.Canceled", err)
	}
	if got := dirNames(t, dir); !slices.Equal(got, names) {
		t.Errorf("the data directory holds %v after a cancelled snapshot, want %v", got, names)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Snapshot(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Snapshot of a closed log: %v, want ErrClosed", err)
	}
}

// A snapshot that would leave the log's file system with less free space
// than the log takes (and at least SnapshotReserve) is refused with
// ErrNoSpace before anything is written, and appends go on.
func TestSnapshotRefusedWithoutSpace(t *testing.T) {
	dir := faultfs.Tmpfs(t, 32<<20)
	l := openTest(t, filepath.Join(dir, "log.db"), Options{})
	fillLog(t, l, 200)
	names := dirNames(t, dir)
	snap, err := l.Snapshot(context.Background())
	if !errors.Is(err, ErrNoSpace) {
		if snap != nil {
			snap.Close()
		}
		t.Fatalf("Snapshot on a 32 MiB file system: %v, want ErrNoSpace", err)
	}
	t.Logf("refused: %v", err)
	if got := dirNames(t, dir); !slices.Equal(got, names) {
		t.Errorf("the data directory holds %v after a refused snapshot, want %v", got, names)
	}
	fillLogFrom(t, l, 200, 10)
}
