package ca

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// denialSink keeps the denials recorded, in memory.
type denialSink struct {
	mu      sync.Mutex
	denials []*Denial
}

func (s *denialSink) RecordIssuance(context.Context, *Issuance) error { return nil }

func (s *denialSink) RecordDenial(_ context.Context, d *Denial) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.denials = append(s.denials, d)
	return nil
}

// TestDenialLimiterMemoryIsBounded floods the limiter from 5,000 peers
// with unauthenticated denials of distinct reasons and 3,000
// authenticated identities: the reasons and groups it holds never exceed
// 4*MaxPeers (and one group per code and class for the peer "other"),
// every request is accounted for once written, and every authenticated
// identity is named in the entries with all its denials.
func TestDenialLimiterMemoryIsBounded(t *testing.T) {
	const maxPeers = 50
	sink := &denialSink{}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	l := newDenialLimiter(sink, DenialLimits{PerPeerPerSecond: 0.001, Burst: 1, Window: time.Hour, MaxPeers: maxPeers},
		NewMetrics(prometheus.NewRegistry(), nil), slog.New(slog.DiscardHandler), func() time.Time { return now })
	ctx := context.Background()
	const peers, perPeer, identities, perIdentity = 5000, 4, 3000, 3
	check := func() {
		t.Helper()
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.reasons > 4*maxPeers+1 || len(l.pending) > 4*maxPeers+1 || l.order.Len() != len(l.pending) {
			t.Fatalf("limiter holds %d reasons in %d groups (%d in order), beyond %d", l.reasons, len(l.pending), l.order.Len(), 4*maxPeers+1)
		}
	}
	for i := range peers {
		for j := range perPeer {
			d := &Denial{Time: now, Code: codes.Unauthenticated, Reason: fmt.Sprintf("unauthenticated: token signed with unknown key id \"k-%d-%d\"", i, j)}
			if err := l.record(ctx, d, fmt.Sprintf("2001:db8:%x::/64", i), "auth_unauthenticated"); err != nil {
				t.Fatal(err)
			}
		}
		check()
	}
	for i := range identities {
		id := fmt.Sprintf("spiffe://cluster.local/ns/default/sa/sa-%d", i)
		for j := range perIdentity {
			d := &Denial{Time: now, Code: codes.PermissionDenied, Caller: &Caller{SPIFFEID: id, Namespace: "default", ServiceAccount: fmt.Sprintf("sa-%d", i)},
				Reason: fmt.Sprintf("permission denied: the CSR names spiffe://cluster.local/ns/x/sa/y-%d", j)}
			if err := l.record(ctx, d, fmt.Sprintf("192.0.2.%d", i%200), "csr_permission_denied"); err != nil {
				t.Fatal(err)
			}
		}
		check()
	}
	if err := l.close(ctx); err != nil {
		t.Fatal(err)
	}
	countRE := regexp.MustCompile(`count=([0-9]+)`)
	total, byCaller := 0, map[string]int{}
	for _, d := range sink.denials {
		n := 1
		if m := countRE.FindStringSubmatch(d.Detail); m != nil {
			n, _ = strconv.Atoi(m[1])
		}
		total += n
		if d.Caller != nil {
			byCaller[d.Caller.CallerID()] += n
		}
	}
	if want := peers*perPeer + identities*perIdentity; total != want {
		t.Errorf("entries account for %d requests, want %d", total, want)
	}
	for i := range identities {
		id := fmt.Sprintf("spiffe://cluster.local/ns/default/sa/sa-%d", i)
		if byCaller[id] != perIdentity {
			t.Fatalf("%s: %d denials under its identity, want %d", id, byCaller[id], perIdentity)
		}
	}
	t.Logf("%d requests, %d entries", total, len(sink.denials))
}
