package ca_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/ca"
)

// gatedRecorder holds every workload issuance in RecordIssuance until the
// gate opens, as a slow disk does, announcing each on entered.
type gatedRecorder struct {
	ca.Recorder
	entered chan struct{}
	gate    chan struct{}
}

func (r *gatedRecorder) RecordIssuance(ctx context.Context, is *ca.Issuance) error {
	if is.Tier == ca.ServingTier {
		return r.Recorder.RecordIssuance(ctx, is)
	}
	r.entered <- struct{}{}
	<-r.gate
	return r.Recorder.RecordIssuance(ctx, is)
}

func (h *harness) ask(t *testing.T, ns, sa string) error {
	t.Helper()
	_, err := h.client(t, nil).CreateCertificate(withToken(h.token(t, ns, sa)), &pb.IstioCertificateRequest{
		Csr: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(spiffe(ns, sa))}),
	})
	return err
}

// With no admission queue (limits.max_queued 0) and limits.max_in_flight
// requests being handled (here held by a slow recorder), the next one is
// refused at once with ResourceExhausted, while the health service still
// answers; once the held ones finish, requests are served again.
func TestInFlightLimitRefusesAtOnce(t *testing.T) {
	const limit = 3
	gr := &gatedRecorder{entered: make(chan struct{}), gate: make(chan struct{})}
	h := newHarnessWith(t, func(o *ca.ServiceOptions) {
		o.MaxInFlight = limit
		gr.Recorder = o.Recorder
		o.Recorder = gr
	})
	var wg sync.WaitGroup
	errs := make(chan error, limit)
	for range limit {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- h.ask(t, "default", "web") }()
	}
	for range limit {
		<-gr.entered
	}
	err := h.ask(t, "default", "other")
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("request beyond %d in flight: %v, want ResourceExhausted", limit, err)
	}
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: h.roots, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check while at the limit: %v %v, want SERVING", r, err)
	}
	close(gr.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a held request: %v", err)
		}
	}
	go func() {
		for range gr.entered {
		}
	}()
	if err := h.ask(t, "default", "web"); err != nil {
		t.Fatalf("request after the held ones finished: %v", err)
	}
}

// Beyond its burst, an identity is refused with ResourceExhausted and the
// refusal is recorded as a denial; other identities are not affected, and
// the identity is served again once its bucket refills.
func TestIdentityRateLimit(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	h := newHarnessWith(t, func(o *ca.ServiceOptions) {
		o.IdentityLimits = ca.IdentityLimits{PerSecond: 1, Burst: 3, MaxIdentities: 100}
		o.Now = clock
	})
	for i := range 3 {
		if err := h.ask(t, "default", "web"); err != nil {
			t.Fatalf("request %d within the burst: %v", i, err)
		}
	}
	err := h.ask(t, "default", "web")
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("request beyond the burst: %v, want ResourceExhausted", err)
	}
	h.rec.mu.Lock()
	issued, denied := 0, 0
	for _, is := range h.rec.issuances {
		if is.Tier != ca.ServingTier {
			issued++
		}
	}
	for _, d := range h.rec.denials {
		if d.Code == codes.ResourceExhausted {
			denied++
		}
	}
	h.rec.mu.Unlock()
	if issued != 3 || denied != 1 {
		t.Fatalf("recorded %d workload issuances and %d ResourceExhausted denials, want 3 and 1", issued, denied)
	}
	if err := h.ask(t, "default", "api"); err != nil {
		t.Fatalf("another identity: %v", err)
	}
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	if err := h.ask(t, "default", "web"); err != nil {
		t.Fatalf("after the bucket refilled: %v", err)
	}
}

// The per-identity rate table holds only identities that authenticated
// and whose CSR passed: requests whose CSR names another identity are
// refused for that (PermissionDenied) and take no slot, and with the table
// full of identities that did take one, an identity never seen before is
// served on its first request, while an identity beyond its rate that is
// still tracked stays refused.
func TestIdentityRateTableNeverRefusesAFirstRequest(t *testing.T) {
	now := time.Now()
	h := newHarnessWith(t, func(o *ca.ServiceOptions) {
		o.IdentityLimits = ca.IdentityLimits{PerSecond: 1, Burst: 3, MaxIdentities: 4}
		o.Now = func() time.Time { return now }
	})
	client := h.client(t, nil)
	wrongSAN := csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(spiffe("payments", "api"))})
	for i := range 20 {
		_, err := client.CreateCertificate(withToken(h.token(t, "default", fmt.Sprintf("other-%d", i))), &pb.IstioCertificateRequest{Csr: wrongSAN})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("identity other-%d with a CSR naming another identity: %v, want PermissionDenied", i, err)
		}
	}
	if err := h.ask(t, "default", "first-time"); err != nil {
		t.Fatalf("a never-seen identity after 20 refused CSRs: %v", err)
	}
	for i := range 4 {
		for j := range 3 {
			if err := h.ask(t, "default", fmt.Sprintf("busy-%d", i)); err != nil {
				t.Fatalf("busy-%d request %d: %v", i, j, err)
			}
		}
	}
	for i := range 10 {
		if err := h.ask(t, "default", fmt.Sprintf("new-%d", i)); err != nil {
			t.Fatalf("never-seen identity new-%d with the table full: %v", i, err)
		}
		if i == 0 {
			if err := h.ask(t, "default", "busy-3"); status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("busy-3 beyond its burst, still tracked: %v, want ResourceExhausted", err)
			}
		}
	}
}
