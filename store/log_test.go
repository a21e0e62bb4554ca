package store

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestAppendGetRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind Kind
	}{
		{"issuance", KindIssuance},
		{"denial", KindDenial},
		{"admin", KindAdmin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "log.db")
			l := openTest(t, path, Options{})
			// Two entries, so the one checked is not at index 0.
			if _, err := l.Append(ctx, testEntry(100, KindAdmin)); err != nil {
				t.Fatal(err)
			}
			want := testEntry(7, tc.kind)
			seq, err := l.Append(ctx, want)
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if seq != 1 || want.Seq != 1 {
				t.Fatalf("Append returned seq %d, set e.Seq %d; want 1", seq, want.Seq)
			}
			check := func(l *Log) {
				t.Helper()
				got, err := l.Get(ctx, seq)
				if err != nil {
					t.Fatalf("Get: %v", err)
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("Get(%d) =\n%+v\nwant\n%+v", seq, got, want)
				}
				leaf, err := l.LeafData(ctx, seq)
				if err != nil {
					t.Fatal(err)
				}
				enc, err := want.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(leaf, enc) {
					t.Errorf("LeafData differs from MarshalBinary")
				}
			}
			check(l)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			check(openTest(t, path, Options{}))
			check(openTest(t, copyFile(t, path), Options{ReadOnly: true}))
		})
	}
}

func TestGetNotFound(t *testing.T) {
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{})
	fillLog(t, l, 3)
	if _, err := l.Get(context.Background(), 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(3) on a log of 3: %v, want ErrNotFound", err)
	}
}

func TestAppendTimeDefaultsToNow(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{Now: func() time.Time { return now }})
	e := testEntry(1, KindAdmin)
	e.Time = time.Time{}
	if _, err := l.Append(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	got, err := l.Get(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(now) || got.Time.Location() != time.UTC || !e.Time.Equal(now) {
		t.Fatalf("Time = %v (entry %v), want %v in UTC", got.Time, e.Time, now)
	}
}

func TestAppendRejectsInvalidEntries(t *testing.T) {
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{})
	for _, tc := range []struct {
		name   string
		modify func(e *Entry)
	}{
		{"no kind", func(e *Entry) { e.Kind = 0 }},
		{"unknown kind", func(e *Entry) { e.Kind = 9 }},
		{"issuance without serial", func(e *Entry) { e.Serial = "" }},
		{"uppercase serial", func(e *Entry) { e.Serial = "ABCDEF" }},
		{"serial not hex", func(e *Entry) { e.Serial = "xyz" }},
		{"issuance without certificate", func(e *Entry) { e.Certificate = nil }},
		{"issuance without SPIFFE ID", func(e *Entry) { e.SPIFFEID = "" }},
		{"SPIFFE ID not a spiffe URI", func(e *Entry) { e.SPIFFEID = "https://example.com" }},
		{"NUL in namespace", func(e *Entry) { e.Namespace = "a\x00b" }},
		{"bad issuer fingerprint", func(e *Entry) { e.IssuerFingerprint = "abcd" }},
		{"NotAfter before NotBefore", func(e *Entry) { e.NotAfter = e.NotBefore.Add(-time.Second) }},
		{"no NotAfter", func(e *Entry) { e.NotAfter = time.Time{} }},
		{"time out of range", func(e *Entry) { e.Time = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"invalid UTF-8", func(e *Entry) { e.Tier = "\xff" }},
		{"huge certificate", func(e *Entry) { e.Certificate = make([]byte, maxCertificate+1) }},
		{"denial with serial", func(e *Entry) { e.Kind = KindDenial; e.Code = "X" }},
		{"admin without action", func(e *Entry) {
			*e = *testEntry(1, KindAdmin)
			e.Action = ""
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := testEntry(1, KindIssuance)
			tc.modify(e)
			if _, err := l.Append(context.Background(), e); !errors.Is(err, ErrInvalidEntry) {
				t.Fatalf("Append: %v, want ErrInvalidEntry", err)
			}
		})
	}
	if n := l.Size(); n != 0 {
		t.Fatalf("Size = %d after only invalid appends", n)
	}
}

func TestDuplicateSerial(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{})
	if _, err := l.Append(ctx, testEntry(1, KindIssuance)); err != nil {
		t.Fatal(err)
	}
	dup := testEntry(1, KindIssuance)
	dup.SPIFFEID = "spiffe://cluster.local/ns/other/sa/other"
	if _, err := l.Append(ctx, dup); !errors.Is(err, ErrDuplicateSerial) {
		t.Fatalf("second Append with the same serial: %v, want ErrDuplicateSerial", err)
	}
	// The log continues, contiguously.
	seq, err := l.Append(ctx, testEntry(2, KindIssuance))
	if err != nil || seq != 1 {
		t.Fatalf("Append after duplicate = %d, %v; want 1, nil", seq, err)
	}
	if _, err := l.Verify(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentAppend(t *testing.T) {
	const writers, each = 64, 40
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "log.db")
	l := openTest(t, path, Options{Signer: testSigner(t), CheckpointEvery: 500})

	type ack struct {
		seq    uint64
		serial string
	}
	acks := make([][]ack, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for j := range each {
				e := testEntry(w*each+j, KindIssuance)
				seq, err := l.Append(ctx, e)
				if err != nil {
					t.Errorf("writer %d: Append: %v", w, err)
					return
				}
				acks[w] = append(acks[w], ack{seq, e.Serial})
			}
		})
	}
	wg.Wait()

	var seqs []uint64
	for _, a := range acks {
		for _, x := range a {
			seqs = append(seqs, x.seq)
		}
	}
	slices.Sort(seqs)
	for i, s := range seqs {
		if s != uint64(i) {
			t.Fatalf("sorted seqs[%d] = %d: not contiguous or duplicated", i, s)
		}
	}
	if n := uint64(writers * each); l.Size() != n || uint64(len(seqs)) != n {
		t.Fatalf("Size = %d, acked %d, want %d", l.Size(), len(seqs), n)
	}
	st := l.Stats()
	t.Logf("%d appends in %d commits", st.Size, st.Commits)
	if st.Commits >= st.Size {
		t.Errorf("%d commits for %d appends: no group commit", st.Commits, st.Size)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l2 := openTest(t, path, Options{Signer: testSigner(t)})
	for w, a := range acks {
		for _, x := range a {
			e, err := l2.Get(ctx, x.seq)
			if err != nil {
				t.Fatalf("acked entry %d of writer %d after reopen: %v", x.seq, w, err)
			}
			if e.Serial != x.serial {
				t.Fatalf("entry %d has serial %s, writer %d appended %s", x.seq, e.Serial, w, x.serial)
			}
		}
	}
	res, err := l2.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != writers*each || res.Checkpoints == 0 || res.SignaturesVerified != res.Checkpoints {
		t.Fatalf("Verify = %+v", res)
	}
}

