// Package kubestorm is the Kubernetes restart storm: transitca checking
// every workload's token with TokenReview against a real kube-apiserver
// (internal/kubetest), as it does in a cluster.
//
// Before the clock starts, Run starts the API server and etcd, creates the
// shipped RBAC (deploy/rbac) and, for services × replicas pods spread over
// a few nodes, their namespaces and service accounts, the pods, and one
// token per pod minted with the TokenRequest API (audience istio-ca, bound
// to the pod, as the kubelet projects it); it generates each workload's
// CSR with a fresh key, and starts "ca serve" (memory mode, as a child
// process) with a kubeconfig that acts as the shipped service account
// istio-system/transitca, so that its RBAC is exactly what ships.
//
// Then all workloads start, evenly spread over Options.Spread, each with
// its own connection (TCP, TLS), its own token and CSR, keeping the
// connection open; nothing is retried. Run measures the time from the first
// start until the last certificate, errors by gRPC code, each workload's
// latency, the daemon's CPU and peak memory, and the TokenReviews sent:
// the API server's count (apiserver_request_total for tokenreviews,
// create) and the daemon's own (transitca_tokenreview_requests_total).
// Every certificate issued is checked to name its pod's service account.
package kubestorm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/test/bench/internal/peers"
	"github.com/transitca/transitca/test/bench/loadgen"
)

// Options configure a run. Zero values take the defaults named.
type Options struct {
	// CABinary is the ca binary; empty builds it into Dir.
	CABinary string
	// Dir holds the binary, the daemon's configuration, data and log;
	// empty is a temporary directory removed at the end.
	Dir string
	// Services and Replicas shape the mesh: Services × Replicas pods.
	// Defaults 500 and 20.
	Services, Replicas int
	// Nodes is how many nodes the pods are spread over. Default 4.
	Nodes int
	// Spread is the window the workloads' starts are spread over.
	// Default 1s.
	Spread time.Duration
	// RequestTimeout bounds each workload's request. Default 60s.
	RequestTimeout time.Duration
	// Log receives a line per setup step and the result; nil is silent.
	Log io.Writer
	// Progress receives the storm's progress lines; nil is silent.
	Progress io.Writer
	// CPUProfile, when set, is a file to write the daemon's CPU profile
	// to, taken from the first storm's start for ProfileDuration.
	CPUProfile string
	// ProfileDuration is how long the CPU profile runs. Default 15s.
	ProfileDuration time.Duration
	// JWKS checks the tokens offline against the API server's service
	// account keys (/openid/v1/jwks) instead of by TokenReview, without
	// the Kubernetes features: the same storm without the API server in
	// the request path, for comparison.
	JWKS bool
	// MaxInFlight, when set, is the daemon's limits.max_in_flight (default
	// 1024): a storm that outruns the machine holds more requests than
	// that at once, and the excess is refused with ResourceExhausted.
	MaxInFlight int
	// Rounds is how many storms run, each against a fresh daemon (so that
	// none finds the tokens in its cache) and after the API server's own
	// cache of authenticated tokens (10s) has expired. Default 1.
	Rounds int
}

func (o *Options) defaults() {
	if o.Services <= 0 {
		o.Services = 500
	}
	if o.Replicas <= 0 {
		o.Replicas = 20
	}
	if o.Nodes <= 0 {
		o.Nodes = 4
	}
	if o.Spread <= 0 {
		o.Spread = time.Second
	}
	if o.Rounds <= 0 {
		o.Rounds = 1
	}
	if o.ProfileDuration <= 0 {
		o.ProfileDuration = 15 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 60 * time.Second
	}
}

// Result is what a run measured.
type Result struct {
	// Rounds are the storms, one per round, each against a fresh daemon.
	Rounds []*Round
	// Tokens is the number of distinct tokens the workloads presented.
	Tokens int
	// Setup is how long everything before the first storm took.
	Setup time.Duration
}

