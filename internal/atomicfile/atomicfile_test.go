package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFrom(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
	if err := Write(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A failed fill leaves the old file and no temporary behind.
	_, err := WriteFrom(path, 0o600, func(w io.Writer) error {
		_, _ = w.Write([]byte("partial"))
		return errors.New("interrupted")
	})
	if err == nil {
		t.Fatal("a failed fill succeeded")
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Fatalf("after a failed write the file holds %q", got)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
	n, err := WriteFrom(path, 0o640, func(w io.Writer) error {
		_, err := io.WriteString(w, "new content")
		return err
	})
	if err != nil || n != int64(len("new content")) {
		t.Fatalf("WriteFrom = %d, %v", n, err)
	}
	fi, _ := os.Stat(path)
	if got, _ := os.ReadFile(path); string(got) != "new content" || fi.Mode().Perm() != 0o640 {
		t.Fatalf("file holds %q with mode %v", got, fi.Mode().Perm())
	}
}

// TestWriteSyncsDirectoryAfterRename checks that the directory is synced
// once the new content is in place under path, and that a failed directory
// sync is reported: the write is not known to be durable.
func TestWriteSyncsDirectoryAfterRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out")
	if err := Write(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	var synced []string
	var seen string
	var fail error
	orig := syncDir
	t.Cleanup(func() { syncDir = orig })
	syncDir = func(d string) error {
		synced = append(synced, d)
		got, _ := os.ReadFile(path)
		seen = string(got)
		if fail != nil {
			return fail
		}
		return orig(d)
	}

	if err := Write(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if len(synced) != 1 || synced[0] != dir {
		t.Fatalf("directories synced: %q, want [%q]", synced, dir)
	}
	if seen != "new" {
		t.Fatalf("the directory was synced while %s held %q: before the rename", path, seen)
	}

	fail = errors.New("disk gone")
	if err := Write(path, []byte("newer"), 0o600); !errors.Is(err, fail) {
		t.Fatalf("Write with a failing directory sync = %v, want %v", err, fail)
	}
}
