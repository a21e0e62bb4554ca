// Package atomicfile writes files so that a crash leaves either the old
// content or the new, never a mix.
package atomicfile

import (
	"io"
	"os"
	"path/filepath"
)

// Write writes data to a temporary file in path's directory, syncs it and
// renames it over path.
func Write(path string, data []byte, perm os.FileMode) error {
	_, err := WriteFrom(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	return err
}

// WriteFrom streams what fill writes into a temporary file in path's
// directory, syncs it and renames it over path; it returns the bytes
// written. If fill fails, path is left as it was.
func WriteFrom(path string, perm os.FileMode, fill func(w io.Writer) error) (int64, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
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
	return cw.n, os.Rename(tmp.Name(), path)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
