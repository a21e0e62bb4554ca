package observability

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/daemon"
	"github.com/transitca/transitca/internal/daemontest"
	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/internal/mesh"
	"github.com/transitca/transitca/internal/meshtest"
	"github.com/transitca/transitca/issuer"
)

var (
	exportedOnce  sync.Once
	exportedNames map[string]bool
	exportedErr   string
)

// exported returns the names of every series name the daemon exports, once
// per test binary. See scrapeDaemon.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	exportedOnce.Do(func() {
		// The first caller's t owns the daemon and the API server; they
		// stop when it ends, and the names are kept.
		exportedNames = scrapeDaemon(t)
		if exportedNames == nil {
			exportedErr = "scraping the daemon failed (see the first test's log)"
		}
	})
	if exportedErr != "" {
		t.Fatal(exportedErr)
	}
	return exportedNames
}

// scrapeDaemon starts a dev daemon in process, pointed at a real
// kube-apiserver as the transitca service account under the shipped RBAC
// (so the Kubernetes metrics are registered), issues one certificate,
// has a few requests denied (beyond the per-peer rate, so denials are also
// aggregated), scrapes /metrics and returns every series name in it: a
// histogram or summary family name expands to its _bucket, _sum and
// _count series.
//
// A dev daemon signs with local keys and makes no Vault calls, so the
// Vault latency histogram has no series in that scrape; its names come
// from the daemon's own metrics type observing one Vault call, which is
// what the daemon wires to its Transit client.
func scrapeDaemon(t *testing.T) map[string]bool {
	t.Helper()
	srv, err := kubetest.Start()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(srv.Stop)
	env := kubetest.NewOn(t, srv)
	env.Apply(t, kubetest.RBACManifests()...)
	// Istio's CRDs, so that the leader exports the mesh's policy.
	meshtest.InstallCRDs(t, srv)
	system := &kubetest.Env{Server: srv, Client: env.Client, Namespace: "istio-system"}

	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dev = true
	cfg.DataDir = t.TempDir()
	cfg.Server.Listen, cfg.Server.MetricsListen, cfg.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Kubernetes.Kubeconfig = system.ServiceAccountKubeconfig(t, "transitca")
	cfg.Limits.DenialsPerPeerPerSecond, cfg.Limits.DenialBurst = 0.001, 1
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d, _ := daemontest.Start(t, cfg)

	minter, err := daemon.DevMinter(context.Background(), issuer.NewLocalKeys(filepath.Join(cfg.DataDir, "dev-keys")))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := minter.Mint("shop", "web", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := createCertificate(d, tok); err != nil {
		t.Fatalf("CreateCertificate with a dev token: %v", err)
	}
	for range 3 {
		if err := createCertificate(d, "not-a-token"); err == nil {
			t.Fatal("CreateCertificate with a bad token succeeded")
		}
	}

	// The mesh policy's series appear once the leader has read it.
	deadline := time.Now().Add(time.Minute)
	fams := scrape(t, "http://"+d.MetricsAddr()+"/metrics")
	for len(fams[mesh.MetricMTLSMode].GetMetric()) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no %s a minute after the daemon started", mesh.MetricMTLSMode)
		}
		time.Sleep(200 * time.Millisecond)
		fams = scrape(t, "http://"+d.MetricsAddr()+"/metrics")
	}
	names := gatherNames(t, fams)
	reg := prometheus.NewRegistry()
	ca.NewMetrics(reg, nil).ObserveVault("sign", time.Millisecond, nil)
	vaultFams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	vault := map[string]*dto.MetricFamily{}
	for _, f := range vaultFams {
		if f.GetName() == ca.MetricVaultDuration {
			vault[f.GetName()] = f
		}
	}
	if len(vault) != 1 {
		t.Fatalf("observing a Vault call exported no %s", ca.MetricVaultDuration)
	}
	for n := range gatherNames(t, vault) {
		names[n] = true
	}
	return names
}

// createCertificate asks the daemon for a workload certificate with tok.
func createCertificate(d *daemon.Daemon, tok string) error {
	pemRoots, err := os.ReadFile(d.RootFile())
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemRoots)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	id, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/web")
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(d.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost"})))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	_, err = pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})), ValidityDuration: 3600,
	})
	return err
}

// scrape fetches and parses a Prometheus text exposition.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", addr, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", addr, err)
	}
	return fams
}

// gatherNames returns the series names of fams.
func gatherNames(t *testing.T, fams map[string]*dto.MetricFamily) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for name, f := range fams {
		if len(f.GetMetric()) == 0 {
			continue
		}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
		default:
			names[name] = true
		}
	}
	return names
}

// istioExported returns the series names Istio's proxies export that the
// rules and the dashboard may query: those of the meshtest exporter, which
// serves Istio's standard metric families and istio-agent's certificate
// metrics with the names and labels Istio documents, for a sidecar and a
// ztunnel that carried requests and connections, and Prometheus's own up.
func istioExported(t *testing.T) map[string]bool {
	t.Helper()
	e := meshtest.NewExporter(t)
	web := meshtest.Workload{Namespace: "shop", Name: "web", ServiceAccount: "web", App: "web", Version: "v1", Service: "web"}
	api := meshtest.Workload{Namespace: "shop", Name: "api", ServiceAccount: "api", App: "api", Version: "v1", Service: "api"}
	db := meshtest.Workload{Namespace: "data", Name: "db", ServiceAccount: "db", App: "db", Version: "v1", Service: "db"}
	e.Sidecar(web, "web-0").SetCertificate(time.Now().Add(time.Hour))
	p := e.Sidecar(api, "api-0")
	p.SetCertificate(time.Now().Add(time.Hour))
	p.FailCSR(1)
	e.Ztunnel("node-a", db)
	for _, err := range []error{
		e.Request(web, api, true, 1, 200), e.Request(meshtest.NoProxy, api, false, 1, 200),
		e.Connection(web, db, true, 1), e.Connection(meshtest.NoProxy, db, false, 1),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	names := map[string]bool{"up": true}
	for _, px := range e.Proxies() {
		for n := range gatherNames(t, scrape(t, e.URL+px.Path)) {
			names[n] = true
		}
	}
	return names
}
