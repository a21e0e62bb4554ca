package store

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/faultfs"
)

// recoverWait bounds how long a test waits for a recovery that should come
// within a few RecoverIntervals; it guards against a hang, it measures
// nothing.
const recoverWait = 30 * time.Second

// appendUntilFailed appends entries from concurrent writers until a commit
// fails, and returns the sequence numbers that were acknowledged and the
// first error.
func appendUntilFailed(t *testing.T, l *Log) (map[uint64]bool, error) {
	t.Helper()
	var (
		mu    sync.Mutex
		acked = map[uint64]bool{}
		first error
		stop  atomic.Bool
		wg    sync.WaitGroup
		next  atomic.Int64
	)
	next.Store(1000)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() && next.Load() < 1000000 {
				i := int(next.Add(1))
				seq, err := l.Append(context.Background(), testEntry(i, KindIssuance))
				mu.Lock()
				if err != nil {
					if first == nil {
						first = err
					}
					stop.Store(true)
				} else {
					acked[seq] = true
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return acked, first
}

// checkAcknowledged checks that every acknowledged entry is in l.
func checkAcknowledged(t *testing.T, l *Log, acked map[uint64]bool) {
	t.Helper()
	for seq := range acked {
		e, err := l.Get(context.Background(), seq)
		if err != nil {
			t.Fatalf("acknowledged entry %d: %v", seq, err)
		}
		if e.Kind != KindIssuance {
			t.Fatalf("acknowledged entry %d is a %s entry", seq, e.Kind)
		}
	}
}

// waitRecovered waits until l accepts appends again.
func waitRecovered(t *testing.T, l *Log) {
	t.Helper()
	select {
	case <-l.Recovered():
	case <-time.After(recoverWait):
		t.Fatalf("the log did not recover within %v: %v", recoverWait, l.Err())
	}
}

// The log's file system fills up (a real tmpfs): the commit that finds no
// space fails with ErrFailed and stops appends, nothing unacknowledged is
// reported as written, and reads go on. When space returns, the log
// reopens its file, checks it, records its recovery and takes appends
// again, without being closed; the file verifies and opens again.
func TestFullDiskStopsAppendsAndRecovers(t *testing.T) {
	dir := faultfs.Tmpfs(t, 4<<20)
	path := filepath.Join(dir, "log.db")
	l := openTest(t, path, Options{Signer: testSigner(t), RecoverInterval: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	fillLog(t, l, 10)
	free := faultfs.Fill(t, dir)

	acked, err := appendUntilFailed(t, l)
	if !errors.Is(err, ErrFailed) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("appending to a full file system: %v, want ErrFailed wrapping ENOSPC", err)
	}
	select {
	case <-l.Failed():
	default:
		t.Fatal("Failed() is not closed after the failed commit")
	}
	if _, err := l.Append(context.Background(), testEntry(1, KindAdmin)); !errors.Is(err, ErrFailed) {
		t.Fatalf("Append while the disk is full: %v, want ErrFailed", err)
	}
	// Still full: the log stays failed, and reads are served.
	time.Sleep(200 * time.Millisecond)
	if l.Err() == nil {
		t.Fatal("the log accepts appends again while the disk is still full")
	}
	checkAcknowledged(t, l, acked)

	free()
	waitRecovered(t, l)
	seq, err := l.Append(context.Background(), testEntry(2000000, KindIssuance))
	if err != nil {
		t.Fatalf("Append after space returned: %v", err)
	}
	checkAcknowledged(t, l, acked)
	rec, err := l.Get(context.Background(), seq-1)
	if err != nil || rec.Action != ActionRecovered || !strings.Contains(rec.Detail, "no space left") {
		t.Fatalf("entry before the first new one: %+v, %v; want the %s entry naming the cause", rec, err, ActionRecovered)
	}
	if _, err := l.Verify(context.Background(), nil); err != nil {
		t.Fatalf("Verify after recovery: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close after recovery: %v", err)
	}
	l2 := openTest(t, path, Options{Signer: testSigner(t)})
	checkAcknowledged(t, l2, acked)
	if l2.Size() != seq+1 {
		t.Fatalf("reopened log has %d entries, want %d", l2.Size(), seq+1)
	}
	t.Logf("%d entries acknowledged before the disk was full; recovered at size %d", len(acked)+10, seq)
}

// The log file is made immutable (chattr +i on a real ext4) under the
// open log: the next commit fails with EPERM and appends stop; the
// recovery probe keeps failing while the attribute is set; once it is
// cleared the log takes appends again without being closed.
func TestReadOnlyFileStopsAppendsAndRecovers(t *testing.T) {
	dir := faultfs.Ext4(t, 32<<20)
	path := filepath.Join(dir, "log.db")
	l := openTest(t, path, Options{RecoverInterval: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	fillLog(t, l, 10)
	faultfs.Immutable(t, path, true)

	_, err := l.Append(context.Background(), testEntry(100, KindIssuance))
	if !errors.Is(err, ErrFailed) || !errors.Is(err, syscall.EPERM) {
		t.Fatalf("Append to an immutable file: %v, want ErrFailed wrapping EPERM", err)
	}
	time.Sleep(200 * time.Millisecond)
	if l.Err() == nil {
		t.Fatal("the log accepts appends again while the file is immutable")
	}
	if e, err := l.Get(context.Background(), 9); err != nil || e == nil {
		t.Fatalf("read while the file is immutable: %v", err)
	}
	faultfs.Immutable(t, path, false)
	waitRecovered(t, l)
	if _, err := l.Append(context.Background(), testEntry(101, KindIssuance)); err != nil {
		t.Fatalf("Append after the file is writable again: %v", err)
	}
	if _, err := l.Verify(context.Background(), nil); err != nil {
		t.Fatalf("Verify after recovery: %v", err)
	}
}

// fsync fails for real: the log's ext2 file system sits on a loop
// device whose image is on a tmpfs that the test fills, so the page cache
// takes the writes and the writeback fails. Appends stop; once the disk
// heals, the log rewrites its file from what it reads (the page cache may
// hold pages the disk lost), re-checks it and takes appends again.
func TestFsyncFailureStopsAppendsAndRecovers(t *testing.T) {
	disk := faultfs.NewFailingDisk(t, 16<<20, 128<<20)
	path := filepath.Join(disk.Dir, "log.db")
	l := openTest(t, path, Options{Signer: testSigner(t), RecoverInterval: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	fillLog(t, l, 10)
	free := faultfs.Fill(t, disk.Backing)

	acked, err := appendUntilFailed(t, l)
	// The block layer reports the failed writeback as EIO or, for a loop
	// device out of space, ENOSPC; either way from fsync, not a write.
	fromFsync := errors.Is(err, syscall.EIO) || errors.Is(err, syscall.ENOSPC)
	if !errors.Is(err, ErrFailed) || writeRefused(err) || !fromFsync {
		t.Fatalf("appending while writeback fails: %v, want ErrFailed from a failed fsync", err)
	}
	t.Logf("commit failed: %v", err)
	time.Sleep(200 * time.Millisecond)
	if l.Err() == nil {
		t.Fatal("the log accepts appends again while fsync still fails")
	}
	checkAcknowledged(t, l, acked)

	free()
	waitRecovered(t, l)
	if _, err := l.Append(context.Background(), testEntry(2000000, KindIssuance)); err != nil {
		t.Fatalf("Append after the disk healed: %v", err)
	}
	checkAcknowledged(t, l, acked)
	if _, err := l.Verify(context.Background(), nil); err != nil {
		t.Fatalf("Verify after recovery: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close after recovery: %v", err)
	}
	checkAcknowledged(t, openTest(t, path, Options{Signer: testSigner(t)}), acked)
	t.Logf("%d entries acknowledged before fsync failed", len(acked)+10)
}