// Round is what one storm measured.
type Round struct {
	// Storm is the storm itself: workloads, makespan, errors by code,
	// latency per workload, and the cost of the daemon ("transitca"),
	// the API server, etcd and the load generator.
	Storm *loadgen.StormResult
	// APIServerReviews is how many TokenReviews the API server counted
	// during the storm.
	APIServerReviews float64
	// APIServerThrottled is how many of those the API server refused
	// with 429 (its priority and fairness).
	APIServerThrottled float64
	// DaemonReviews is how many TokenReviews the daemon counted sending
	// during the storm; -1 if the daemon does not export the counter.
	DaemonReviews float64
	// Overload is how many requests the daemon refused at once because
	// limits.max_in_flight requests were in progress (ResourceExhausted).
	Overload float64
	// Checked is how many issued certificates were checked to name their
	// pod's service account (all that were issued).
	Checked int
}

// Per10000 is the makespan per 10,000 workloads.
func (r *Round) Per10000() time.Duration {
	return time.Duration(float64(r.Storm.Per1000()) * 10)
}

// String is the round on one line.
func (r *Round) String() string {
	s := r.Storm
	var errs []string
	for _, k := range slices.Sorted(maps.Keys(s.Errors)) {
		errs = append(errs, fmt.Sprintf("%s=%d", k, s.Errors[k]))
	}
	errText := "0"
	if len(errs) > 0 {
		errText = strings.Join(errs, ", ")
	}
	line := fmt.Sprintf("%d workloads: last certificate after %v (%v per 10,000), errors %s (max_in_flight refusals %.0f), p50 %v p99 %v; TokenReviews: api server %.0f (429: %.0f), daemon %.0f; checked %d certificates",
		s.Workloads, s.Makespan.Round(time.Millisecond), r.Per10000().Round(time.Millisecond), errText, r.Overload,
		s.Latency.P50.Round(time.Millisecond), s.Latency.P99.Round(time.Millisecond),
		r.APIServerReviews, r.APIServerThrottled, r.DaemonReviews, r.Checked)
	for _, p := range s.Procs {
		line += fmt.Sprintf("; %s CPU %v peak RSS %d MB", p.Name, p.CPU.Round(10*time.Millisecond), p.PeakRSS>>20)
	}
	return line
}

// Median is the round with the median makespan (the lower middle one for
// an even count).
func (r *Result) Median() *Round {
	rs := slices.Clone(r.Rounds)
	slices.SortFunc(rs, func(a, b *Round) int { return cmp.Compare(a.Storm.Makespan, b.Storm.Makespan) })
	return rs[(len(rs)-1)/2]
}

// String is the result: the median round, and each round's makespan.
func (r *Result) String() string {
	var per []string
	for _, rd := range r.Rounds {
		per = append(per, rd.Storm.Makespan.Round(time.Millisecond).String())
	}
	return fmt.Sprintf("%d tokens; median of %d rounds: %s; per round %s", r.Tokens, len(r.Rounds), r.Median(), strings.Join(per, ", "))
}

// run is one run's state: what to stop at the end.
type run struct {
	opts     Options
	dir      string
	cleanup  []func()
	vault    *peers.Vault
	profiled bool // the CPU profile has been taken
}

func (r *run) logf(format string, args ...any) {
	if r.opts.Log != nil {
		fmt.Fprintf(r.opts.Log, format+"\n", args...)
	}
}

// Run sets up the cluster, the workloads and the daemon, runs the storm
// and stops everything it started.
func Run(ctx context.Context, opts Options) (*Result, error) {
	opts.defaults()
	r := &run{opts: opts}
	defer func() {
		for i := len(r.cleanup) - 1; i >= 0; i-- {
			r.cleanup[i]()
		}
	}()
	return r.run(ctx)
}

