// Package driver runs transitca's side-by-side benchmark: it starts every
// system under test on this machine, drives each with the same load from
// the same load generator, in interleaved rounds, and writes the results.
package driver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/test/bench/internal/peers"
	"github.com/transitca/transitca/test/bench/loadgen"
)

// Config is what a run does.
type Config struct {
	// Out is the Markdown file the results go to (between the result
	// markers, if the file has them). Empty writes to stdout only.
	Out string
	// Command is how the run was invoked, for the report ("make bench").
	Command string
	// Args is the driver's own command line, for the report.
	Args string
	// CABinary is the ca binary; empty builds it.
	CABinary string
	// CandidateCA, if set, is a second ca binary (a build with a proposed
	// change) measured side by side with CABinary in every scenario, as
	// transitca-memory-candidate and transitca-vault-candidate.
	CandidateCA string
	// Self is the driver's own executable, re-run as the Istio CA server.
	Self string
	// WorkDir holds data directories (the issuance logs: on a real disk,
	// so that fsync means what it does in production). Empty uses a fresh
	// temporary directory, removed at the end.
	WorkDir string

	Clients  int           // closed-loop concurrency (simulated agents)
	Rounds   int           // interleaved rounds; medians are over rounds
	Warmup   time.Duration // before each measured window
	Duration time.Duration // each closed-loop window

	OpenDuration time.Duration // each open-loop window

	StormServices int // services restarting in the storm
	StormReplicas int // replicas of each
	// KubeServices × KubeReplicas pods restart in the Kubernetes storm.
	KubeServices, KubeReplicas int
	// LogEntries is the size of the large issuance log, cached in
	// LogCache (default: the user cache directory's transitca/), into which
	// LogAppends durable appends are measured against a new log.
	LogEntries, LogAppends int
	LogCache               string
	StormSpread            time.Duration // window the restarts start in

	Identities int // distinct service accounts in the steady-state runs
	Pool       int // pre-generated ECDSA P-256 CSRs, cycled
	RSAPool    int // pre-generated RSA-2048 CSRs, cycled

	// Only limits the run to these system ids (all when empty); Skip
	// leaves out parts: "open", "storm", "rsa".
	Only []string
	Skip []string

	Progress io.Writer
	Log      io.Writer
}

// DefaultConfig is what "make bench" runs: about ten minutes on two cores.
func DefaultConfig() Config {
	return Config{
		Clients: 32, Rounds: 3, Warmup: 2 * time.Second, Duration: 8 * time.Second,
		OpenDuration:  8 * time.Second,
		StormServices: 250, StormReplicas: 20, StormSpread: time.Second,
		KubeServices: 500, KubeReplicas: 20,
		LogEntries: 10_000_000, LogAppends: 200_000,
		Identities: 250, Pool: 16384, RSAPool: 128,
	}
}

const tokenIssuer = "https://kubernetes.default.svc.cluster.local"

// item is one request's material.
type item struct {
	ID     string // SPIFFE ID
	CSR    []byte
	Token  string
	Digest []byte // for the raw Transit sign: SHA-256 of the CSR
}

// env is everything a run set up.
type env struct {
	cfg        Config
	dir        string
	minter     *ca.TokenMinter
	jwks       string
	ecdsa      []item
	rsa        []item
	stormItems []item
	vault      *peers.Vault
	systems    []*system
	started    []func()
	meta       map[string]string
}

func (e *env) logf(format string, args ...any) {
	if e.cfg.Log != nil {
		fmt.Fprintf(e.cfg.Log, format+"\n", args...)
	}
}

func (e *env) skip(part string) bool { return slices.Contains(e.cfg.Skip, part) }

func (e *env) want(id string) bool { return len(e.cfg.Only) == 0 || slices.Contains(e.cfg.Only, id) }

// Run sets everything up, runs every scenario and writes the report.
func Run(ctx context.Context, cfg Config) error {
	e := &env{cfg: cfg, meta: map[string]string{}}
	defer func() {
		for i := len(e.started) - 1; i >= 0; i-- {
			e.started[i]()
		}
	}()
	if err := e.setup(ctx); err != nil {
		return err
	}
	res, err := e.runAll(ctx)
	if err != nil {
		return err
	}
	return e.report(res)
}

