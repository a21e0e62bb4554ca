package e2e

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/transitca/transitca/internal/vaulttest"
)

// What the proxy in front of Vault does with each request.
const (
	proxyPass = iota // forwards it
	proxySlow        // forwards it after proxyDelay
	proxy5xx         // answers 503 itself
	proxyDown        // drops the connection, as a stopped Vault
)

// proxyDelay is the latency of a slow Vault: far beyond vault.timeout.
const proxyDelay = 30 * time.Second

// vaultProxy is an HTTP proxy between the CA and the real Vault that can
// delay requests, answer 5xx or drop connections.
type vaultProxy struct {
	URL  string
	mode atomic.Int32
}

func newVaultProxy(t *testing.T, target string) *vaultProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0) // requests the CA gave up on
	p := &vaultProxy{}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p.mode.Load() {
		case proxySlow:
			select {
			case <-time.After(proxyDelay):
			case <-r.Context().Done():
				return
			}
		case proxy5xx:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"errors":["test proxy: vault unavailable"]}`)
			return
		case proxyDown:
			if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = c.Close()
			}
			return
		}
		rp.ServeHTTP(w, r)
	})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() }) // closes connections, waits for nothing
	p.URL = "http://" + lis.Addr().String()
	return p
}

// waitFor polls cond every 100 ms for at most limit (a guard against a
// hang; the daemon checks Vault every second in these tests).
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// health is /healthz's status and body.
func (s *caServer) health(t *testing.T) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.MetricsAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric is the value of an unlabelled series on /metrics ("" if absent).
func (s *caServer) metric(t *testing.T, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + s.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// vaultFault is one way Vault fails, made and healed by the test.
type vaultFault struct {
	name         string
	make, repair func()
}

func vaultFaults(t *testing.T, srv *vaulttest.Server, p *vaultProxy) []vaultFault {
	set := func(m int32) func() { return func() { p.mode.Store(m) } }
	return []vaultFault{
		{"slow", set(proxySlow), set(proxyPass)},
		{"5xx", set(proxy5xx), set(proxyPass)},
		{"stopped", set(proxyDown), set(proxyPass)},
		{"sealed", func() { srv.Seal(t) }, func() { srv.Unseal(t) }},
	}
}

// startFaultCA starts a CA in mode whose Vault is srv behind a proxy, with
// metrics on, Vault checked every second and checkpoints often.
func startFaultCA(t *testing.T, mode string) (*caServer, *vaulttest.Server, *vaultProxy) {
	t.Helper()
	srv := vaulttest.Own(t)
	p := newVaultProxy(t, srv.Addr)
	s := startCAWith(t, vaulttest.NewOn(t, srv), caOptions{Mode: mode, VaultAddr: p.URL, Metrics: true,
		Extra: "log:\n  checkpoint_every: 5\n  checkpoint_interval: 1s\n"})
	if err := request(t, s, "default", "web"); err != nil {
		t.Fatalf("with Vault up: %v", err)
	}
	return s, srv, p
}

// In vault mode every leaf needs a Transit signature. Whatever the fault
// (slow, 5xx, stopped, sealed), a request fails with Unavailable within
// vault.timeout (3s here) plus a margin, never hanging for the 30 s a slow
// Vault takes; the daemon reports itself degraded; once Vault is healed,
// requests succeed again without a restart.
func TestVaultFaultsVaultMode(t *testing.T) {
	s, srv, p := startFaultCA(t, "vault")
	const limit = 3*time.Second + 3*time.Second
	for _, f := range vaultFaults(t, srv, p) {
		phase := time.Now()
		f.make()
		start := time.Now()
		err := request(t, s, "default", "web")
		took := time.Since(start)
		if status.Code(err) != codes.Unavailable {
			f.repair()
			t.Fatalf("%s: request: %v, want Unavailable\n%s", f.name, err, s.Logs())
		}
		if took > limit {
			t.Errorf("%s: the request took %v, longer than vault.timeout plus a margin (%v)", f.name, took, limit)
		}
		waitFor(t, 20*time.Second, f.name+": transitca_vault_up 0", func() bool { return s.metric(t, "transitca_vault_up") == "0" })
		if code, body := s.health(t); code != http.StatusOK || !strings.Contains(body, "degraded") || !strings.Contains(body, "Unavailable") {
			t.Errorf("%s: /healthz: %d %q, want 200 saying degraded and that requests fail with Unavailable", f.name, code, body)
		}
		f.repair()
		waitFor(t, 30*time.Second, f.name+": a request succeeds after the repair", func() bool { return request(t, s, "default", "web") == nil })
		waitFor(t, 20*time.Second, f.name+": transitca_vault_up 1", func() bool { return s.metric(t, "transitca_vault_up") == "1" })
		t.Logf("%s: Unavailable after %v; served again after the repair (%v for the whole fault)", f.name, took.Round(time.Millisecond), time.Since(phase).Round(time.Millisecond))
	}
}

// In memory mode the intermediate's key is in memory: whatever the fault,
// issuance goes on, the daemon reports itself degraded (metric and
// /healthz), checkpoints wait (their signing never blocks a request) and
// catch up once Vault is healed.
func TestVaultFaultsMemoryMode(t *testing.T) {
	s, srv, p := startFaultCA(t, "memory")
	for _, f := range vaultFaults(t, srv, p) {
		f.make()
		waitFor(t, 20*time.Second, f.name+": transitca_vault_up 0", func() bool { return s.metric(t, "transitca_vault_up") == "0" })
		for i := range 10 {
			if err := request(t, s, "default", "web"); err != nil {
				f.repair()
				t.Fatalf("%s: request %d with Vault failing: %v\n%s", f.name, i, err, s.Logs())
			}
		}
		if code, body := s.health(t); code != http.StatusOK || !strings.Contains(body, "in-memory intermediate") {
			t.Errorf("%s: /healthz: %d %q, want 200 saying it issues from the in-memory intermediate", f.name, code, body)
		}
		f.repair()
		waitFor(t, 20*time.Second, f.name+": transitca_vault_up 1", func() bool { return s.metric(t, "transitca_vault_up") == "1" })
		waitFor(t, 30*time.Second, f.name+": a checkpoint covers the log", func() bool {
			return s.metric(t, "transitca_log_checkpoint_age_seconds") == "0"
		})
		if code, body := s.health(t); code != http.StatusOK || strings.Contains(body, "degraded") {
			t.Errorf("%s: /healthz after the repair: %d %q", f.name, code, body)
		}
	}
}
