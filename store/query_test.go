package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const queryLogSize = 700

func TestQuery(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{NoSync: true})
	fillLogBatched(t, l, 0, queryLogSize, 128, func(i int) *Entry { return testEntry(i, kindOf(i)) })
	all := make([]*Entry, queryLogSize)
	for i := range all {
		e, err := l.Get(ctx, uint64(i))
		if err != nil {
			t.Fatal(err)
		}
		all[i] = e
	}
	kind := func(k Kind) *Kind { return &k }
	at := func(minutes int) time.Time { return testEpoch.Add(time.Duration(minutes) * time.Minute) }
	sample := all[125]
	if sample.Kind != KindIssuance {
		t.Fatal("the sample entry must be an issuance")
	}

	type order int
	const (
		bySeq order = iota
		byTime
		byNotAfter
	)
	for _, tc := range []struct {
		name  string
		q     Query
		order order
	}{
		{"serial", Query{Serial: sample.Serial}, bySeq},
		{"serial uppercase", Query{Serial: strings.ToUpper(sample.Serial)}, bySeq},
		{"unknown serial", Query{Serial: "abcdef"}, bySeq},
		{"SPIFFE ID", Query{SPIFFEID: sample.SPIFFEID}, bySeq},
		{"SPIFFE ID denials", Query{SPIFFEID: sample.SPIFFEID, Kind: kind(KindDenial)}, bySeq},
		{"namespace", Query{Namespace: "ns-2"}, bySeq},
		{"namespace in a time range", Query{Namespace: "ns-2", From: at(100), To: at(400)}, bySeq},
		{"issuer", Query{Issuer: testIssuers[1]}, bySeq},
		{"issuer uppercase valid at", Query{Issuer: strings.ToUpper(testIssuers[0]), ValidAt: at(300)}, bySeq},
		{"kind admin", Query{Kind: kind(KindAdmin)}, bySeq},
		{"everything", Query{}, bySeq},
		{"time range", Query{From: at(50), To: at(450)}, byTime},
		{"from only", Query{From: at(650)}, byTime},
		{"to only", Query{To: at(30)}, byTime},
		{"valid at", Query{ValidAt: at(200)}, byNotAfter},
		{"expiring before", Query{ExpiringBefore: at(100)}, byNotAfter},
		{"valid at, expiring before", Query{ValidAt: at(200), ExpiringBefore: at(203)}, byNotAfter},
		{"no match", Query{SPIFFEID: "spiffe://cluster.local/ns/none/sa/none"}, bySeq},
	} {
		for _, newest := range []bool{false, true} {
			for _, limit := range []int{0, 1, 7, 10000} {
				name := fmt.Sprintf("%s/newest=%v/limit=%d", tc.name, newest, limit)
				t.Run(name, func(t *testing.T) {
					q := tc.q
					q.Newest, q.Limit = newest, limit
					// Expected: brute force over every entry.
					nq := q
					if err := nq.normalize(); err != nil {
						t.Fatal(err)
					}
					var want []*Entry
					for _, e := range all {
						if nq.match(e) {
							want = append(want, e)
						}
					}
					key := func(e *Entry) (time.Time, uint64) {
						switch tc.order {
						case byTime:
							return e.Time, e.Seq
						case byNotAfter:
							return e.NotAfter, e.Seq
						}
						return time.Time{}, e.Seq
					}
					slices.SortFunc(want, func(a, b *Entry) int {
						ta, sa := key(a)
						tb, sb := key(b)
						c := cmp.Or(ta.Compare(tb), cmp.Compare(sa, sb))
						if newest {
							return -c
						}
						return c
					})
					var got []*Entry
					pages := 0
					for {
						page, next, err := l.Query(ctx, q)
						if err != nil {
							t.Fatalf("Query page %d: %v", pages, err)
						}
						pages++
						if max := cmp.Or(limit, defaultQueryLimit); len(page) > max {
							t.Fatalf("page of %d entries, limit %d", len(page), max)
						}
						got = append(got, page...)
						if next == "" {
							break
						}
						if pages > queryLogSize+1 {
							t.Fatal("pagination does not end")
						}
						q.PageToken = next
					}
					if len(got) != len(want) {
						t.Fatalf("got %d entries in %d pages, want %d", len(got), pages, len(want))
					}
					for i := range got {
						if got[i].Seq != want[i].Seq {
							t.Fatalf("result %d is entry %d, want %d", i, got[i].Seq, want[i].Seq)
						}
					}
					if tc.name == "serial" && (len(got) != 1 || got[0].Serial != sample.Serial || len(got[0].Certificate) == 0) {
						t.Fatalf("serial query returned %d entries, want entry %d with its certificate", len(got), sample.Seq)
					}
				})
			}
		}
	}
	// The interesting queries do return something.
	for _, q := range []Query{{SPIFFEID: sample.SPIFFEID, Kind: kind(KindDenial)}, {ValidAt: at(200), ExpiringBefore: at(203)}, {Kind: kind(KindAdmin)}} {
		if got, _, err := l.Query(ctx, q); err != nil || len(got) == 0 {
			t.Errorf("Query(%+v) = %d entries, %v; the test data should match", q, len(got), err)
		}
	}
}

