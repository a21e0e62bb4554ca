package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/daemon"
	"github.com/transitca/transitca/internal/daemontest"
	"github.com/transitca/transitca/store"
)

// devAdminDaemon starts a dev daemon on loopback and returns it with the
// connection flags of its admin API for the dev admin identity
// (transitca/admin), whose certificate it gets as a user does: ca token
// --dev, then ca request.
func devAdminDaemon(t *testing.T) (*daemon.Daemon, []string) {
	t.Helper()
	dataDir := t.TempDir()
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dev, cfg.DataDir = true, dataDir
	cfg.Server.Listen, cfg.Server.MetricsListen, cfg.Admin.Listen = "127.0.0.1:0", "", "127.0.0.1:0"
	cfg.Kubernetes.Enabled = new(bool)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d, _ := daemontest.Start(t, cfg)
	tok, errs, code := runCA(t, "token", "--dev", "--data-dir", dataDir, "--namespace", "transitca", "--service-account", "admin")
	if code != 0 {
		t.Fatalf("ca token: %s", errs)
	}
	tf := filepath.Join(t.TempDir(), "token")
	writeFile(t, tf, tok)
	dir := t.TempDir()
	if out, errs, code := runCA(t, "request", "--addr", d.Addr(), "--token-file", tf, "--root-cert", d.RootFile(),
		"--server-name", "localhost", "--out", dir); code != 0 {
		t.Fatalf("ca request for the admin identity: %s%s", out, errs)
	}
	return d, []string{"--addr", d.AdminAddr(), "--cert", filepath.Join(dir, "cert-chain.pem"),
		"--key", filepath.Join(dir, "key.pem"), "--root-cert", d.RootFile(), "--server-name", "localhost"}
}

// appendDenials appends n denial entries whose reasons are reasonBytes
// long, many at a time, as a busy CA's denials arrive.
func appendDenials(t *testing.T, l *store.Log, n, reasonBytes int) {
	t.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 64 {
		wg.Go(func() {
			for i := w; i < n; i += 64 {
				reason := fmt.Sprintf("denial %06d ", i)
				reason += strings.Repeat("x", reasonBytes-len(reason))
				_, err := l.Append(context.Background(), &store.Entry{Kind: store.KindDenial, Time: start.Add(time.Duration(i)),
					Code: "PermissionDenied", Reason: reason, SPIFFEID: "spiffe://cluster.local/ns/shop/sa/web", ClusterID: "Kubernetes"})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// ca log query --limit 10000 (the largest page the daemon serves) on a
// log whose 10,000 denials, with reasons of 1 KiB (the most a denial
// records), take about 10 MB: more than gRPC's default 4 MiB message. The
// command prints the 10,000 entries, each whole and once, whatever size of
// message the daemon answers with.
func TestLogQueryLargestPage(t *testing.T) {
	d, admin := devAdminDaemon(t)
	const n, reasonBytes = 10000, 1024
	appendDenials(t, d.Log(), n, reasonBytes)

	out, errs, code := runCA(t, append([]string{"log", "query", "--limit", "10000", "--kind", "denial", "--json"}, admin...)...)
	if code != 0 {
		t.Fatalf("ca log query --limit 10000 exited %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != n {
		t.Fatalf("ca log query --limit 10000 printed %d entries, want %d; stderr: %s", len(lines), n, errs)
	}
	seen := map[string]bool{}
	for i, line := range lines {
		var x exportEntry
		if err := json.Unmarshal([]byte(line), &x); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		name, _, _ := strings.Cut(x.Reason, " x")
		if x.Kind != "denial" || len(x.Reason) != reasonBytes || !strings.HasPrefix(name, "denial ") || seen[name] {
			t.Fatalf("line %d: %s entry with a %d-byte reason %.20q…, want another denial of %d bytes", i+1, x.Kind, len(x.Reason), x.Reason, reasonBytes)
		}
		seen[name] = true
	}
	if strings.Contains(errs, "more:") {
		t.Fatalf("ca log query printed a next page after the last denial: %s", errs)
	}
}
