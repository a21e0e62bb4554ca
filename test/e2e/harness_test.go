package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/vaulttest"
)

// caBinary is the ca command built once for the run.
var caBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "transitca-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	caBinary = filepath.Join(dir, "ca")
	// Built in the daemon's own module, with its go.mod and go.sum, as a
	// user builds it.
	build := exec.Command("go", "build", "-o", caBinary, "./cmd/ca")
	build.Dir = filepath.Join("..", "..")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build ca:", err)
		os.Exit(1)
	}
	code := 0
	func() {
		defer os.RemoveAll(dir)
		defer func() {
			if r := recover(); r != nil {
				code = 1
				fmt.Fprintln(os.Stderr, r)
			}
		}()
		vaulttest.Main(m)
	}()
	os.Exit(code)
}

// lockedBuffer collects a child's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// caServer is a running "ca serve" process.
type caServer struct {
	Addr     string
	DataDir  string
	RootFile string
	Config   string
	Minter   *ca.TokenMinter
	Env      *vaulttest.Env
	// VaultAddr, when set, is the Vault address the CA is given instead
	// of Env's (a proxy in front of it).
	VaultAddr string
	// MetricsAddr is server.metrics_listen; "" when off.
	MetricsAddr string
	// ServeArgs are added to "ca serve --config <Config>".
	ServeArgs []string
	cmd       *exec.Cmd
	out       *lockedBuffer
	done      chan struct{}
}

const tokenIssuer = "https://kubernetes.default.svc.cluster.local"

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startCA initializes a CA in a fresh corner of the shared Vault and starts
// "ca serve" against it, with tokens verified against a JWKS file.
func startCA(t *testing.T, mode string, extraConfig string) *caServer {
	t.Helper()
	return startCAOn(t, vaulttest.New(t), mode, extraConfig)
}

// startCAOn is startCA on a given Vault corner.
func startCAOn(t *testing.T, env *vaulttest.Env, mode string, extraConfig string) *caServer {
	t.Helper()
	return startCAWith(t, env, caOptions{Mode: mode, Extra: extraConfig})
}

// caOptions are the settings of the configuration startCAWith writes.
type caOptions struct {
	// Mode is ca.intermediate_mode.
	Mode string
	// Extra is appended to the file: top-level keys the harness does not
	// set (admin, tiers, policy, rotation, log).
	Extra string
	// ServingCertTTL is server.tls.cert_ttl; 24h when zero.
	ServingCertTTL time.Duration
	// VaultAddr, when set, is given to the CA as VAULT_ADDR instead of
	// env's address.
	VaultAddr string
	// Metrics turns server.metrics_listen on, at a free address.
	Metrics bool
	// Minter and JWKSFile, when set, are the token minter and the JWKS
	// file that verifies its tokens: replicas share them. A new pair
	// when nil.
	Minter   *ca.TokenMinter
	JWKSFile string
	// ServeArgs are added to "ca serve" (caServer.ServeArgs).
	ServeArgs []string
	// Auth is added to the auth section (indented keys such as
	// "  clusters: [dev, prod]\n").
	Auth string
}

// startCAWith initializes a CA in env and starts "ca serve" with o.
func startCAWith(t *testing.T, env *vaulttest.Env, o caOptions) *caServer {
	t.Helper()
	mode, extraConfig := o.Mode, o.Extra
	servingTTL := o.ServingCertTTL
	if servingTTL == 0 {
		servingTTL = 24 * time.Hour
	}
	dir := t.TempDir()
	minter, jwksFile := o.Minter, o.JWKSFile
	if minter == nil {
		minter, jwksFile = newMinter(t, dir)
	}
	addr := freeAddr(t)
	metricsAddr := ""
	if o.Metrics {
		metricsAddr = freeAddr(t)
	}
	cfgFile := filepath.Join(dir, "transitca.yaml")
	cfg := fmt.Sprintf(`data_dir: %s
trust_domain: cluster.local
vault:
  transit_mount: %s
  kv_mount: %s
  timeout: 3s
  check_interval: 1s
ca:
  intermediate_mode: %s
server:
  listen: %s
  metrics_listen: %q
  tls:
    dns_names: [localhost]
    ip_addresses: [127.0.0.1]
    cert_ttl: %s
auth:
  jwt:
    issuer: %s
    jwks_file: %s
%s%s`, filepath.Join(dir, "data"), env.Transit, env.KV, mode, addr, metricsAddr, servingTTL, tokenIssuer, jwksFile, o.Auth, extraConfig)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &caServer{Addr: addr, DataDir: filepath.Join(dir, "data"), Config: cfgFile, Minter: minter, Env: env,
		ServeArgs: o.ServeArgs, VaultAddr: o.VaultAddr, MetricsAddr: metricsAddr}
	s.RootFile = filepath.Join(s.DataDir, "root-cert.pem")
	if out, err := s.command("init", "--config", cfgFile).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	s.start(t)
	return s
}

// newMinter returns a token minter and the JWKS file, in dir, that
// verifies its tokens.
func newMinter(t *testing.T, dir string) (*ca.TokenMinter, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	minter, err := ca.NewTokenMinter(key, "sa-key-1", tokenIssuer)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := json.Marshal(minter.JWKS())
	if err != nil {
		t.Fatal(err)
	}
	jwksFile := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	return minter, jwksFile
}

func (s *caServer) command(args ...string) *exec.Cmd {
	cmd := exec.Command(caBinary, args...)
	if s.Env != nil {
		addr := s.Env.Server.Addr
		if s.VaultAddr != "" {
			addr = s.VaultAddr
		}
		cmd.Env = append(os.Environ(), "VAULT_ADDR="+addr, "VAULT_TOKEN="+s.Env.Server.RootToken)
	}
	return cmd
}

// start runs "ca serve" and waits until it answers TLS.
func (s *caServer) start(t *testing.T) {
	t.Helper()
	s.out = &lockedBuffer{}
	s.done = make(chan struct{})
	cmd := s.command(append([]string{"serve", "--config", s.Config}, s.ServeArgs...)...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.cmd = cmd
	done := s.done
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(s.stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-s.done:
			t.Fatalf("ca serve exited:\n%s", s.out.String())
		default:
		}
		if _, err := os.Stat(s.RootFile); err == nil {
			conn, err := tls.Dial("tcp", s.Addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only probing that the listener is up
			if err == nil {
				conn.Close()
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("ca serve not ready after 30s:\n%s", s.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *caServer) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Logs returns what the daemon printed.
func (s *caServer) Logs() string { return s.out.String() }

// token mints a projected service-account token for ns/sa and writes it to
// a file, the way the kubelet does.
func (s *caServer) tokenFile(t *testing.T, ns, sa string) string {
	t.Helper()
	tok, err := s.Minter.Mint(ns, sa, []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(path, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func rootPool(t *testing.T, pemText string) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM([]byte(pemText)) {
		t.Fatalf("no certificates in %q", pemText)
	}
	return p
}

func parsePEMChain(t *testing.T, elems []string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, e := range elems {
		rest := []byte(e)
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, c)
		}
	}
	return out
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
