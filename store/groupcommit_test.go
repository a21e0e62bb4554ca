package store

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A lone append commits by itself, and appends that queue while a commit
// is under way share the next one; Stats counts the commits by the number
// of entries each carried.
func TestGroupCommitSizes(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{})
	const lone = 5
	for i := range lone {
		if _, err := l.Append(ctx, testEntry(i, KindIssuance)); err != nil {
			t.Fatal(err)
		}
	}
	st := l.Stats()
	if st.Commits != lone || st.CommitSizes[0] != lone || st.CommitEntries != lone {
		t.Fatalf("%d appends one after another: %d commits, %d of one entry, %d entries committed; want %d, %d, %d",
			lone, st.Commits, st.CommitSizes[0], st.CommitEntries, lone, lone, lone)
	}

	// Hold the committer inside a commit of one entry while more queue.
	const queued = 100 // between 64 and 128: CommitSizes[7]
	l.dbMu.Lock()
	var wg sync.WaitGroup
	appendAt := func(i int) {
		wg.Go(func() {
			if _, err := l.Append(ctx, testEntry(i, KindIssuance)); err != nil {
				t.Error(err)
			}
		})
	}
	appendAt(lone)
	time.Sleep(200 * time.Millisecond) // the committer takes it and waits for the file
	for i := range queued {
		appendAt(lone + 1 + i)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(l.reqs) < queued {
		if time.Now().After(deadline) {
			l.dbMu.Unlock()
			t.Fatalf("%d appends queued, want %d", len(l.reqs), queued)
		}
		time.Sleep(time.Millisecond)
	}
	l.dbMu.Unlock()
	wg.Wait()

	st = l.Stats()
	if got, want := st.Commits-lone, uint64(2); got != want {
		t.Errorf("one held append and %d queued behind it: %d commits, want %d", queued, got, want)
	}
	if st.CommitSizes[0] != lone+1 || st.CommitSizes[7] != 1 {
		t.Errorf("commits by size %v, want %d of one entry and one of 65 to 128", st.CommitSizes, lone+1)
	}
	if st.CommitEntries != st.Size || st.Size != lone+1+queued {
		t.Errorf("%d entries committed, log size %d, want %d", st.CommitEntries, st.Size, lone+1+queued)
	}
	var n uint64
	for _, c := range st.CommitSizes {
		n += c
	}
	if n != st.Commits {
		t.Errorf("commits by size add up to %d, want %d", n, st.Commits)
	}
}

// The largest group commit (maxBatchEntries) is counted in the bucket
// before the last, and a larger batch (a bulk fill handed to commit
// directly) in the last, not past the end of the table.
func TestCommitSizesLargeBatch(t *testing.T) {
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{})
	fillLogBatched(t, l, 0, maxBatchEntries, maxBatchEntries, func(i int) *Entry { return testEntry(i, KindIssuance) })
	fillLogBatched(t, l, maxBatchEntries, maxBatchEntries+1, maxBatchEntries+1, func(i int) *Entry { return testEntry(i, KindIssuance) })
	st := l.Stats()
	want := [CommitSizeBuckets]uint64{CommitSizeBuckets - 2: 1, CommitSizeBuckets - 1: 1}
	if st.Commits != 2 || st.CommitSizes != want || st.CommitEntries != 2*maxBatchEntries+1 {
		t.Fatalf("commits of %d and %d entries: %d commits, sizes %v, %d entries; want 2, %v, %d",
			maxBatchEntries, maxBatchEntries+1, st.Commits, st.CommitSizes, st.CommitEntries, want, 2*maxBatchEntries+1)
	}
}