func (e *env) setup(ctx context.Context) error {
	e.dir = e.cfg.WorkDir
	if e.dir == "" {
		d, err := os.MkdirTemp("", "transitca-bench-")
		if err != nil {
			return err
		}
		e.dir = d
		e.started = append(e.started, func() { _ = os.RemoveAll(d) })
	}
	if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return err
	}
	if e.cfg.CABinary == "" {
		// The source the binary is built from, named before it is built.
		e.meta["transitca"] = gitDescribe()
		bin := filepath.Join(e.dir, "ca")
		e.logf("building the ca binary")
		// Built in the daemon's own module (found through this module's
		// replace directive), with its go.mod and go.sum, as a user builds it.
		root, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/transitca/transitca").Output()
		if err != nil {
			return fmt.Errorf("find the transitca module: %w", err)
		}
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/ca")
		build.Dir = strings.TrimSpace(string(root))
		build.Stdout, build.Stderr = e.cfg.Log, e.cfg.Log
		if err := build.Run(); err != nil {
			return fmt.Errorf("build ca: %w", err)
		}
		e.cfg.CABinary = bin
	} else {
		e.meta["transitca"] = "binary " + e.cfg.CABinary
	}
	if e.cfg.CandidateCA != "" {
		e.meta["transitca"] += "; candidate: binary " + e.cfg.CandidateCA
	}
	if err := e.setupTokens(); err != nil {
		return err
	}
	if err := e.setupCSRs(); err != nil {
		return err
	}
	return e.setupSystems(ctx)
}

// setupTokens makes the service-account token issuer every server trusts
// (one JWKS file) and its key.
func (e *env) setupTokens() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	e.minter, err = ca.NewTokenMinter(key, "bench-sa-key", tokenIssuer)
	if err != nil {
		return err
	}
	jwks, err := json.Marshal(e.minter.JWKS())
	if err != nil {
		return err
	}
	e.jwks = filepath.Join(e.dir, "jwks.json")
	return os.WriteFile(e.jwks, jwks, 0o600)
}

// identity i: services spread over namespaces of ten service accounts each.
func identity(i int) (ns, sa string) {
	return fmt.Sprintf("ns-%03d", i/10), fmt.Sprintf("svc-%d", i%10)
}

