package inproc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/test/bench/internal/peers"
	"github.com/transitca/transitca/test/bench/loadgen"
)

var (
	flagMode    = flag.String("inproc.mode", "memory", "intermediate mode: memory or vault")
	flagClients = flag.Int("inproc.clients", 32, "simulated agents")
	flagNoSync  = flag.Bool("inproc.nosync", false, "turn fsync off in the issuance log (diagnosis only)")
	flagProfile = flag.String("inproc.cpuprofile", "", "write a CPU profile of the measured requests only (not the setup) to this file")
)

// setup is shared by every call of the benchmark function.
var setup struct {
	once   sync.Once
	err    error
	vault  *peers.Vault
	daemon *Daemon
	items  []loadgen.Request
	dir    string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if setup.daemon != nil {
		setup.daemon.Stop()
	}
	if setup.vault != nil {
		setup.vault.Stop()
	}
	if setup.dir != "" {
		_ = os.RemoveAll(setup.dir)
	}
	os.Exit(code)
}

func start(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "transitca-inproc-")
	if err != nil {
		return err
	}
	setup.dir = dir
	v, err := peers.StartVault()
	if err != nil {
		return err
	}
	setup.vault = v
	if err := v.Mount(ctx, "transit", "transit", nil); err != nil {
		return err
	}
	if err := v.MountKV(ctx, "kv"); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	const iss = "https://kubernetes.default.svc.cluster.local"
	minter, err := ca.NewTokenMinter(key, "k1", iss)
	if err != nil {
		return err
	}
	jwks, _ := json.Marshal(minter.JWKS())
	jwksFile := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
		return err
	}
	const n = 4096
	id := func(i int) (string, string) { return fmt.Sprintf("ns-%03d", i%250/10), fmt.Sprintf("svc-%d", i%10) }
	csrs, err := loadgen.GenerateCSRs(n, loadgen.KeyECDSA, func(i int) string {
		ns, sa := id(i)
		return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa
	})
	if err != nil {
		return err
	}
	for i, csr := range csrs {
		ns, sa := id(i)
		tok, err := minter.Mint(ns, sa, []string{ca.DefaultAudience}, 4*time.Hour)
		if err != nil {
			return err
		}
		setup.items = append(setup.items, loadgen.Request{CSR: csr, Token: tok, TTL: 24 * time.Hour})
	}
	setup.daemon, err = Start(ctx, Options{
		Mode: *flagMode, Dir: filepath.Join(dir, "data"),
		VaultAddr: v.Server.Addr, VaultToken: v.Server.RootToken, TransitMount: "transit", KVMount: "kv",
		JWKSFile: jwksFile, Issuer: iss, NoSync: *flagNoSync,
	})
	return err
}

