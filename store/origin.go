package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Origin returns the log's origin, the first line of its checkpoints ("" for
// a log opened without one, read-only).
func (l *Log) Origin() string { return l.origin }

// FileOrigin returns the origin of the newest checkpoint in the log file at
// path, or "" when the file does not exist or holds no checkpoint. It reads
// the file without checking it (Open does) and must not be called while a
// daemon has the file open for appending.
func FileOrigin(path string) (origin string, err error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return "", fmt.Errorf("log file %q: %w", path, err)
	}
	defer db.Close()
	defer recoverCorrupt(path, &err)
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCheckpoints)
		if b == nil {
			return nil
		}
		k, v := b.Cursor().Last()
		if k == nil {
			return nil
		}
		cp, _, err := checkpointBody(v, nil)
		if err != nil {
			return fmt.Errorf("log file %q: newest checkpoint: %w", path, err)
		}
		origin = cp.Origin
		return nil
	})
	return origin, err
}
