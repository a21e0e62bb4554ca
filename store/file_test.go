package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Files that are not a log this build can use are refused with an error
// that names the file and says what is wrong, and are left byte-identical.
func TestOpenRefusesFiles(t *testing.T) {
	realLog := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "log.db")
		l := openTest(t, path, Options{})
		fillLogBatched(t, l, 0, 2000, 500, func(i int) *Entry { return testEntry(i, kindOf(i)) })
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name string
		make func(t *testing.T) string
		want error
		says string
	}{
		{
			name: "random bytes",
			make: func(t *testing.T) string {
				b := make([]byte, 64<<10)
				_, _ = rand.Read(b)
				path := filepath.Join(t.TempDir(), "random.db")
				if err := os.WriteFile(path, b, 0o600); err != nil {
					t.Fatal(err)
				}
				return path
			},
			want: ErrNotALog, says: "not a bbolt database",
		},
		{
			name: "tiny text file",
			make: func(t *testing.T) string {
				path := filepath.Join(t.TempDir(), "notes.txt")
				if err := os.WriteFile(path, []byte("hello\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				return path
			},
			want: ErrNotALog, says: "too short",
		},
		{
			name: "truncated log",
			make: func(t *testing.T) string {
				// bbolt pre-allocates the file in chunks: cut half of
				// the part that holds data.
				path := realLog(t)
				m := parseBoltMeta(readFile(t, path)[:boltMetaEnd])
				if !m.valid {
					t.Fatal("no valid bbolt meta page")
				}
				if err := os.Truncate(path, int64(m.pgid)*int64(m.pageSize)/2); err != nil {
					t.Fatal(err)
				}
				return path
			},
			want: ErrCorrupt, says: "truncated",
		},
		{
			name: "foreign bbolt file",
			make: func(t *testing.T) string {
				path := filepath.Join(t.TempDir(), "other.db")
				db, err := bolt.Open(path, 0o600, nil)
				if err != nil {
					t.Fatal(err)
				}
				err = db.Update(func(tx *bolt.Tx) error {
					b, err := tx.CreateBucket([]byte("widgets"))
					if err != nil {
						return err
					}
					return b.Put([]byte("k"), []byte("v"))
				})
				if err != nil {
					t.Fatal(err)
				}
				_ = db.Close()
				return path
			},
			want: ErrNotALog, says: "without a \"meta\" bucket",
		},
		{
			name: "bbolt file with a meta bucket of another program",
			make: func(t *testing.T) string {
				path := filepath.Join(t.TempDir(), "other.db")
				db, err := bolt.Open(path, 0o600, nil)
				if err != nil {
					t.Fatal(err)
				}
				err = db.Update(func(tx *bolt.Tx) error {
					b, err := tx.CreateBucket([]byte("meta"))
					if err != nil {
						return err
					}
					return b.Put([]byte("version"), []byte("3"))
				})
				if err != nil {
					t.Fatal(err)
				}
				_ = db.Close()
				return path
			},
			want: ErrNotALog, says: "magic",
		},
		{
			name: "newer schema",
			make: func(t *testing.T) string {
				path := realLog(t)
				db, err := bolt.Open(path, 0o600, nil)
				if err != nil {
					t.Fatal(err)
				}
				err = db.Update(func(tx *bolt.Tx) error {
					return tx.Bucket(bucketMeta).Put(metaKeySchema, binary.BigEndian.AppendUint32(nil, schemaVersion+1))
				})
				if err != nil {
					t.Fatal(err)
				}
				_ = db.Close()
				return path
			},
			want: ErrSchemaTooNew, says: fmt.Sprintf("schema version %d, this build reads up to version %d", schemaVersion+1, schemaVersion),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.make(t)
			for _, ro := range []bool{false, true} {
				before := readFile(t, path)
				l, err := Open(path, Options{ReadOnly: ro, LockTimeout: 200 * time.Millisecond})
				if err == nil {
					_ = l.Close()
					t.Fatalf("Open(ReadOnly=%v) accepted the file", ro)
				}
				if !errors.Is(err, tc.want) {
					t.Errorf("Open(ReadOnly=%v): %v, want %v", ro, err, tc.want)
				}
				msg := err.Error()
				if !strings.Contains(msg, path) || !strings.Contains(msg, tc.says) {
					t.Errorf("Open(ReadOnly=%v) error %q should name the file and say %q", ro, msg, tc.says)
				}
				if after := readFile(t, path); string(after) != string(before) {
					t.Errorf("Open(ReadOnly=%v) modified the file it refused", ro)
				}
			}
		})
	}
}

func TestOpenLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	_ = openTest(t, path, Options{})
	start := time.Now()
	_, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "is in use by another process") || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Open: %v, want ErrInUse naming the file", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("second Open took %v", d)
	}
}

func TestOpenReadOnlyMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.db")
	if _, err := Open(path, Options{ReadOnly: true}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read-only Open of a missing file: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("read-only Open created the file")
	}
}

func TestOpenEmptyFileCreatesLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l := openTest(t, path, Options{})
	if _, err := l.Append(context.Background(), testEntry(1, KindAdmin)); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesChangedOrigin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	l := openTest(t, path, Options{Signer: testSigner(t)})
	fillLog(t, l, 3)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, Options{Signer: testSigner(t), Origin: "another.origin"})
	if err == nil || !strings.Contains(err.Error(), "origin") {
		t.Fatalf("Open with another origin: %v", err)
	}
}