func TestQueryRejects(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{NoSync: true})
	fillLogBatched(t, l, 0, 50, 50, func(i int) *Entry { return testEntry(i, kindOf(i)) })
	_, tok, err := l.Query(ctx, Query{Namespace: "ns-1", Limit: 2})
	if err != nil || tok == "" {
		t.Fatalf("Query = %q, %v", tok, err)
	}
	bogus := Kind(9)
	for _, tc := range []struct {
		name string
		q    Query
	}{
		{"negative limit", Query{Limit: -1}},
		{"serial not hex", Query{Serial: "zz"}},
		{"issuer not a hash", Query{Issuer: "abc"}},
		{"unknown kind", Query{Kind: &bogus}},
		{"To before From", Query{From: testEpoch, To: testEpoch.Add(-time.Second)}},
		{"garbage token", Query{Namespace: "ns-1", PageToken: "!!!"}},
		{"token of another query", Query{Namespace: "ns-2", PageToken: tok}},
		{"token with another order", Query{Namespace: "ns-1", Newest: true, PageToken: tok}},
		{"token on a serial query", Query{Serial: "ab", PageToken: tok}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := l.Query(ctx, tc.q); !errors.Is(err, ErrInvalidQuery) {
				t.Fatalf("Query: %v, want ErrInvalidQuery", err)
			}
		})
	}
	// The limit of one query may change between pages.
	if _, _, err := l.Query(ctx, Query{Namespace: "ns-1", Limit: 5, PageToken: tok}); err != nil {
		t.Fatalf("next page with another limit: %v", err)
	}
}

