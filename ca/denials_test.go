package ca_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

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

// denialSums are the denial entries of a log by peer and by the identity
// that authenticated, with the requests each accounts for (an aggregated
// entry's count=<n>, else 1).
type denialSums struct {
	entries  []*store.Entry
	byPeer   map[string]*peerSum
	byCaller map[string]int // requests, by CallerID ("" for the unauthenticated)
	reasons  map[string]int // requests, by the reason each entry names
}

type peerSum struct{ entries, requests int }

// sumDenials reads every denial of l.
func sumDenials(t *testing.T, l *store.Log) *denialSums {
	t.Helper()
	kind := store.KindDenial
	entries, _, err := l.Query(context.Background(), store.Query{Kind: &kind, Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	peerRE, countRE := regexp.MustCompile(`peer=(\S+)`), regexp.MustCompile(`count=([0-9]+)`)
	s := &denialSums{entries: entries, byPeer: map[string]*peerSum{}, byCaller: map[string]int{}, reasons: map[string]int{}}
	for _, e := range entries {
		checkBounded(t, "reason", e.Reason)
		p := peerRE.FindStringSubmatch(e.Detail)
		if p == nil {
			t.Fatalf("entry %d names no peer: %q", e.Seq, e.Detail)
		}
		n := 1
		if m := countRE.FindStringSubmatch(e.Detail); m != nil {
			n, _ = strconv.Atoi(m[1])
		}
		if s.byPeer[p[1]] == nil {
			s.byPeer[p[1]] = &peerSum{}
		}
		s.byPeer[p[1]].entries++
		s.byPeer[p[1]].requests += n
		s.byCaller[e.CallerID] += n
		s.reasons[e.Reason] += n
	}
	return s
}

// denialsTo records issuances through Recorder (the harness's serving
// certificate has no SPIFFE ID, which the log refuses) and denials into a
// real log.
type denialsTo struct {
	ca.Recorder
	log ca.LogRecorder
}

func (r denialsTo) RecordDenial(ctx context.Context, d *ca.Denial) error {
	return r.log.RecordDenial(ctx, d)
}

// openLog opens a real issuance log in t.TempDir().
func openLog(t *testing.T) *store.Log {
	t.Helper()
	l, err := store.Open(filepath.Join(t.TempDir(), "issuance.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestDenialAggregationKeysOnTheAuthenticatedCaller: what a caller alone
// chooses does not split its denials. A node agent's token asking, through
// Istio's client, for 2,000 different ImpersonatedIdentity values with
// impersonation off is refused 2,000 times; beyond the burst its denials
// are aggregated under the identity that authenticated, so the log holds
// the burst, one entry per distinct reason kept and one for the rest, all
// naming that identity, and together they account for every request.
func TestDenialAggregationKeysOnTheAuthenticatedCaller(t *testing.T) {
	const requests = 2000
	l := openLog(t)
	start := time.Now()
	h := newHarnessWith(t, func(o *ca.ServiceOptions) {
		o.Recorder = denialsTo{Recorder: o.Recorder, log: ca.LogRecorder{Log: l}}
		o.DenialLimits = ca.DenialLimits{PerPeerPerSecond: 1, Burst: 3, Window: time.Hour, MaxPeers: 10000}
		o.Now = func() time.Time { return start }
	})
	client := h.client(t, nil)
	ctx := withToken(h.token(t, "istio-system", "ztunnel"))
	for i := range requests {
		md, err := structpb.NewStruct(map[string]any{ca.ImpersonatedIdentityKey: spiffe("default", fmt.Sprintf("w-%d", i))})
		if err != nil {
			t.Fatal(err)
		}
		_, err = client.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: "x", Metadata: md})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("request %d: %v, want PermissionDenied", i, err)
		}
	}
	if err := h.svc.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := sumDenials(t, l)
	ztunnel := spiffe("istio-system", "ztunnel")
	if got, want := len(s.entries), 3+ca.DenialReasonsKept+1; got != want {
		t.Errorf("%d requests left %d denial entries, want %d (the burst, %d distinct reasons, the rest)", requests, got, want, ca.DenialReasonsKept)
	}
	if s.byCaller[ztunnel] != requests || len(s.byCaller) != 1 {
		t.Errorf("requests accounted for by caller: %v, want all %d under %s", s.byCaller, requests, ztunnel)
	}
}

// TestFullDenialTableKeepsAuthenticatedIdentities: with the table of
// counted denials full (a small limits.denial_peers, and an
// unauthenticated flood of distinct reasons first), every authenticated
// caller's denials still reach the log under its own identity; the
// unauthenticated flood stays within the burst and the distinct reasons
// kept.
func TestFullDenialTableKeepsAuthenticatedIdentities(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := newLoggedService(t, func(o *ca.ServiceOptions) {
		o.Now = func() time.Time { return now }
		o.DenialLimits = ca.DenialLimits{PerPeerPerSecond: 1, Burst: 3, Window: time.Hour, MaxPeers: 2}
	})
	const flood, identities, each = 500, 20, 5
	for i := range flood {
		tok := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"alg":"ES256","kid":"k-%d"}`, i))) + ".e30.c2ln"
		if err := s.call("192.0.2.1", metadata.Pairs("authorization", "Bearer "+tok), "x"); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("unauthenticated request %d: %v", i, err)
		}
	}
	wrongSAN := csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(spiffe("payments", "api"))})
	for i := range identities {
		tok, err := s.minter.Mint("default", fmt.Sprintf("sa-%d", i), []string{"istio-ca"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for range each {
			if err := s.call("192.0.2.2", metadata.Pairs("authorization", "Bearer "+tok), wrongSAN); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("sa-%d: %v, want PermissionDenied", i, err)
			}
		}
	}
	if err := s.svc.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	sums := sumDenials(t, s.log)
	for i := range identities {
		id := spiffe("default", fmt.Sprintf("sa-%d", i))
		if got := sums.byCaller[id]; got != each {
			t.Errorf("%s: %d denials in the log under its identity, want %d", id, got, each)
		}
	}
	if got := sums.byCaller[""]; got != flood {
		t.Errorf("unauthenticated denials accounted for: %d, want %d", got, flood)
	}
	if p := sums.byPeer["192.0.2.2"]; p == nil || p.entries != 3+identities {
		t.Errorf("authenticated peer: %+v, want %d entries (the burst, then one per identity)", p, 3+identities)
	}
	if p := sums.byPeer["192.0.2.1"]; p == nil || p.entries > 3+ca.DenialReasonsKept+1 {
		t.Errorf("flooding peer: %+v, want at most %d entries", p, 3+ca.DenialReasonsKept+1)
	}
}

// TestNeighbourCannotReplaceVictimsReason: a neighbour in the same IPv6 /64
// (or behind the same NAT) that floods first uses up the peer's rate, but
// the reason of a victim's denials still reaches the log: each distinct
// reason is kept with its own count, not only the first reason of the peer.
func TestNeighbourCannotReplaceVictimsReason(t *testing.T) {
	cases := []struct{ name, neighbour, victim string }{
		{"same IPv6 /64", "2001:db8:1:2::1", "2001:db8:1:2:aaaa::2"},
		{"same IPv4 address (NAT)", "198.51.100.9", "198.51.100.9"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newLoggedService(t, func(o *ca.ServiceOptions) {
				o.DenialLimits = ca.DenialLimits{PerPeerPerSecond: 0.001, Burst: 3, Window: time.Hour, MaxPeers: 100}
			})
			for range 50 {
				if err := s.call(tc.neighbour, metadata.Pairs("authorization", "Bearer x"), "x"); status.Code(err) != codes.Unauthenticated {
					t.Fatalf("neighbour: %v", err)
				}
			}
			wrongAud, err := s.minter.Mint("default", "web", []string{"not-istio"}, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			var victimReason string
			for range 2 {
				err := s.call(tc.victim, metadata.Pairs("authorization", "Bearer "+wrongAud), "x")
				if status.Code(err) != codes.Unauthenticated {
					t.Fatalf("victim: %v", err)
				}
				victimReason = status.Convert(err).Message()
			}
			if err := s.svc.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			sums := sumDenials(t, s.log)
			found := 0
			for _, e := range sums.entries {
				if strings.Contains(e.Reason, victimReason) {
					found++
				}
			}
			if found == 0 {
				t.Errorf("the victim's reason %q is in no entry; reasons in the log: %v", victimReason, sums.reasons)
			}
			if sums.byCaller[""] != 52 {
				t.Errorf("unauthenticated denials accounted for: %d, want 52", sums.byCaller[""])
			}
		})
	}
}
