package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestSIGTERMUnderLoad sends SIGTERM to "ca serve" while 32 clients
// request certificates. The daemon exits 0 within server.shutdown_timeout;
// every request either got its certificate, which is then in the log, or
// failed with Unavailable (istio-agent retries it); the log verifies and
// its last checkpoint covers it (it was flushed).
func TestSIGTERMUnderLoad(t *testing.T) {
	const shutdownTimeout = 5 * time.Second
	s := startDevCA(t, t.TempDir())
	cfg := readFile(t, s.Config)
	cfg = strings.Replace(cfg, "server:\n", "server:\n  shutdown_timeout: "+shutdownTimeout.String()+"\n", 1)
	if err := os.WriteFile(s.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	tok, err := s.Minter.Mint("default", "web", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu        sync.Mutex
		received  = map[string]bool{}
		codesSeen = map[codes.Code]int{}
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := runLoad(ctx, t, s, 32, tok, spiffeID("default", "web"), func(r issued) {
		mu.Lock()
		defer mu.Unlock()
		if r.err != nil {
			codesSeen[status.Code(r.err)]++
			return
		}
		received[r.leaf.SerialNumber.Text(16)] = true
	})
	time.Sleep(time.Second)
	mu.Lock()
	before := len(received)
	mu.Unlock()
	if before == 0 {
		t.Fatalf("no certificate issued before SIGTERM:\n%s", s.Logs())
	}
	sent := time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	case <-time.After(3 * shutdownTimeout):
		t.Fatalf("ca serve still running %v after SIGTERM:\n%s", 3*shutdownTimeout, s.Logs())
	}
	took := time.Since(sent)
	cancel()
	wait()
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("ca serve exited %d after SIGTERM, want 0:\n%s", code, s.Logs())
	}
	if took > shutdownTimeout+time.Second {
		t.Errorf("ca serve exited %v after SIGTERM, beyond server.shutdown_timeout %v", took, shutdownTimeout)
	}
	for c, n := range codesSeen {
		if c != codes.Unavailable {
			t.Errorf("%d requests failed with %v; a request cut by the shutdown must fail with Unavailable", n, c)
		}
	}
	db := filepath.Join(s.DataDir, "issuance.db")
	inLog := map[string]int{}
	for _, e := range exportLog(t, s, db) {
		if e.Kind == "issuance" {
			inLog[e.Serial]++
		}
	}
	for serial := range received {
		if inLog[serial] != 1 {
			t.Errorf("certificate %s was received but is in the log %d times", serial, inLog[serial])
		}
	}
	out, err := runCA(t, s, "log", "verify", "--db", db, "--verifier-key", filepath.Join(s.DataDir, "log-verifier.vkey"))
	if err != nil || !strings.Contains(out, "log verified") {
		t.Fatalf("log does not verify after SIGTERM: %v\n%s", err, out)
	}
	if strings.Contains(s.Logs(), "closing without a final checkpoint") {
		t.Errorf("the log was closed without its final checkpoint:\n%s", s.Logs())
	}
	t.Logf("exit 0 %v after SIGTERM; %d certificates received (%d before SIGTERM), failures by code %v; log verified",
		took.Round(time.Millisecond), len(received), before, codesSeen)
}