func (r *run) run(ctx context.Context) (*Result, error) {
	began := time.Now()
	if err := r.workDir(); err != nil {
		return nil, err
	}
	bin, err := r.binary(ctx)
	if err != nil {
		return nil, err
	}
	r.logf("starting kube-apiserver %s and etcd %s", kubetest.Version, kubetest.EtcdVersion)
	srv, err := kubetest.Start()
	if err != nil {
		return nil, err
	}
	r.cleanup = append(r.cleanup, srv.Stop)
	admin, err := srv.AdminClient()
	if err != nil {
		return nil, err
	}
	var auth peers.TransitcaConfig
	if r.opts.JWKS {
		auth.JWKSFile, auth.Issuer = filepath.Join(r.dir, "jwks.json"), kubetest.Issuer
		err = writeJWKS(ctx, srv, auth.JWKSFile)
	} else {
		auth.Kubeconfig = filepath.Join(r.dir, "transitca.kubeconfig")
		err = daemonKubeconfig(ctx, srv, admin, auth.Kubeconfig, 4*time.Hour)
	}
	if err != nil {
		return nil, err
	}
	ws := layout(r.opts.Services, r.opts.Replicas)
	// The probe is pod 0 with a token of its own, so that the storm's
	// tokens are all new to the daemon.
	probe := *ws[0]
	ws = append(ws, &probe)
	step := time.Now()
	if err := populate(ctx, admin, ws[:len(ws)-1], r.opts.Nodes, 4*time.Hour); err != nil {
		return nil, err
	}
	if err := retoken(ctx, admin, &probe); err != nil {
		return nil, err
	}
	r.logf("created %d pods of %d services in %d namespaces and minted their tokens in %v",
		len(ws)-1, r.opts.Services, (r.opts.Services+servicesPerNamespace-1)/servicesPerNamespace, time.Since(step).Round(time.Millisecond))
	step = time.Now()
	if err := makeCSRs(ws); err != nil {
		return nil, err
	}
	r.logf("generated %d ECDSA P-256 CSRs in %v", len(ws), time.Since(step).Round(time.Millisecond))
	res := &Result{Tokens: distinctTokens(ws[:len(ws)-1]), Setup: time.Since(began)}
	for round := range r.opts.Rounds {
		if round > 0 {
			// Let the API server's cache of authenticated tokens expire.
			time.Sleep(apiServerTokenCache)
		}
		rd, err := r.round(ctx, round, srv, bin, auth, ws[:len(ws)-1], &probe)
		if err != nil {
			return nil, err
		}
		r.logf("round %d: %s", round+1, rd)
		res.Rounds = append(res.Rounds, rd)
	}
	r.logf("%s", res)
	return res, nil
}

// apiServerTokenCache is how long kube-apiserver caches a token it
// authenticated.
const apiServerTokenCache = 11 * time.Second

// round starts a fresh daemon, checks it with the probe and runs one
// storm against it.
func (r *run) round(ctx context.Context, round int, srv *kubetest.Server, bin string, auth peers.TransitcaConfig, ws []*workload, probe *workload) (*Round, error) {
	d, err := r.startDaemon(ctx, round, bin, auth)
	if err != nil {
		return nil, err
	}
	defer d.proc.Stop()
	if err := d.probe(ctx, probe); err != nil {
		return nil, fmt.Errorf("probe request: %w\n%s", err, d.proc.Tail(4000))
	}
	return r.storm(ctx, srv, d, ws)
}

func (r *run) workDir() error {
	r.dir = r.opts.Dir
	if r.dir == "" {
		d, err := os.MkdirTemp("", "transitca-kubestorm-")
		if err != nil {
			return err
		}
		r.dir = d
		r.cleanup = append(r.cleanup, func() { _ = os.RemoveAll(d) })
	}
	return os.MkdirAll(r.dir, 0o700)
}

// binary returns Options.CABinary, or builds cmd/ca in the daemon's own
// module (found through this module's replace directive).
func (r *run) binary(ctx context.Context) (string, error) {
	if r.opts.CABinary != "" {
		return r.opts.CABinary, nil
	}
	root, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/transitca/transitca").Output()
	if err != nil {
		return "", fmt.Errorf("find the transitca module: %w", err)
	}
	bin := filepath.Join(r.dir, "ca")
	r.logf("building the ca binary")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/ca")
	build.Dir = strings.TrimSpace(string(root))
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build ca: %w\n%s", err, out)
	}
	return bin, nil
}

// makeCSRs generates each workload's CSR, with a fresh key, for its SPIFFE
// ID.
func makeCSRs(ws []*workload) error {
	csrs, err := loadgen.GenerateCSRs(len(ws), loadgen.KeyECDSA, func(i int) string { return ws[i].spiffeID(trustDomain) })
	if err != nil {
		return err
	}
	for i, w := range ws {
		w.csr = csrs[i]
	}
	return nil
}

// ErrCertificate is wrapped by the error of a storm whose certificates do
// not name their workloads' identities.
var ErrCertificate = errors.New("a certificate does not name its workload's identity")
