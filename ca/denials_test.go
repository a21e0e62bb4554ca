package ca_test

import (
	"context"
	"crypto/x509"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/store"
)

// TestDenialFloodIsAggregatedNotDropped: beyond the per-peer rate, denials
// are counted per peer and kind and written as one entry each at Close;
// the log accounts for every request; authenticated denials keep their
// identity; peers beyond the cap share the "other" bucket.
func TestDenialFloodIsAggregatedNotDropped(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := newLoggedService(t, func(o *ca.ServiceOptions) {
		o.Now = clock
		o.DenialLimits = ca.DenialLimits{PerPeerPerSecond: 1, Burst: 3, Window: time.Hour, MaxPeers: 2}
	})
	good, err := s.minter.Mint("default", "web", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wrongSAN := csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(spiffe("payments", "api"))})
	flood := strings.Repeat("F", 60<<10)
	send := func(peerAddr string, n int, md metadata.MD, csr string, code codes.Code) {
		t.Helper()
		for range n {
			if err := s.call(peerAddr, md, csr); status.Code(err) != code {
				t.Fatalf("code %v, want %v", status.Code(err), code)
			}
		}
	}
	unauth := metadata.Pairs("clusterid", flood, "authorization", "Bearer x")
	send("192.0.2.1", 500, unauth, "x", codes.Unauthenticated)
	send("192.0.2.2", 40, metadata.Pairs("authorization", "Bearer "+good), wrongSAN, codes.PermissionDenied)
	send("192.0.2.3", 30, unauth, "x", codes.Unauthenticated) // beyond MaxPeers
	mu.Lock()
	now = now.Add(2 * time.Second) // two more tokens for 192.0.2.1
	mu.Unlock()
	send("192.0.2.1", 5, unauth, "x", codes.Unauthenticated)
	if err := s.svc.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	type sum struct{ entries, aggregated, requests int }
	byPeer := map[string]*sum{}
	kind := store.KindDenial
	entries, _, err := s.log.Query(context.Background(), store.Query{Kind: &kind, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	peerRE, countRE := regexp.MustCompile(`peer=(\S+)`), regexp.MustCompile(`count=([0-9]+)`)
	for _, e := range entries {
		checkBounded(t, "reason", e.Reason)
		p := peerRE.FindStringSubmatch(e.Detail)
		if p == nil {
			t.Fatalf("entry %d names no peer: %q", e.Seq, e.Detail)
		}
		if byPeer[p[1]] == nil {
			byPeer[p[1]] = &sum{}
		}
		b := byPeer[p[1]]
		b.entries++
		b.requests++
		if m := countRE.FindStringSubmatch(e.Detail); m != nil {
			n, _ := strconv.Atoi(m[1])
			b.aggregated++
			b.requests += n - 1
			if p[1] == "192.0.2.2" && (e.SPIFFEID != spiffe("default", "web") || e.Code != "PermissionDenied") {
				t.Errorf("aggregated authenticated denials lost their identity: %+v", e)
			}
		}
	}
	want := map[string]sum{
		"192.0.2.1": {entries: 3 + 2 + 1, aggregated: 1, requests: 505},
		"192.0.2.2": {entries: 3 + 1, aggregated: 1, requests: 40},
		"192.0.2.3": {entries: 3, aggregated: 0, requests: 3},
		"other":     {entries: 1, aggregated: 1, requests: 27},
	}
	for p, w := range want {
		if got := byPeer[p]; got == nil || *got != w {
			t.Errorf("peer %s: %+v, want %+v", p, got, w)
		}
	}
	if len(byPeer) != len(want) {
		t.Errorf("peers in the log: %v", byPeer)
	}
	if got := aggregatedMetric(t, s, "auth_unauthenticated"); got != 497+3+27 {
		t.Errorf("%s{reason=auth_unauthenticated} = %v, want %d", ca.MetricDenialsAggregated, got, 497+3+27)
	}
}

func aggregatedMetric(t *testing.T, s *loggedService, reason string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != ca.MetricDenialsAggregated {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
