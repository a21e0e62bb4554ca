package observability

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/internal/mesh"
	"github.com/transitca/transitca/internal/meshtest"
	"github.com/transitca/transitca/internal/promtest"
)

// TransitcaPlaintextFallback, loaded from alerts.yaml into a real
// Prometheus, fires within two scrape intervals of the first plaintext
// request into a STRICT namespace, naming the pair. The namespace's mode
// comes from transitca's own policy metrics (mesh.PolicyMetrics, as the
// leader runs it) reading a real kube-apiserver with Istio's CRDs; the
// traffic from the meshtest exporter's sidecars. Before the policy change
// only mTLS flows and the alert stays silent.
func TestPlaintextFallbackAlertFires(t *testing.T) {
	const scrape = 2 * time.Second
	ctx := t.Context()

	s, err := kubetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	meshtest.InstallCRDs(t, s)
	kube, err := s.AdminClient()
	if err != nil {
		t.Fatal(err)
	}
	istio := meshtest.IstioClient(t, s)
	const ns = "shop"
	for name, labels := range map[string]map[string]string{"istio-system": nil, ns: {mesh.LabelInjection: "enabled"}} {
		if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	peerAuthentication := func(name string, selector map[string]string, mode securityapi.PeerAuthentication_MutualTLS_Mode) {
		t.Helper()
		pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		if selector != nil {
			pa.Spec.Selector = &typeapi.WorkloadSelector{MatchLabels: selector}
		}
		pa.Spec.Mtls = &securityapi.PeerAuthentication_MutualTLS{Mode: mode}
		if _, err := istio.SecurityV1().PeerAuthentications(ns).Create(ctx, pa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	peerAuthentication("default", nil, securityapi.PeerAuthentication_MutualTLS_STRICT)

	// transitca's policy metrics, served as the daemon serves /metrics.
	reg := prometheus.NewRegistry()
	pm, err := mesh.NewPolicyMetrics(mesh.PolicyMetricsOptions{Kube: kube, Istio: istio, Interval: time.Second, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { pm.Run(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	web := meshtest.Workload{Namespace: ns, Name: "web", ServiceAccount: "web", App: "web", Version: "v1", Service: "web"}
	api := meshtest.Workload{Namespace: ns, Name: "api", ServiceAccount: "api", App: "api", Version: "v1", Service: "api"}
	e := meshtest.NewExporter(t)
	for _, w := range []meshtest.Workload{web, api} {
		e.Sidecar(w, w.Name+"-0").SetCertificate(time.Now().Add(23 * time.Hour))
	}
	prom := promtest.Start(t, promtest.Options{
		ScrapeConfigs: e.ScrapeConfig("istio-proxies", scrape) +
			fmt.Sprintf("  - job_name: transitca\n    scrape_interval: %s\n    static_configs:\n      - targets: [%q]\n        labels: {namespace: istio-system, pod: transitca-0}\n", scrape, ln.Addr().String()),
		RuleFiles:          []string{filepath.Join("..", "..", "deploy", "observability", "alerts.yaml")},
		EvaluationInterval: time.Second,
	})

	// mTLS only, long enough for the rule's look-back (a plaintext series
	// new since a minute ago, from a proxy scraped a minute ago).
	mtls := func(n int) {
		t.Helper()
		if err := e.Request(web, api, true, n, 200); err != nil {
			t.Fatal(err)
		}
	}
	fallback := func(as []promtest.Alert) *promtest.Alert {
		for i, a := range as {
			if a.Labels["alertname"] == "TransitcaPlaintextFallback" {
				return &as[i]
			}
		}
		return nil
	}
	warm := time.Now().Add(70 * time.Second)
	for time.Now().Before(warm) {
		mtls(5)
		time.Sleep(500 * time.Millisecond)
	}
	prom.WaitScraped(t, time.Now(), time.Minute)
	groups, err := prom.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		for _, r := range g.Rules {
			if g.Name == "transitca.mesh" && r.Health != "ok" {
				t.Errorf("rule %s: health %q: %s", r.Name, r.Health, r.LastError)
			}
		}
	}
	as, err := prom.Alerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a := fallback(as); a != nil {
		t.Fatalf("TransitcaPlaintextFallback %s with mTLS only: %v", a.State, a.Labels)
	}

	// The policy change: api accepts plaintext, and a client without a
	// proxy uses it at once.
	peerAuthentication("api-permissive", map[string]string{"app": "api"}, securityapi.PeerAuthentication_MutualTLS_PERMISSIVE)
	start := time.Now()
	if err := e.Request(meshtest.NoProxy, api, false, 3, 200); err != nil {
		t.Fatal(err)
	}
	var fired *promtest.Alert
	for fired == nil && time.Since(start) < time.Minute {
		mtls(1)
		time.Sleep(100 * time.Millisecond)
		as, err := prom.Alerts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if a := fallback(as); a != nil && a.State == "firing" {
			fired = a
		}
	}
	took := time.Since(start)
	if fired == nil {
		t.Fatalf("TransitcaPlaintextFallback did not fire within a minute of the first plaintext request")
	}
	t.Logf("TransitcaPlaintextFallback fired %s after the first plaintext request (scrape interval %s): %s", took.Round(10*time.Millisecond), scrape, fired.Annotations["summary"])
	if took > 2*scrape {
		t.Errorf("it fired after %s, more than two scrape intervals (%s)", took.Round(10*time.Millisecond), 2*scrape)
	}
	want := map[string]string{"destination_workload_namespace": ns, "destination_workload": "api", "source_workload_namespace": "unknown", "source_workload": "unknown", "severity": "critical"}
	for k, v := range want {
		if fired.Labels[k] != v {
			t.Errorf("alert label %s=%q, want %q (labels %v)", k, fired.Labels[k], v, fired.Labels)
		}
	}
	if s := fired.Annotations["summary"]; !strings.Contains(s, "plaintext into shop/api from unknown/unknown") {
		t.Errorf("summary %q", s)
	}
}