func spiffeID(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

// setupCSRs pre-generates every CSR and token the runs send, so that the
// workloads' key generation is not counted as CA work.
func (e *env) setupCSRs() error {
	tokens := map[string]string{}
	token := func(ns, sa string) (string, error) {
		id := spiffeID(ns, sa)
		if t, ok := tokens[id]; ok {
			return t, nil
		}
		t, err := e.minter.Mint(ns, sa, []string{ca.DefaultAudience}, 4*time.Hour)
		tokens[id] = t
		return t, err
	}
	mk := func(n int, key loadgen.KeyType, idOf func(i int) (string, string), perWorkloadToken bool) ([]item, error) {
		start := time.Now()
		csrs, err := loadgen.GenerateCSRs(n, key, func(i int) string { return spiffeID(idOf(i)) })
		if err != nil {
			return nil, err
		}
		items := make([]item, n)
		for i := range items {
			ns, sa := idOf(i)
			var t string
			if perWorkloadToken {
				// Every pod has its own projected token.
				t, err = e.minter.Mint(ns, sa, []string{ca.DefaultAudience}, 4*time.Hour)
			} else {
				t, err = token(ns, sa)
			}
			if err != nil {
				return nil, err
			}
			d := sha256.Sum256(csrs[i])
			items[i] = item{ID: spiffeID(ns, sa), CSR: csrs[i], Token: t, Digest: d[:]}
		}
		e.logf("generated %d %s CSRs with Istio's util.GenCSR in %v (not measured)", n, key, time.Since(start).Round(time.Millisecond))
		return items, nil
	}
	steady := func(i int) (string, string) { return identity(i % e.cfg.Identities) }
	var err error
	if e.ecdsa, err = mk(e.cfg.Pool, loadgen.KeyECDSA, steady, false); err != nil {
		return err
	}
	if !e.skip("rsa") {
		if e.rsa, err = mk(e.cfg.RSAPool, loadgen.KeyRSA2048, steady, false); err != nil {
			return err
		}
	}
	if !e.skip("storm") {
		replicas := e.cfg.StormReplicas
		if e.stormItems, err = mk(e.cfg.StormServices*replicas, loadgen.KeyECDSA, func(i int) (string, string) {
			return identity(i / replicas)
		}, true); err != nil {
			return err
		}
	}
	return nil
}

// Mount paths and keys on the shared Vault.
const (
	mountPKI        = "pki"
	mountTransitRaw = "transit-raw"
	transitRawKey   = "bench"
)

// setupSystems starts Vault, the transitca daemons and the Istio CA
// servers, and checks that each answers correctly.
func (e *env) setupSystems(ctx context.Context) error {
	e.logf("starting the Vault dev server")
	v, err := peers.StartVault()
	if err != nil {
		return err
	}
	e.vault = v
	e.started = append(e.started, v.Stop)
	if err := v.SetupPKI(ctx, mountPKI); err != nil {
		return err
	}
	if err := v.SetupTransitKey(ctx, mountTransitRaw, transitRawKey); err != nil {
		return err
	}
	e.meta["vault"] = vaultVersion(ctx, v)

	for _, s := range e.catalog() {
		if !e.want(s.id) {
			continue
		}
		if s.start != nil {
			e.logf("starting %s", s.label)
			if err := s.start(ctx); err != nil {
				return fmt.Errorf("%s: %w", s.label, err)
			}
		}
		if err := s.check(ctx); err != nil {
			return fmt.Errorf("%s: answer check: %w", s.label, err)
		}
		e.systems = append(e.systems, s)
	}
	if len(e.systems) == 0 {
		return errors.New("no system selected")
	}
	return nil
}

func vaultVersion(ctx context.Context, v *peers.Vault) string {
	h, err := v.Client.Sys().HealthWithContext(ctx)
	if err != nil {
		return "unknown"
	}
	return h.Version
}

// startTransitca starts "ca serve" from binary in mode, on Vault mounts of
// its own (named after id).
func (e *env) startTransitca(ctx context.Context, id, binary, mode string) (*peers.Transitca, error) {
	t, err := peers.StartTransitcaOn(ctx, e.vault, id, peers.TransitcaConfig{
		Binary: binary, Dir: filepath.Join(e.dir, id), Mode: mode, JWKSFile: e.jwks, Issuer: tokenIssuer,
	})
	if err != nil {
		return nil, err
	}
	e.started = append(e.started, t.Stop)
	return t, nil
}

// startIstioCA runs the driver itself as Istio's CA server in a child
// process, and returns it, its target and the address of its profiles.
func (e *env) startIstioCA(mode string) (*peers.Process, loadgen.Target, string, error) {
	var none loadgen.Target
	addr, err := peers.FreeAddr()
	if err != nil {
		return nil, none, "", err
	}
	pprof, err := peers.FreeAddr()
	if err != nil {
		return nil, none, "", err
	}
	c := peers.IstioCAConfig{Dir: filepath.Join(e.dir, "istio-"+mode), Addr: addr, Mode: mode, JWKSFile: e.jwks, Issuer: tokenIssuer, PprofAddr: pprof}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, none, "", err
	}
	p, err := peers.StartProcess("istio ca "+mode, filepath.Join(c.Dir, "server.log"), nil, e.cfg.Self,
		append([]string{IstioCAServerCommand}, c.Args()...)...)
	if err != nil {
		return nil, none, "", err
	}
	e.started = append(e.started, p.Stop)
	if err := p.WaitTLS(addr, c.RootFile(), 60*time.Second); err != nil {
		return nil, none, "", err
	}
	return p, loadgen.Target{Addr: addr, RootCertFile: c.RootFile(), SAN: peers.IstiodSAN}, pprof, nil
}

// IstioCAServerCommand is the driver's hidden subcommand that serves
// Istio's CA (see peers.ServeIstioCA).
const IstioCAServerCommand = "istio-ca-server"

// machine describes the host for the report.
func machine() map[string]string {
	m := map[string]string{
		"cores": fmt.Sprint(runtime.NumCPU()),
		"go":    runtime.Version(),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int
				fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
				m["memory"] = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("nproc").Output(); err == nil {
		m["nproc"] = strings.TrimSpace(string(out))
	}
	return m
}
