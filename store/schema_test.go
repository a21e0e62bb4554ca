package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// withFileSchema makes the files created during the test use schema v.
func withFileSchema(t testing.TB, v uint32) {
	t.Helper()
	old := newFileSchema
	newFileSchema = v
	t.Cleanup(func() { newFileSchema = old })
}

// pagedSeqs runs q page after page (limit entries a page, at most pages
// pages) and returns the sequence numbers of the results, in the order
// returned.
func pagedSeqs(t testing.TB, l *Log, q Query, limit, pages int) []uint64 {
	t.Helper()
	q.Limit = limit
	var out []uint64
	for page := 0; ; page++ {
		got, tok, err := l.Query(context.Background(), q)
		if err != nil {
			t.Fatalf("Query(%+v): %v", q, err)
		}
		for _, e := range got {
			out = append(out, e.Seq)
		}
		if tok == "" || page+1 == pages {
			return out
		}
		q.PageToken = tok
	}
}

// schemaQueries are queries of every plan, for a log of testEntry entries
// of the given size, in both orders.
func schemaQueries(l *Log, size int) []Query {
	ctx := context.Background()
	at := func(i int) time.Time { return testEpoch.Add(time.Duration(i) * time.Minute) }
	kind := func(k Kind) *Kind { return &k }
	var qs []Query
	for _, i := range []int{1, size / 3, size - 2} {
		if e, err := l.Get(ctx, uint64(i)); err == nil && e.Serial != "" {
			qs = append(qs, Query{Serial: e.Serial})
		}
	}
	qs = append(qs, Query{Serial: "abcdef"})
	for _, q := range []Query{
		{SPIFFEID: testEntry(3, KindIssuance).SPIFFEID},
		{SPIFFEID: testEntry(7, KindIssuance).SPIFFEID, Kind: kind(KindDenial)},
		{SPIFFEID: "spiffe://cluster.local/ns/none/sa/none"},
		{Namespace: "ns-2"},
		{Namespace: "ns-4", From: at(size / 4), To: at(size / 2)},
		{Namespace: "none"},
		{Issuer: testIssuers[1]},
		{From: at(size / 5), To: at(size/5 + 3000)},
		{ValidAt: at(size / 2)},
		{ExpiringBefore: at(2000)},
		{Kind: kind(KindAdmin)},
	} {
		qs = append(qs, q)
		q.Newest = true
		qs = append(qs, q)
	}
	return qs
}

// A schema-1 and a schema-2 log of the same entries, over several epochs,
// answer every query alike, page by page, also after appends and a
// reopen.
func TestSchemasAnswerAlike(t *testing.T) {
	size := 2<<epochBits + 700
	if testing.Short() {
		size = 1<<epochBits + 300
	}
	gen := func(i int) *Entry {
		e := testEntry(i, kindOf(i))
		if e.Certificate != nil {
			e.Certificate = fakeCert(i, 8)
		}
		return e
	}
	logs := map[uint32]*Log{}
	for _, v := range []uint32{1, 2} {
		withFileSchema(t, v)
		l := openTest(t, filepath.Join(t.TempDir(), fmt.Sprint("log-", v, ".db")), Options{NoSync: true})
		fillLogBatched(t, l, 0, size, 10_000, gen)
		logs[v] = l
	}
	compare := func(limit, pages int) {
		t.Helper()
		for _, q := range schemaQueries(logs[2], size) {
			want, got := pagedSeqs(t, logs[1], q, limit, pages), pagedSeqs(t, logs[2], q, limit, pages)
			if !slices.Equal(got, want) {
				t.Errorf("Query(%+v), limit %d: schema 2 returned %d entries, schema 1 %d; first difference at %d",
					q, limit, len(got), len(want), firstMismatch(got, want))
			}
		}
	}
	compare(maxQueryLimit, 1000)
	compare(7, 20)

	// A serial from the first epoch is a duplicate in the last one, also
	// once the committer's filter is rebuilt by a reopen.
	ctx := context.Background()
	for _, v := range []uint32{1, 2} {
		l := logs[v]
		dup := gen(1)
		if dup.Kind != KindIssuance {
			t.Fatal("entry 1 must be an issuance")
		}
		if _, err := l.Append(ctx, dup); !errors.Is(err, ErrDuplicateSerial) {
			t.Fatalf("schema %d: Append of the serial of entry 1: %v, want ErrDuplicateSerial", v, err)
		}
		fillLogBatched(t, l, size, 50, 50, gen)
		path := l.Path()
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l = openTest(t, path, Options{NoSync: true})
		if _, err := l.Append(ctx, gen(size-1)); !errors.Is(err, ErrDuplicateSerial) {
			t.Fatalf("schema %d after reopen: Append of a logged serial: %v, want ErrDuplicateSerial", v, err)
		}
		if _, err := l.Verify(ctx, nil); err != nil {
			t.Fatalf("schema %d: %v", v, err)
		}
		logs[v] = l
	}
	size += 50
	compare(maxQueryLimit, 1000)
}

func firstMismatch(a, b []uint64) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
