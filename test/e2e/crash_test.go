package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"

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

// TestCrashKeepsEveryIssuedCertificate kills the daemon with SIGKILL at
// random moments while concurrent clients request certificates, many
// times. After every restart, every certificate any client received is in
// the log, no serial appears twice, and the log verifies.
func TestCrashKeepsEveryIssuedCertificate(t *testing.T) {
	const (
		rounds  = 8
		clients = 16
	)
	dir := t.TempDir()
	s := startDevCA(t, dir)
	tok, err := s.Minter.Mint("default", "web", []string{"istio-ca"}, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse(spiffeID("default", "web"))
	var (
		mu       sync.Mutex
		received = map[string][]byte{} // serial hex → DER
	)
	for round := 0; round < rounds; round++ {
		s.start(t)
		pool := rootPool(t, readFile(t, s.RootFile))
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
				if err != nil {
					return
				}
				defer conn.Close()
				client := pb.NewIstioCertificateServiceClient(conn)
				for ctx.Err() == nil {
					key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
					der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
					rctx, rcancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), 5*time.Second)
					resp, err := client.CreateCertificate(rctx, &pb.IstioCertificateRequest{
						Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
					})
					rcancel()
					if err != nil {
						continue // the daemon is being killed
					}
					block, _ := pem.Decode([]byte(resp.CertChain[0]))
					leaf, err := x509.ParseCertificate(block.Bytes)
					if err != nil {
						t.Errorf("unparsable leaf: %v", err)
						return
					}
					mu.Lock()
					received[leaf.SerialNumber.Text(16)] = leaf.Raw
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(150+mrand.IntN(600)) * time.Millisecond)
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.done
		cancel()
		wg.Wait()

		// The log as the daemon left it: every received certificate is in
		// it, once, and it verifies.
		entries := exportLog(t, s, filepath.Join(s.DataDir, "issuance.db"))
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
		out, err := runCA(t, s, "log", "verify", "--db", filepath.Join(s.DataDir, "issuance.db"), "--verifier-key", filepath.Join(s.DataDir, "log-verifier.vkey"))
		if err != nil || !strings.Contains(out, "log verified") {
			t.Fatalf("round %d: log does not verify after SIGKILL: %v\n%s", round, err, out)
		}
		t.Logf("round %d: %d certificates received so far, %d log entries, verified", round, n, len(entries))
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