// A query that examines many keys for few matches returns short (even
// empty) pages with a token, and paging still covers every match once.
func TestQueryScanBudget(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{NoSync: true})
	fillLogBatched(t, l, 0, 300, 100, func(i int) *Entry { return testEntry(i, kindOf(i)) })
	defer func(old int) { maxQueryScan = old }(maxQueryScan)
	maxQueryScan = 10

	admin := KindAdmin
	q := Query{Kind: &admin, Limit: 100}
	var got []uint64
	calls, empty := 0, 0
	for {
		page, next, err := l.Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		calls++
		if len(page) == 0 {
			empty++
		}
		for _, e := range page {
			got = append(got, e.Seq)
		}
		if next == "" {
			break
		}
		q.PageToken = next
	}
	var want []uint64
	for i := range 300 {
		if kindOf(i) == KindAdmin {
			want = append(want, uint64(i))
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if calls < 30 || empty == 0 {
		t.Fatalf("%d calls, %d empty pages: the scan budget was not applied", calls, empty)
	}
}

// A cluster query returns the entries of that cluster only, whatever kind,
// and its page tokens continue no other query.
func TestQueryCluster(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{NoSync: true})
	clusters := []string{"east", "west", ""}
	for i := range 30 {
		e := testEntry(i, kindOf(i))
		e.ClusterID = clusters[i%3]
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	got, _, err := l.Query(ctx, Query{Cluster: "west", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 {
		t.Fatalf("%d entries of cluster west, want 10", len(got))
	}
	for _, e := range got {
		if e.ClusterID != "west" {
			t.Fatalf("entry %d of cluster %q in a query for west", e.Seq, e.ClusterID)
		}
	}
	var paged []*Entry
	q := Query{Cluster: "west", Kind: func(k Kind) *Kind { return &k }(KindIssuance), Newest: true, Limit: 2}
	for {
		page, next, err := l.Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		paged = append(paged, page...)
		if next == "" {
			break
		}
		q.PageToken = next
	}
	for i, e := range paged {
		if e.ClusterID != "west" || e.Kind != KindIssuance || i > 0 && e.Seq >= paged[i-1].Seq {
			t.Fatalf("paged query for west's issuances, newest first: entry %d is %v of %q after %d", e.Seq, e.Kind, e.ClusterID, paged[max(i-1, 0)].Seq)
		}
	}
	issuances := 0
	for _, e := range got {
		if e.Kind == KindIssuance {
			issuances++
		}
	}
	if len(paged) != issuances || issuances < 3 {
		t.Fatalf("paged query for west's issuances: %d entries, want the %d of the full query (at least 3)", len(paged), issuances)
	}
	_, next, err := l.Query(ctx, Query{Cluster: "west", Limit: 2})
	if err != nil || next == "" {
		t.Fatalf("first page: token %q, %v", next, err)
	}
	if _, _, err := l.Query(ctx, Query{Cluster: "east", Limit: 2, PageToken: next}); !errors.Is(err, ErrInvalidQuery) {
		t.Fatalf("west's page token on a query for east: %v, want ErrInvalidQuery", err)
	}
}

// With MaxBytes, a page ends before the entry that would bring its records
// past MaxBytes (a page holds at least one entry, however large), and its
// token continues from there: paging returns every match once, in order,
// whatever the query's plan.
func TestQueryMaxBytes(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, filepath.Join(t.TempDir(), "log.db"), Options{NoSync: true})
	fillLogBatched(t, l, 0, 300, 64, func(i int) *Entry {
		e := testEntry(i, kindOf(i))
		e.Detail = strings.Repeat("d", 200+(i%9)*300) // records of about 0.3 to 2.9 KB
		return e
	})
	recordBytes := func(e *Entry) int {
		b, err := e.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return len(b)
	}
	at := func(minutes int) time.Time { return testEpoch.Add(time.Duration(minutes) * time.Minute) }
	for _, tc := range []struct {
		name string
		q    Query
	}{
		{"everything", Query{}},
		{"newest first", Query{Newest: true}},
		{"namespace", Query{Namespace: "ns-3"}},
		{"time range", Query{From: at(20), To: at(280)}},
		{"expiry range", Query{ValidAt: at(150)}},
	} {
		for _, maxBytes := range []int{1, 4000, 20000} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, maxBytes), func(t *testing.T) {
				want, _, err := l.Query(ctx, Query{Newest: tc.q.Newest, Namespace: tc.q.Namespace, From: tc.q.From, To: tc.q.To,
					ValidAt: tc.q.ValidAt, Limit: maxQueryLimit})
				if err != nil {
					t.Fatal(err)
				}
				q := tc.q
				q.Limit, q.MaxBytes = maxQueryLimit, maxBytes
				var got []*Entry
				for pages := 0; ; pages++ {
					if pages > len(want)+1 {
						t.Fatalf("more pages than entries")
					}
					page, next, err := l.Query(ctx, q)
					if err != nil {
						t.Fatal(err)
					}
					size := 0
					for _, e := range page {
						size += recordBytes(e)
					}
					if len(page) > 1 && size > maxBytes {
						t.Fatalf("a page of %d entries holds %d bytes of records, more than MaxBytes %d", len(page), size, maxBytes)
					}
					if next != "" && len(page) == 0 {
						t.Fatalf("an empty page with a next page")
					}
					got = append(got, page...)
					if next == "" {
						break
					}
					q.PageToken = next
				}
				if len(got) != len(want) {
					t.Fatalf("paged with MaxBytes %d: %d entries, want %d", maxBytes, len(got), len(want))
				}
				for i := range got {
					if got[i].Seq != want[i].Seq {
						t.Fatalf("entry %d: seq %d, want %d", i, got[i].Seq, want[i].Seq)
					}
				}
			})
		}
	}
}
