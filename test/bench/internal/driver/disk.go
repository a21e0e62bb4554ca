package driver

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/transitca/transitca/test/bench/loadgen"
)

// diskCommits is how many raw commits measureDisk times.
const diskCommits = 400

// diskLatency is what a durable commit costs the disk the logs are on,
// before any database: the floor under the issuance log's commit latency.
type diskLatency struct {
	// write is one 4 KiB page written and fdatasynced.
	write loadgen.Summary
	// commit is bbolt's minimum: a data page written and fdatasynced, then
	// the meta page written and fdatasynced.
	commit loadgen.Summary
}

// measureDisk times raw commits to a scratch file in dir, which must be
// on the file system of the daemons' data directories.
func measureDisk(dir string) (*diskLatency, error) {
	path := filepath.Join(dir, "disk-commit-latency")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer os.Remove(path)
	defer f.Close()
	page := make([]byte, 4096)
	sync := func(off int64) error {
		if _, err := f.WriteAt(page, off); err != nil {
			return err
		}
		return unix.Fdatasync(int(f.Fd()))
	}
	writes := make([]time.Duration, 0, diskCommits)
	commits := make([]time.Duration, 0, diskCommits)
	for i := range diskCommits {
		page[0] = byte(i)
		t0 := time.Now()
		if err := sync(int64(len(page)) * int64(i+2)); err != nil {
			return nil, fmt.Errorf("disk latency: %w", err)
		}
		t1 := time.Now()
		if err := sync(0); err != nil {
			return nil, fmt.Errorf("disk latency: %w", err)
		}
		writes = append(writes, t1.Sub(t0))
		commits = append(commits, time.Since(t0))
	}
	return &diskLatency{write: loadgen.Summarize(writes), commit: loadgen.Summarize(commits)}, nil
}
