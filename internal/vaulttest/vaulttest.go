// Package vaulttest starts a real HashiCorp Vault server in dev mode on a
// loopback port for tests, and hands tests clients with their own Transit
// and KV mounts.
//
// The server binary is built from the github.com/hashicorp/vault module
// pinned in test/vault (make vault). It is found at $TRANSITCA_VAULT_BIN, or
// else at ${XDG_CACHE_HOME:-$HOME/.cache}/transitca/vault-<version>. Tests
// that need Vault fail, with a message that says how to build it, when the
// binary is missing or the server does not start: they never skip.
package vaulttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/transitca/transitca/internal/testserver"
)

// Version is the Vault release the tests run against; it must match
// test/vault/go.mod.
const Version = "v1.21.0"

// Binary returns the path of the Vault binary the tests use.
func Binary() string {
	if p := os.Getenv("TRANSITCA_VAULT_BIN"); p != "" {
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "transitca", "vault-"+Version)
}

// Server is a running Vault dev server.
type Server struct {
	Addr      string // http://127.0.0.1:port
	RootToken string
	cmd       *exec.Cmd
	logs      *bytes.Buffer
	logMu     *sync.Mutex
	done      chan struct{}
	stopOnce  sync.Once
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Start starts a Vault dev server on a free loopback port and waits until
// it answers. The caller must Stop it.
func Start() (*Server, error) {
	bin := Binary()
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("vault server binary %s not found (%w): build it with \"make vault\" (go build in test/vault, pinned to hashicorp/vault %s)", bin, err, Version)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	tok := "root-" + randHex(8)
	s := &Server{
		Addr:      fmt.Sprintf("http://127.0.0.1:%d", port),
		RootToken: tok,
		logs:      &bytes.Buffer{},
		logMu:     &sync.Mutex{},
		done:      make(chan struct{}),
	}
	cmd := exec.Command(bin, "server", "-dev",
		fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", port),
		"-dev-root-token-id="+tok,
		"-dev-no-store-token",
		"-log-level="+logLevel(),
	)
	cmd.Env = append(os.Environ(), "VAULT_DISABLE_MLOCK=true", "HOME="+os.TempDir())
	out := lockedBuffer{mu: s.logMu, b: s.logs}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start vault %s: %w", bin, err)
	}
	s.cmd = cmd
	go func() { _ = cmd.Wait(); close(s.done) }()
	if err := s.waitReady(60 * time.Second); err != nil {
		s.Stop()
		return nil, fmt.Errorf("vault dev server at %s did not become ready: %w\nvault output:\n%s", s.Addr, err, s.Logs())
	}
	return s, nil
}

// Logs returns what the server printed so far.
func (s *Server) Logs() string {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return s.logs.String()
}

func (s *Server) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	hc := &http.Client{Timeout: 2 * time.Second}
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return errors.New("vault exited")
		default:
		}
		resp, err := hc.Get(s.Addr + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("health: %s", resp.Status)
		} else {
			last = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

// Stop kills the server and waits for it to exit.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
	})
}

// Pause stops the server's processes (SIGSTOP) until Resume or the end of
// the test: connections are still accepted by the kernel, but nothing
// answers, as with a Vault that hangs. Use it on a server of the test's
// own (Own).
func (s *Server) Pause(tb testing.TB) {
	tb.Helper()
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		tb.Fatalf("vaulttest: pause: %v", err)
	}
	tb.Cleanup(s.Resume)
	// The signal is delivered asynchronously: wait until every thread is
	// stopped, or a request sent now may still be answered.
	for deadline := time.Now().Add(5 * time.Second); !s.stopped(); {
		if time.Now().After(deadline) {
			tb.Fatal("vaulttest: pause: the server did not stop within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stopped reports whether every thread of the server is stopped, from
// /proc (Linux).
func (s *Server) stopped() bool {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", s.cmd.Process.Pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			return false
		}
		// The state follows the command name, which is in parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
			return false
		}
	}
	return true
}

// Resume lets a paused server run again.
func (s *Server) Resume() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGCONT)
	}
}

// Client returns a root client for the server.
func (s *Server) Client() (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	cfg.Address = s.Addr
	cfg.MaxRetries = 0
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.SetToken(s.RootToken)
	return c, nil
}

// shared is the package's shared server.
var shared = testserver.New("vaulttest", Start)

