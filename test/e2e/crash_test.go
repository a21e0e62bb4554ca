package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/transitca/transitca/ca"
)

// startDevCA starts "ca serve --dev" (software keys, no Vault) with tokens
// verified against a JWKS file; the issuance log is the same as in
// production.
func startDevCA(t *testing.T, dir string) *caServer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	minter, err := ca.NewTokenMinter(key, "k1", tokenIssuer)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(minter.JWKS())
	jwksFile := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	s := &caServer{Addr: freeAddr(t), DataDir: filepath.Join(dir, "data"), Minter: minter, Config: filepath.Join(dir, "transitca.yaml")}
	s.RootFile = filepath.Join(s.DataDir, "root-cert.pem")
	cfg := fmt.Sprintf(`dev: true
data_dir: %s
server:
  listen: %s
  metrics_listen: ""
  tls: {dns_names: [localhost], ip_addresses: [127.0.0.1]}
admin:
  listen: ""
auth:
  jwt: {issuer: %s, jwks_file: %s}
log:
  checkpoint_every: 50
`, s.DataDir, s.Addr, tokenIssuer, jwksFile)
	if err := os.WriteFile(s.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// crashRounds is how many times TestCrashKeepsEveryIssuedCertificate kills
// the daemon: $TRANSITCA_CRASH_ROUNDS, 3 by default ("make soak" runs 20).
func crashRounds(t *testing.T) int {
	v := os.Getenv("TRANSITCA_CRASH_ROUNDS")
	if v == "" {
		return 3
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("TRANSITCA_CRASH_ROUNDS=%q: want a positive number", v)
	}
	return n
}

// TestCrashKeepsEveryIssuedCertificate kills the daemon with SIGKILL at
// random moments while concurrent clients request certificates, an
// operator rotates the intermediate over and over through the admin API
// and checkpoints are signed every 50 entries, so that kills land during
// commits, checkpoint signing and rotations. After every kill, every
// certificate any client received is in the log, no serial appears twice,
// the log verifies and the daemon starts again on it.
func TestCrashKeepsEveryIssuedCertificate(t *testing.T) {
	const clients = 16
	rounds := crashRounds(t)
	dir := t.TempDir()
	s := startDevCA(t, dir)
	adminAddr := freeAddr(t)
	cfg := strings.Replace(readFile(t, s.Config), "admin:\n  listen: \"\"\n",
		fmt.Sprintf("admin:\n  listen: %s\n  identities: [%s]\n", adminAddr, adminID), 1)
	if err := os.WriteFile(s.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	op := &operator{s: s, adminAddr: adminAddr, dir: t.TempDir()}
	tok, err := s.Minter.Mint("default", "web", []string{"istio-ca"}, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(s.DataDir, "issuance.db")
	var (
		mu        sync.Mutex
		received  = map[string]bool{}
		rotations atomic.Int64
	)
	for round := 0; round < rounds; round++ {
		s.start(t)
		op.refresh(t)
		ctx, cancel := context.WithCancel(context.Background())
		wait := runLoad(ctx, t, s, clients, tok, spiffeID("default", "web"), func(r issued) {
			if r.err == nil {
				mu.Lock()
				received[r.leaf.SerialNumber.Text(16)] = true
				mu.Unlock()
			}
		})
		rotDone := make(chan struct{})
		go func() {
			defer close(rotDone)
			for ctx.Err() == nil {
				if _, err := op.admin(t, "rotate-intermediate"); err == nil {
					rotations.Add(1)
				}
			}
		}()
		time.Sleep(time.Duration(300+mrand.IntN(900)) * time.Millisecond)
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.done
		cancel()
		wait()
		<-rotDone

		// The log as the daemon left it: every received certificate is in
		// it, once, and it verifies.
		entries := exportLog(t, s, db)
		seen := map[string]bool{}
		for _, e := range entries {
			if e.Kind != "issuance" {
				continue
			}
			if seen[e.Serial] {
				t.Fatalf("round %d: serial %s appears twice in the log", round, e.Serial)
			}
			seen[e.Serial] = true
		}
		mu.Lock()
		for serial := range received {
			if !seen[serial] {
				t.Fatalf("round %d: certificate %s was received by a client but is not in the log", round, serial)
			}
		}
		n := len(received)
		mu.Unlock()
		out, err := runCA(t, s, "log", "verify", "--db", db, "--verifier-key", filepath.Join(s.DataDir, "log-verifier.vkey"))
		if err != nil || !strings.Contains(out, "log verified") {
			t.Fatalf("round %d: log does not verify after SIGKILL: %v\n%s", round, err, out)
		}
		t.Logf("round %d: %d certificates received so far, %d intermediate rotations, %d log entries, verified", round, n, rotations.Load(), len(entries))
	}
	if len(received) < rounds {
		t.Fatalf("only %d certificates were issued across %d rounds: the load did not run", len(received), rounds)
	}
	// A last clean start: the daemon accepts the log it crashed on.
	s.start(t)
	s.stop()
	if !strings.Contains(s.Logs(), "transitca serving") {
		t.Fatalf("daemon did not restart on its crashed log:\n%s", s.Logs())
	}
}
