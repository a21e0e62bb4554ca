// Command loadgen drives a running CA that speaks Istio's
// IstioCertificateService the way a fleet of istio-agents does, and prints
// throughput, latency percentiles, errors by gRPC code and, given the
// daemon's pid, its CPU seconds and peak memory per 1,000 issuances.
//
// Against a dev CA:
//
//	ca serve --dev &
//	ca token --dev --namespace default --service-account web > token.jwt
//	go run ./cmd/loadgen -addr 127.0.0.1:15012 -root-cert transitca-dev-data/root-cert.pem \
//	    -token-file token.jwt -clients 32 -duration 10s -pid $(pgrep -n ca)
//
// CSRs (fresh keys, Istio's util.GenCSR, for the token's identity) are
// generated before the clock starts: key generation is the workload's
// work, not the CA's. The measured window is bounded by -duration and
// -max-requests; requests go to the address given (use loopback).
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/test/bench/loadgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		t           loadgen.Target
		tokenFile   = fs.String("token-file", "", "service-account token sent as the bearer token")
		trustDomain = fs.String("trust-domain", "cluster.local", "trust domain of the token's SPIFFE ID")
		mode        = fs.String("mode", "closed", "closed (fixed concurrency) or open (fixed rate)")
		clients     = fs.Int("clients", 32, "simulated agents: concurrent connections")
		rate        = fs.Float64("rate", 1000, "open loop: requests per second")
		maxInFlight = fs.Int("max-in-flight", 8192, "open loop: requests waiting for answers at most")
		warmup      = fs.Duration("warmup", 2*time.Second, "load before the measured window")
		duration    = fs.Duration("duration", 10*time.Second, "measured window")
		maxRequests = fs.Int("max-requests", 0, "closed loop: end the window after this many requests (0: no limit)")
		keyType     = fs.String("key", string(loadgen.KeyECDSA), "workload key: ecdsa-p256 or rsa-2048")
		csrs        = fs.Int("csrs", 4096, "CSRs generated before timing, cycled")
		ttl         = fs.Duration("ttl", 24*time.Hour, "requested validity (istio-agent's SECRET_TTL)")
		pid         = fs.Int("pid", 0, "the CA daemon's pid, to report its CPU time and peak memory")
		quiet       = fs.Bool("quiet", false, "no progress line")
	)
	fs.StringVar(&t.Addr, "addr", "127.0.0.1:15012", "CA address")
	fs.StringVar(&t.RootCertFile, "root-cert", "", "root bundle the CA's serving certificate chains to")
	fs.StringVar(&t.SAN, "san", "localhost", "name on the CA's serving certificate")
	fs.StringVar(&t.ClusterID, "cluster-id", "Kubernetes", "clusterid header")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tokenFile == "" || t.RootCertFile == "" {
		return errors.New("-token-file and -root-cert are required")
	}
	tokenBytes, err := os.ReadFile(*tokenFile)
	if err != nil {
		return err
	}
	token := strings.TrimSpace(string(tokenBytes))
	id, err := spiffeIDOf(token, *trustDomain)
	if err != nil {
		return err
	}
	key := loadgen.KeyType(*keyType)
	if key != loadgen.KeyECDSA && key != loadgen.KeyRSA2048 {
		return fmt.Errorf("-key %q: want %s or %s", *keyType, loadgen.KeyECDSA, loadgen.KeyRSA2048)
	}
	start := time.Now()
	pool, err := loadgen.GenerateCSRs(*csrs, key, func(int) string { return id })
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "generated %d %s CSRs for %s in %v (not measured)\n", *csrs, key, id, time.Since(start).Round(time.Millisecond))

	conns := make([]*grpc.ClientConn, *clients)
	stubs := make([]pb.IstioCertificateServiceClient, *clients)
	for i := range conns {
		if conns[i], err = loadgen.Dial(t); err != nil {
			return err
		}
		defer conns[i].Close()
		stubs[i] = pb.NewIstioCertificateServiceClient(conns[i])
	}
	op := func(ctx context.Context, w, i int) error {
		_, err := loadgen.CreateCertificate(ctx, stubs[w], t.ClusterID, loadgen.Request{CSR: pool[i%len(pool)], Token: token, TTL: *ttl})
		return err
	}
	o := loadgen.Options{Name: *mode, Warmup: *warmup, Duration: *duration, MaxRequests: *maxRequests}
	if !*quiet {
		o.Progress = stderr
	}
	o.FirstError = func(err error) { fmt.Fprintln(stderr, "first error:", err) }
	o.Watch = append(o.Watch, loadgen.Proc{Name: "loadgen", PID: os.Getpid()})
	if *pid > 0 {
		o.Watch = append(o.Watch, loadgen.Proc{Name: "daemon", PID: *pid})
	}
	var res *loadgen.Result
	switch *mode {
	case "closed":
		res = loadgen.ClosedLoop(ctx, *clients, o, op)
	case "open":
		res = loadgen.OpenLoop(ctx, *rate, *clients, *maxInFlight, o, op)
	default:
		return fmt.Errorf("-mode %q: want closed or open", *mode)
	}
	printResult(stdout, res)
	return nil
}

func printResult(w io.Writer, r *loadgen.Result) {
	l := r.Latency
	load := fmt.Sprintf("%d clients", r.Workers)
	if r.Mode == "open" {
		load = fmt.Sprintf("%.0f/s offered over %d connections; latency from the intended send time", r.TargetRate, r.Workers)
	}
	fmt.Fprintf(w, "%s loop, %s, %v measured\n", r.Mode, load, r.Window.Round(time.Millisecond))
	fmt.Fprintf(w, "  issued      %d (%.0f/s)\n", r.OK, r.Throughput())
	fmt.Fprintf(w, "  errors      %s\n", r.ErrorString())
	fmt.Fprintf(w, "  latency     p50 %v  p90 %v  p99 %v  p99.9 %v  max %v\n", l.P50, l.P90, l.P99, l.P999, l.Max)
	for _, p := range r.Procs {
		if p.Err != nil {
			fmt.Fprintf(w, "  %-10s  %v\n", p.Name, p.Err)
			continue
		}
		peak := fmt.Sprintf("%.1f MB", float64(p.PeakRSS)/(1<<20))
		if !p.PeakExact {
			peak += " (lifetime peak)"
		}
		peak += fmt.Sprintf("; sampled peaks: anonymous %.1f MB, file-backed %.1f MB", float64(p.PeakAnon)/(1<<20), float64(p.PeakFile)/(1<<20))
		fmt.Fprintf(w, "  %-10s  CPU %.3f s per 1,000 issued (%.2f s in all), peak RSS %s\n", p.Name, p.CPUPer1000(r.OK).Seconds(), p.CPU.Seconds(), peak)
	}
}

// spiffeIDOf reads (without verifying: the CA does that) the namespace and
// service account of a projected service-account token.
func spiffeIDOf(token, trustDomain string) (string, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", errors.New("token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", fmt.Errorf("token payload: %w", err)
	}
	var claims struct {
		Kubernetes struct {
			Namespace      string `json:"namespace"`
			ServiceAccount struct {
				Name string `json:"name"`
			} `json:"serviceaccount"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", fmt.Errorf("token claims: %w", err)
	}
	k := claims.Kubernetes
	if k.Namespace == "" || k.ServiceAccount.Name == "" {
		return "", errors.New("token has no kubernetes.io namespace and service account")
	}
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, k.Namespace, k.ServiceAccount.Name), nil
}