// BenchmarkCreateCertificate drives the in-process service with the load
// generator, b.N requests from -inproc.clients agents over gRPC/TLS. For a
// profile of the requests alone:
//
//	go test -run '^$' -bench CreateCertificate -benchtime 30000x \
//	    ./internal/inproc -inproc.cpuprofile cpu.out
//	go tool pprof -top cpu.out
func BenchmarkCreateCertificate(b *testing.B) {
	ctx := context.Background()
	setup.once.Do(func() { setup.err = start(ctx) })
	if setup.err != nil {
		b.Fatal(setup.err)
	}
	t := loadgen.Target{Addr: setup.daemon.Addr, RootCertFile: setup.daemon.RootFile, SAN: "localhost"}
	clients := make([]pb.IstioCertificateServiceClient, *flagClients)
	for w := range clients {
		conn, err := loadgen.Dial(t)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		clients[w] = pb.NewIstioCertificateServiceClient(conn)
	}
	op := func(ctx context.Context, w, i int) error {
		_, err := loadgen.CreateCertificate(ctx, clients[w], "", setup.items[i%len(setup.items)])
		return err
	}
	// Connect and warm up before the clock and the profile start.
	loadgen.ClosedLoop(ctx, *flagClients, loadgen.Options{Warmup: time.Second, Duration: time.Nanosecond}, op)
	profiling := *flagProfile != "" && b.N > 1
	if profiling {
		f, err := os.Create(*flagProfile)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
	}
	before := setup.daemon.Log.Stats()
	b.ResetTimer()
	res := loadgen.ClosedLoop(ctx, *flagClients, loadgen.Options{Duration: time.Hour, MaxRequests: b.N}, op)
	b.StopTimer()
	if profiling {
		pprof.StopCPUProfile()
	}
	if res.ErrorCount() > 0 {
		b.Fatalf("errors: %s", res.ErrorString())
	}
	after := setup.daemon.Log.Stats()
	if c := after.Commits - before.Commits; c > 0 {
		b.ReportMetric(float64(after.Size-before.Size)/float64(c), "entries/commit")
		b.ReportMetric(float64(c)/res.Window.Seconds(), "commits/s")
	}
	b.ReportMetric(res.Throughput(), "issued/s")
	b.ReportMetric(float64(res.Latency.P50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(res.Latency.P99.Microseconds())/1000, "p99-ms")
}

var flagMemProfile = flag.String("inproc.memprofile", "", "BenchmarkStorm: write a heap profile, taken while every workload's connection is still open, to this file")

// BenchmarkStorm starts b.N workloads within a second, each with its own
// connection and one request, and keeps the connections open until all
// have their certificates, as in the benchmark's restart storm. With
// -inproc.memprofile it writes a heap profile at that moment:
//
//	go test -run '^$' -bench Storm -benchtime 5000x ./internal/inproc \
//	    -inproc.memprofile heap.out
//	go tool pprof -sample_index=inuse_space -top heap.out
func BenchmarkStorm(b *testing.B) {
	ctx := context.Background()
	setup.once.Do(func() { setup.err = start(ctx) })
	if setup.err != nil {
		b.Fatal(setup.err)
	}
	if b.N == 1 {
		return
	}
	t := loadgen.Target{Addr: setup.daemon.Addr, RootCertFile: setup.daemon.RootFile, SAN: "localhost"}
	var (
		mu    sync.Mutex
		conns []io.Closer
	)
	op := func(ctx context.Context, i int) (io.Closer, error) {
		conn, err := loadgen.Dial(t)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		conns = append(conns, conn)
		mu.Unlock()
		_, err = loadgen.CreateCertificate(ctx, pb.NewIstioCertificateServiceClient(conn), "", setup.items[i%len(setup.items)])
		return nil, err
	}
	b.ResetTimer()
	res := loadgen.Storm(ctx, b.N, time.Second, loadgen.Options{RequestTimeout: time.Minute}, op)
	b.StopTimer()
	if *flagMemProfile != "" {
		runtime.GC()
		f, err := os.Create(*flagMemProfile)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	if res.ErrorCount() > 0 {
		b.Fatalf("errors: %s", (&loadgen.Result{Errors: res.Errors}).ErrorString())
	}
	b.ReportMetric(res.Makespan.Seconds(), "makespan-s")
	b.ReportMetric(res.Per1000().Seconds(), "s/1000")
}

var (
	flagRate     = flag.Float64("inproc.rate", 1000, "BenchmarkOpenLoop: requests per second")
	flagDuration = flag.Duration("inproc.duration", 8*time.Second, "BenchmarkOpenLoop: measured window")
)

// BenchmarkOpenLoop sends -inproc.rate requests a second for
// -inproc.duration (after 2s of warm-up), whatever the answers, and reports
// latency from each request's intended send time. b.N is ignored: run it
// with -benchtime 1x.
//
//	go test -run '^$' -bench OpenLoop -benchtime 1x ./internal/inproc -inproc.rate 1400
func BenchmarkOpenLoop(b *testing.B) {
	ctx := context.Background()
	setup.once.Do(func() { setup.err = start(ctx) })
	if setup.err != nil {
		b.Fatal(setup.err)
	}
	t := loadgen.Target{Addr: setup.daemon.Addr, RootCertFile: setup.daemon.RootFile, SAN: "localhost"}
	clients := make([]pb.IstioCertificateServiceClient, *flagClients)
	for w := range clients {
		conn, err := loadgen.Dial(t)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		clients[w] = pb.NewIstioCertificateServiceClient(conn)
	}
	op := func(ctx context.Context, w, i int) error {
		_, err := loadgen.CreateCertificate(ctx, clients[w], "", setup.items[i%len(setup.items)])
		return err
	}
	before := setup.daemon.Log.Stats()
	b.ResetTimer()
	res := loadgen.OpenLoop(ctx, *flagRate, *flagClients, 8192, loadgen.Options{Warmup: 2 * time.Second, Duration: *flagDuration}, op)
	b.StopTimer()
	after := setup.daemon.Log.Stats()
	if res.ErrorCount() > 0 {
		b.Fatalf("errors: %s", res.ErrorString())
	}
	if c := after.Commits - before.Commits; c > 0 {
		b.ReportMetric(float64(after.Size-before.Size)/float64(c), "entries/commit")
	}
	b.ReportMetric(res.Throughput(), "issued/s")
	b.ReportMetric(float64(res.Latency.P50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(res.Latency.P99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(res.Latency.P999.Microseconds())/1000, "p99.9-ms")
}
