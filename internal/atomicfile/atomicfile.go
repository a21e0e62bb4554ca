// Package atomicfile writes files so that a crash leaves either the old
// content or the new, never a mix, and so that a write that returned
// without error survives a crash.
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Write writes data to a temporary file in path's directory, syncs it,
// renames it over path and syncs the directory.
func Write(path string, data []byte, perm os.FileMode) error {
	_, err := WriteFrom(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	return err
}

// WriteFrom streams what fill writes into a temporary file in path's
// directory, syncs it, renames it over path and syncs the directory; it
// returns the bytes written. If fill fails, path is left as it was. When
// WriteFrom returns without error the new content MUST survive a crash:
// the file's data is synced before the rename, and the directory (which
// holds the name) after it.
func WriteFrom(path string, perm os.FileMode, fill func(w io.Writer) error) (int64, error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	cw := &countingWriter{w: tmp}
	if err := fill(cw); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return 0, err
	}
	if err := syncDir(dir); err != nil {
		return 0, err
	}
	return cw.n, nil
}

// SyncDir makes the changes to dir's entries (a rename, a new file)
// durable: until the directory is synced, a crash can leave the old names
// in place.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %q: %w", dir, err)
	}
	return nil
}

// syncDir is SyncDir, a variable so that tests can see when it is called.
var syncDir = SyncDir

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