// Main runs a package's tests with one shared Vault server, started on
// first use by Shared and stopped when the tests end. Call it from TestMain.
func Main(m *testing.M) { shared.Main(m) }

// Shared returns the package's shared server, starting it on first use. The
// test fails, naming what went wrong, when Vault cannot be started.
func Shared(tb testing.TB) *Server {
	tb.Helper()
	return shared.Get(tb)
}

// Own starts a server for this test alone (for tests that stop it), and
// stops it when the test ends.
func Own(tb testing.TB) *Server {
	tb.Helper()
	s, err := Start()
	if err != nil {
		tb.Fatalf("vaulttest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// Env is a test's own corner of a Vault server: a root client, a fresh
// Transit mount and a fresh KV v2 mount.
type Env struct {
	Server  *Server
	Client  *vault.Client
	Transit string // mount path of this test's Transit engine
	KV      string // mount path of this test's KV v2 engine
}

// New enables a fresh Transit and KV v2 mount for the test on the shared
// server.
func New(tb testing.TB) *Env {
	tb.Helper()
	return NewOn(tb, Shared(tb))
}

// NewOn is New on a given server.
func NewOn(tb testing.TB, s *Server) *Env {
	tb.Helper()
	env := NewBare(tb, s)
	env.MountTransit(tb)
	env.MountKV(tb, 2)
	return env
}

// NewBare is NewOn without the mounts: Transit and KV name fresh paths at
// which nothing is mounted, as on a fresh Vault, for tests of what happens
// when a secrets engine is missing. MountTransit and MountKV add them.
func NewBare(tb testing.TB, s *Server) *Env {
	tb.Helper()
	c, err := s.Client()
	if err != nil {
		tb.Fatalf("vaulttest: client: %v", err)
	}
	id := randHex(6)
	return &Env{Server: s, Client: c, Transit: "transit-" + id, KV: "kv-" + id}
}

// MountTransit enables a Transit engine at e.Transit.
func (e *Env) MountTransit(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Client.Sys().MountWithContext(ctx, e.Transit, &vault.MountInput{Type: "transit"}); err != nil {
		tb.Fatalf("vaulttest: enable transit at %s: %v", e.Transit, err)
	}
}

// MountKV enables a KV engine of the given version (1 or 2) at e.KV.
func (e *Env) MountKV(tb testing.TB, version int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := map[string]string{"version": strconv.Itoa(version)}
	if err := e.Client.Sys().MountWithContext(ctx, e.KV, &vault.MountInput{Type: "kv", Options: opts}); err != nil {
		tb.Fatalf("vaulttest: enable kv-v%d at %s: %v", version, e.KV, err)
	}
	if version != 2 {
		return
	}
	// KV v2 upgrades its storage in the background after mounting; wait until
	// it accepts reads.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := e.Client.KVv2(e.KV).Get(ctx, "probe")
		if err == nil || errors.Is(err, vault.ErrSecretNotFound) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("vaulttest: kv-v2 at %s not ready: %v", e.KV, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logLevel is the server's log level: warn, or $TRANSITCA_VAULT_LOG_LEVEL
// when set (debug shows why Vault refused a login).
func logLevel() string {
	if l := os.Getenv("TRANSITCA_VAULT_LOG_LEVEL"); l != "" {
		return l
	}
	return "warn"
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Seal seals the server (sys/seal), as an operator does in an incident:
// Vault keeps answering, with 503 to every secret request, until Unseal.
func (s *Server) Seal(tb testing.TB) {
	tb.Helper()
	c, err := s.Client()
	if err == nil {
		err = c.Sys().Seal()
	}
	if err != nil {
		tb.Fatalf("vaulttest: seal: %v", err)
	}
}

// Unseal unseals the server with the unseal key its dev banner printed.
func (s *Server) Unseal(tb testing.TB) {
	tb.Helper()
	m := unsealKeyRE.FindStringSubmatch(s.Logs())
	if m == nil {
		tb.Fatalf("vaulttest: no unseal key in the dev server's output:\n%s", s.Logs())
	}
	c, err := s.Client()
	if err != nil {
		tb.Fatal(err)
	}
	st, err := c.Sys().Unseal(m[1])
	if err != nil || st.Sealed {
		tb.Fatalf("vaulttest: unseal: %v (status %+v)", err, st)
	}
}

var unsealKeyRE = regexp.MustCompile(`Unseal Key: (\S+)`)