func TestClosedAndReadOnly(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "log.db")
	l := openTest(t, path, Options{})
	fillLog(t, l, 2)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Append(ctx, testEntry(5, KindAdmin)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	if _, err := l.Get(ctx, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v, want ErrClosed", err)
	}

	ro := openTest(t, path, Options{ReadOnly: true})
	if _, err := ro.Append(ctx, testEntry(5, KindAdmin)); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Append on a read-only log: %v, want ErrReadOnly", err)
	}
	if ro.Size() != 2 {
		t.Fatalf("read-only Size = %d, want 2", ro.Size())
	}
	// Two read-only handles share the file.
	ro2 := openTest(t, path, Options{ReadOnly: true})
	if _, err := ro2.Verify(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

func TestAppendHonorsContextBeforeQueueing(t *testing.T) {
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Append(ctx, testEntry(1, KindAdmin)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a canceled context: %v", err)
	}
	if l.Size() != 0 {
		t.Fatal("entry written despite the canceled context")
	}
}

// A failed commit is reported to its callers and stops the log: nothing
// is acknowledged that was not committed.
func TestFailedCommitStopsAppends(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "log.db")
	l, err := Open(path, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	fillLog(t, l, 3)
	select {
	case <-l.Failed():
		t.Fatal("Failed() is closed on a healthy log")
	default:
	}
	if err := l.Err(); err != nil {
		t.Fatalf("Err() = %v on a healthy log", err)
	}
	// Pull the file out from under the committer.
	if err := l.db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, testEntry(10, KindAdmin)); err == nil || !errors.Is(err, ErrFailed) {
		t.Fatalf("Append with a failing commit: %v, want ErrFailed", err)
	}
	if _, err := l.Append(ctx, testEntry(11, KindAdmin)); !errors.Is(err, ErrFailed) {
		t.Fatalf("Append after a failed commit: %v, want ErrFailed", err)
	}
	if !l.Stats().Failed || l.Size() != 3 {
		t.Fatalf("Stats = %+v, want failed at size 3", l.Stats())
	}
	select {
	case <-l.Failed():
	default:
		t.Fatal("Failed() is not closed after a failed commit")
	}
	if err := l.Err(); !errors.Is(err, ErrFailed) {
		t.Fatalf("Err() = %v, want ErrFailed", err)
	}
	_ = l.Close()

	l2 := openTest(t, path, Options{})
	if l2.Size() != 3 {
		t.Fatalf("after reopen Size = %d, want 3", l2.Size())
	}
}

func TestWriteToBackup(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := openTest(t, filepath.Join(dir, "log.db"), Options{Signer: testSigner(t)})
	fillLog(t, l, 50)
	if _, err := l.WriteCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	n, err := l.WriteTo(&buf)
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo = %d, %v (buffer %d)", n, err, buf.Len())
	}
	backup := filepath.Join(dir, "backup.db")
	if err := writeFile(backup, buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	b := openTest(t, backup, Options{Signer: testSigner(t)})
	res, err := b.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	size, root := l.Root()
	if res.Size != size || !bytes.Equal(res.Root, root) {
		t.Fatalf("backup verifies to size %d root %x, log has %d %x", res.Size, res.Root, size, root)
	}
}

// Stats tells how far the latest checkpoint lags the log and since when,
// which is what an alert on a stale checkpoint reads.
func TestStatsCheckpointTime(t *testing.T) {
	ctx := context.Background()
	opened := time.Now()
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"),
		Options{Signer: testSigner(t), CheckpointEvery: 1 << 20, CheckpointInterval: time.Hour})
	st := l.Stats()
	if st.CheckpointTime.Before(opened.Add(-time.Second)) || st.CheckpointTime.After(time.Now()) {
		t.Fatalf("CheckpointTime of a new log = %v, want its opening (%v)", st.CheckpointTime, opened)
	}
	fillLog(t, l, 3)
	if st := l.Stats(); st.Size != 3 || st.CheckpointSize != 0 {
		t.Fatalf("after 3 appends: Size %d CheckpointSize %d, want 3 and 0", st.Size, st.CheckpointSize)
	}
	before := time.Now()
	if _, err := l.WriteCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.CheckpointSize != 3 || st.CheckpointTime.Before(before) {
		t.Fatalf("after WriteCheckpoint: CheckpointSize %d at %v, want 3 at or after %v", st.CheckpointSize, st.CheckpointTime, before)
	}
}
