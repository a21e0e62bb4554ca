package store

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// SnapshotReserve is the least free space a snapshot leaves on the log's
// file system; it leaves at least as much as the log takes, when that is
// more. A snapshot that would leave less is refused (ErrNoSpace): the log
// needs the room to go on appending while the copy exists.
const SnapshotReserve = 64 << 20

// Snapshot is a consistent copy of the log file, taken at one moment, for
// backups. Log.Snapshot writes it whole, at the speed of the disk and
// under one read transaction, before it can be read; reading it then holds
// no transaction, however slowly it is read, so appends go on reusing the
// pages they free and the file does not grow for it. The copy is an
// unlinked temporary file in the log's directory: it takes space there
// until Close, and none after, even if the process dies first.
type Snapshot struct {
	f    *os.File
	name string // still linked, on a system that cannot remove an open file
	size int64
	r    *io.SectionReader
}

// Snapshot copies the log file for a backup (see Snapshot). It fails with
// ErrNoSpace, writing nothing, when the copy would leave less free space
// than SnapshotReserve, or than the log takes; with ctx's error when ctx
// ends while it copies. Snapshots are taken one at a time. The caller
// MUST Close the snapshot.
func (l *Log) Snapshot(ctx context.Context) (_ *Snapshot, err error) {
	if err := l.readable(ctx); err != nil {
		return nil, err
	}
	l.snapMu.Lock()
	defer l.snapMu.Unlock()
	dir := filepath.Dir(l.path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(l.path)+".snapshot-")
	if err != nil {
		return nil, fmt.Errorf("snapshot of %q: %w", l.path, err)
	}
	s := &Snapshot{f: f, name: f.Name()}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	if os.Remove(f.Name()) == nil {
		s.name = ""
	}
	err = l.view(func(tx *bolt.Tx) error {
		if err := checkSnapshotSpace(dir, tx.Size()); err != nil {
			return fmt.Errorf("snapshot of %q: %w", l.path, err)
		}
		n, err := tx.WriteTo(&ctxWriter{ctx: ctx, w: f})
		s.size = n
		return err
	})
	if err != nil {
		return nil, err
	}
	s.r = io.NewSectionReader(f, 0, s.size)
	return s, nil
}

// Size is the snapshot's length in bytes.
func (s *Snapshot) Size() int64 { return s.size }

// Read reads the snapshot from where the last Read ended.
func (s *Snapshot) Read(p []byte) (int, error) { return s.r.Read(p) }

// Close releases the copy and its space.
func (s *Snapshot) Close() error {
	err := s.f.Close()
	if s.name != "" {
		if rerr := os.Remove(s.name); err == nil {
			err = rerr
		}
		s.name = ""
	}
	return err
}

// ctxWriter is w that fails with ctx's error once ctx ends.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c *ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// checkSnapshotSpace refuses a copy of size bytes in dir that would leave
// less free space than SnapshotReserve or than size.
func checkSnapshotSpace(dir string, size int64) error {
	free, ok := freeSpace(dir)
	if !ok {
		return nil
	}
	if need := size + max(size, SnapshotReserve); free < need {
		return fmt.Errorf("%w: a copy of %d bytes needs %d free in %s (room for the copy and as much again for the log, at least %d MiB), and %d are free",
			ErrNoSpace, size, need, dir, SnapshotReserve>>20, free)
	}
	return nil
}
