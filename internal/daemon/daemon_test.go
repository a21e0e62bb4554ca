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
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/transitca/transitca/internal/config"
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
// reason, at once. The log's file system filling up is the failure made
// here, with a real full file system (a small tmpfs).
func TestLogFailureTurnsHealthNotServing(t *testing.T) {
	dir := t.TempDir()
	mnt := filepath.Join(dir, "logfs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })
	cfg := devConfig(t, filepath.Join(dir, "data"))
	cfg.Log.Path = filepath.Join(mnt, "issuance.db")
	d := startDaemon(t, cfg)

	conn, err := grpc.NewClient(d.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: d.rootPool(t), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	check := func() healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("health check: %v", err)
		}
		return r.GetStatus()
	}
	healthz := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + d.MetricsAddr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if s := check(); s != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before the failure: %s", s)
	}
	if code, _ := healthz(); code != http.StatusOK {
		t.Fatalf("/healthz before the failure: %d", code)
	}

	// Fill the file system, then append until a commit fails.
	filler, err := os.Create(filepath.Join(mnt, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for {
		if _, err := filler.Write(buf); err != nil {
			break
		}
	}
	filler.Close()
	var appendErr error
	for i := 0; i < 10000 && appendErr == nil; i++ {
		_, appendErr = d.Log().Append(context.Background(), &store.Entry{Kind: store.KindAdmin, Time: time.Now(), Action: "fill", Actor: "test", Detail: strings.Repeat("x", 4000)})
	}
	if !errors.Is(appendErr, store.ErrFailed) {
		t.Fatalf("appending to a full file system: %v, want ErrFailed", appendErr)
	}

	deadline := time.Now().Add(2 * time.Second)
	for check() != healthpb.HealthCheckResponse_NOT_SERVING {
		if time.Now().After(deadline) {
			t.Fatal("health still SERVING 2s after the issuance log failed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, body := healthz()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "issuance log") {
		t.Fatalf("/healthz after the log failed: %d %q, want 503 naming the issuance log", code, body)
	}
	if got := metricValue(t, d, MetricLogFailed); got != 1 {
		t.Fatalf("%s after the log failed = %v, want 1", MetricLogFailed, got)
	}
}
