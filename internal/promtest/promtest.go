// Package promtest runs a real Prometheus server for tests, on a loopback
// port with a temporary TSDB, and promtool. Both are built from the
// github.com/prometheus/prometheus module pinned in test/prometheus/go.mod
// (make prometheus) and found at $TRANSITCA_PROMETHEUS_BIN and
// $TRANSITCA_PROMTOOL_BIN, or else at
// ${XDG_CACHE_HOME:-$HOME/.cache}/transitca/prometheus-<version> and
// promtool-<version>. A test that needs one fails, saying how to build it,
// when it is missing: it never skips.
package promtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Version is the github.com/prometheus/prometheus module version the
// binaries are built from; it must match test/prometheus/go.mod.
const Version = "v0.316.0"

// Binary returns the path of the Prometheus server binary.
func Binary() string { return binary("TRANSITCA_PROMETHEUS_BIN", "prometheus-"+Version) }

// PromtoolBinary returns the path of the promtool binary.
func PromtoolBinary() string { return binary("TRANSITCA_PROMTOOL_BIN", "promtool-"+Version) }

func binary(env, name string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "transitca", name)
}

func need(tb testing.TB, bin string) {
	tb.Helper()
	if _, err := os.Stat(bin); err != nil {
		tb.Fatalf("promtest: %s not found (%v): build it with \"make prometheus\" (scripts/build-prometheus.sh builds cmd/prometheus and cmd/promtool of github.com/prometheus/prometheus %s, pinned in test/prometheus)", bin, err, Version)
	}
}

// Options configure a server.
type Options struct {
	// ScrapeConfigs is the YAML of the scrape_configs entries (each
	// starting "  - job_name: ...").
	ScrapeConfigs string
	// RuleFiles are rule files to load.
	RuleFiles []string
	// EvaluationInterval is how often rules are evaluated; default 1s.
	EvaluationInterval time.Duration
}

// Server is a running Prometheus.
type Server struct {
	// URL is http://127.0.0.1:<port>.
	URL string

	dir  string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (s *Server) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(b)
}

// Logs returns what the server printed so far.
func (s *Server) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// Start starts a server and waits until it is ready; it is killed when
// the test ends.
func Start(tb testing.TB, o Options) *Server {
	tb.Helper()
	bin := Binary()
	need(tb, bin)
	if o.EvaluationInterval == 0 {
		o.EvaluationInterval = time.Second
	}
	s := &Server{dir: tb.TempDir(), done: make(chan struct{})}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  evaluation_interval: %s\n", o.EvaluationInterval)
	if len(o.RuleFiles) > 0 {
		cfg.WriteString("rule_files:\n")
		for _, f := range o.RuleFiles {
			abs, err := filepath.Abs(f)
			if err != nil {
				tb.Fatal(err)
			}
			fmt.Fprintf(&cfg, "  - %q\n", abs)
		}
	}
	cfg.WriteString("scrape_configs:\n" + o.ScrapeConfigs)
	cfgFile := filepath.Join(s.dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	s.URL = "http://" + addr
	// bin is the pinned Prometheus (Binary: the developer's own cache or
	// environment); the arguments are built here.
	s.cmd = exec.Command(bin, //nolint:gosec // G204: see above
		"--config.file="+cfgFile,
		"--storage.tsdb.path="+filepath.Join(s.dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn",
	)
	s.cmd.Stdout, s.cmd.Stderr = s, s
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		tb.Fatalf("promtest: start %s: %v", bin, err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	tb.Cleanup(func() {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
		if tb.Failed() {
			tb.Logf("prometheus output:\n%s", s.Logs())
		}
	})
	if err := s.waitReady(90 * time.Second); err != nil {
		tb.Fatalf("promtest: prometheus at %s: %v\n%s\nconfiguration:\n%s", s.URL, err, s.Logs(), cfg.String())
	}
	return s
}

func (s *Server) waitReady(limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var last error
	for {
		select {
		case <-s.done:
			return fmt.Errorf("exited: %s", s.cmd.ProcessState)
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/-/ready", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("/-/ready: %s", resp.Status)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %w", limit, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Target is one scrape target as /api/v1/targets reports it.
type Target struct {
	Labels     map[string]string `json:"labels"`
	ScrapeURL  string            `json:"scrapeUrl"`
	Health     string            `json:"health"`
	LastError  string            `json:"lastError"`
	LastScrape time.Time         `json:"lastScrape"`
}

// Targets returns the active targets.
func (s *Server) Targets(ctx context.Context) ([]Target, error) {
	var r struct {
		Data struct {
			ActiveTargets []Target `json:"activeTargets"`
		} `json:"data"`
	}
	if err := s.get(ctx, "/api/v1/targets?state=active", &r); err != nil {
		return nil, err
	}
	return r.Data.ActiveTargets, nil
}

// Alert is one alert as /api/v1/alerts reports it.
type Alert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
	ActiveAt    time.Time         `json:"activeAt"`
}

// Alerts returns the pending and firing alerts.
func (s *Server) Alerts(ctx context.Context) ([]Alert, error) {
	var r struct {
		Data struct {
			Alerts []Alert `json:"alerts"`
		} `json:"data"`
	}
	if err := s.get(ctx, "/api/v1/alerts", &r); err != nil {
		return nil, err
	}
	return r.Data.Alerts, nil
}

// RuleGroup is a loaded rule group as /api/v1/rules reports it.
type RuleGroup struct {
	Name  string `json:"name"`
	File  string `json:"file"`
	Rules []struct {
		Name      string `json:"name"`
		Health    string `json:"health"`
		LastError string `json:"lastError"`
	} `json:"rules"`
}

// Rules returns the loaded rule groups.
func (s *Server) Rules(ctx context.Context) ([]RuleGroup, error) {
	var r struct {
		Data struct {
			Groups []RuleGroup `json:"groups"`
		} `json:"data"`
	}
	if err := s.get(ctx, "/api/v1/rules", &r); err != nil {
		return nil, err
	}
	return r.Data.Groups, nil
}

func (s *Server) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	return json.Unmarshal(body, v)
}

// WaitScraped waits until every active target is up with a scrape that
// began after since.
func (s *Server) WaitScraped(tb testing.TB, since time.Time, limit time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), limit)
	defer cancel()
	for {
		ts, err := s.Targets(ctx)
		ok := err == nil && len(ts) > 0
		for _, t := range ts {
			ok = ok && t.Health == "up" && t.LastScrape.After(since)
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("promtest: targets not all scraped since %s within %s: %+v (%v)", since.Format(time.RFC3339Nano), limit, ts, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestRules runs "promtool test rules" on the rule unit test files and
// returns its output; err is non-nil when a test fails.
func TestRules(tb testing.TB, files ...string) (string, error) {
	tb.Helper()
	bin := PromtoolBinary()
	need(tb, bin)
	// bin is the pinned promtool (PromtoolBinary); files are the caller's.
	cmd := exec.Command(bin, append([]string{"test", "rules"}, files...)...) //nolint:gosec // G204: see above
	out, err := cmd.CombinedOutput()
	return string(out), err
}
