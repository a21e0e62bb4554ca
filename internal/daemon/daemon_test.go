package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/faultfs"
	"github.com/transitca/transitca/store"
)

// devConfig is a dev-mode configuration on loopback ports chosen by the
// kernel, with its data in dir.
func devConfig(t *testing.T, dir string) *config.Config {
	t.Helper()
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dev = true
	cfg.DataDir = dir
	cfg.Server.Listen, cfg.Server.MetricsListen, cfg.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// running is a daemon serving in the background of a test.
type running struct {
	*Daemon
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startDaemon starts a daemon with cfg and stops it when the test ends.
func startDaemon(t *testing.T, cfg *config.Config) *running {
	t.Helper()
	d, err := New(context.Background(), cfg, Options{Logger: slog.New(slog.DiscardHandler), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Daemon: d, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop stops the daemon and closes it; it is safe to call twice.
func (r *running) stop(t *testing.T) {
	r.once.Do(func() {
		r.cancel()
		if err := <-r.done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

func (r *running) rootPool(t *testing.T) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(r.RootFile())
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		t.Fatal("root bundle holds no certificate")
	}
	return p
}

// A client that completes TLS, sends the HTTP/2 preface and then nothing
// holds a connection open. Both gRPC ports close it after the handshake
// timeout.
func TestSilentConnectionsAreClosedOnBothPorts(t *testing.T) {
	d := startDaemon(t, devConfig(t, t.TempDir()))
	roots := d.rootPool(t)
	for name, addr := range map[string]string{"serving": d.Addr(), "admin": d.AdminAddr()} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			limit := 10*time.Second + 5*time.Second
			_ = conn.SetReadDeadline(start.Add(limit))
			_, err = io.Copy(io.Discard, conn)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("%s port kept a silent connection open for %s", name, limit)
			}
			if took := time.Since(start); took > limit {
				t.Fatalf("%s port closed a silent connection after %s", name, took)
			}
		})
	}
}

// When the issuance log fails, every issuance would fail: the daemon says
// NOT_SERVING on the gRPC health service and 503 on /healthz, with the
// reason, at once, and requests fail with Unavailable (istio-agent
// retries). The log's file system filling up is the failure made here, with
// a real full file system (a small tmpfs). When space returns, the daemon
// serves again by itself, without a restart, and every certificate it
// handed out is in the log.
func TestFullLogDiskTurnsNotServingAndRecovers(t *testing.T) {
	defer func(v time.Duration) { logRecoverInterval = v }(logRecoverInterval)
	logRecoverInterval = 50 * time.Millisecond
	mnt := faultfs.Tmpfs(t, 8<<20)
	cfg := devConfig(t, t.TempDir())
	cfg.Log.Path = filepath.Join(mnt, "issuance.db")
	d := startDaemon(t, cfg)
	minter, err := DevMinter(context.Background(), d.backend.Keys)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := minter.Mint("default", "web", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	check := healthChecker(t, d)
	if s := check(); s != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before the failure: %s", s)
	}
	if code, _ := healthz(t, d); code != http.StatusOK {
		t.Fatalf("/healthz before the failure: %d", code)
	}
	var received []*x509.Certificate
	w, err := d.tryRequest(t, "default", "web", tok)
	if err != nil {
		t.Fatalf("request before the failure: %v", err)
	}
	received = append(received, w.chain[0])

	free := faultfs.Fill(t, mnt)
	for i := 0; ; i++ {
		w, err := d.tryRequest(t, "default", "web", tok)
		if err == nil {
			received = append(received, w.chain[0]) // it fit in the last pages
			if i > 1000 {
				t.Fatal("1000 certificates recorded on a full file system")
			}
			continue
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("request on a full disk: %v, want Unavailable", err)
		}
		break
	}
	deadline := time.Now().Add(5 * time.Second)
	for check() != healthpb.HealthCheckResponse_NOT_SERVING {
		if time.Now().After(deadline) {
			t.Fatal("health still SERVING 5s after the issuance log failed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, body := healthz(t, d)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "issuance log") {
		t.Fatalf("/healthz after the log failed: %d %q, want 503 naming the issuance log", code, body)
	}
	if got := metricValue(t, d, MetricLogFailed); got != 1 {
		t.Fatalf("%s after the log failed = %v, want 1", MetricLogFailed, got)
	}
	if _, err := d.tryRequest(t, "default", "web", tok); status.Code(err) != codes.Unavailable {
		t.Fatalf("request while the disk is still full: %v, want Unavailable", err)
	}

	free()
	deadline = time.Now().Add(30 * time.Second)
	for check() != healthpb.HealthCheckResponse_SERVING {
		if time.Now().After(deadline) {
			t.Fatalf("health not SERVING 30s after space returned: %v", d.Log().Err())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := healthz(t, d); code != http.StatusOK {
		t.Fatalf("/healthz after recovery: %d %q", code, body)
	}
	if got := metricValue(t, d, MetricLogFailed); got != 0 {
		t.Fatalf("%s after recovery = %v, want 0", MetricLogFailed, got)
	}
	w, err = d.tryRequest(t, "default", "web", tok)
	if err != nil {
		t.Fatalf("request after space returned: %v", err)
	}
	received = append(received, w.chain[0])
	for _, c := range received {
		es, _, err := d.Log().Query(context.Background(), store.Query{Serial: store.SerialHex(c.SerialNumber)})
		if err != nil || len(es) != 1 {
			t.Fatalf("certificate %x handed out but not in the log once: %d entries, %v", c.SerialNumber, len(es), err)
		}
	}
	t.Logf("%d certificates handed out, all in the log", len(received))
}

// healthChecker returns a function that asks the daemon's gRPC health
// service for the server's status.
func healthChecker(t *testing.T, d *running) func() healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	conn, err := grpc.NewClient(d.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: d.rootPool(t), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	health := healthpb.NewHealthClient(conn)
	return func() healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("health check: %v", err)
		}
		return r.GetStatus()
	}
}

// healthz returns /healthz's status code and body.
func healthz(t *testing.T, d *running) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + d.MetricsAddr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// server.pprof serves Go's profiles on the metrics listener; off by
// default, where the path is not found.
func TestPprofOnTheMetricsListener(t *testing.T) {
	for _, on := range []bool{false, true} {
		cfg := devConfig(t, t.TempDir())
		cfg.Server.Pprof = on
		d := startDaemon(t, cfg)
		resp, err := http.Get("http://" + d.MetricsAddr() + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[on]; resp.StatusCode != want {
			t.Errorf("server.pprof %v: /debug/pprof/ answered %d, want %d", on, resp.StatusCode, want)
		}
		d.stop(t)
	}
}
