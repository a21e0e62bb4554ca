package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/internal/mesh"
	"github.com/transitca/transitca/internal/meshtest"
	"github.com/transitca/transitca/internal/promtest"
)

// testMesh is a cluster of namespaces with Istio's CRDs, the issuance log
// of their certificates, and a real Prometheus scraping their proxies'
// telemetry from a meshtest exporter.
type testMesh struct {
	t          *testing.T
	kube       kubernetes.Interface
	istio      istioclient.Interface
	kubeconfig string
	db         string
	exporter   *meshtest.Exporter
	prom       *promtest.Server
}

// The six namespaces of the test mesh and their workloads.
var (
	meshStrict     = "enc-strict"     // STRICT, every workload certified, mTLS only
	meshPermissive = "enc-permissive" // PERMISSIVE (mesh-wide), mTLS only
	meshLeaky      = "enc-leaky"      // PERMISSIVE, one plaintext client
	meshStrictDR   = "enc-strict-dr"  // STRICT, a DestinationRule disables mTLS to reports
	meshAmbient    = "enc-ambient"    // ambient, STRICT
	meshLegacy     = "enc-legacy"     // not in the mesh

	wWeb      = meshtest.Workload{Namespace: meshStrict, Name: "web", ServiceAccount: "web", App: "web", Version: "v1", Service: "web"}
	wAPI      = meshtest.Workload{Namespace: meshStrict, Name: "api", ServiceAccount: "api", App: "api", Version: "v1", Service: "api"}
	wFrontend = meshtest.Workload{Namespace: meshPermissive, Name: "frontend", ServiceAccount: "frontend", App: "frontend", Version: "v1", Service: "frontend"}
	wCart     = meshtest.Workload{Namespace: meshPermissive, Name: "cart", ServiceAccount: "cart", App: "cart", Version: "v1", Service: "cart"}
	wShop     = meshtest.Workload{Namespace: meshLeaky, Name: "shop", ServiceAccount: "shop", App: "shop", Version: "v1", Service: "shop"}
	wReports  = meshtest.Workload{Namespace: meshStrictDR, Name: "reports", ServiceAccount: "reports", App: "reports", Version: "v1", Service: "reports"}
	wLedger   = meshtest.Workload{Namespace: meshStrictDR, Name: "ledger", ServiceAccount: "ledger", App: "ledger", Version: "v1", Service: "ledger"}
	wRatings  = meshtest.Workload{Namespace: meshAmbient, Name: "ratings", ServiceAccount: "ratings", App: "ratings", Version: "v1", Service: "ratings"}
	wBatch    = meshtest.Workload{Namespace: meshLegacy, Name: "batch", ServiceAccount: "batch", App: "batch", Version: "v1", Service: "batch"}
)

// newMeshCluster is a kube-apiserver with Istio's CRDs, its clients and
// a kubeconfig for ca; the caller adds namespaces, policies and pods.
func newMeshCluster(t *testing.T) *testMesh {
	t.Helper()
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
	m := &testMesh{t: t, kube: kube, istio: meshtest.IstioClient(t, s)}
	m.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := s.WriteKubeconfig(m.kubeconfig, s.AdminToken, ""); err != nil {
		t.Fatal(err)
	}
	return m
}

// newTestMesh builds the six namespaces: their labels, PeerAuthentications
// (mesh-wide PERMISSIVE in istio-system), the DestinationRule, pods, live
// certificates for every workload in the mesh, and one proxy per pod (a
// ztunnel for the ambient one), scraped every second.
func newTestMesh(t *testing.T) *testMesh {
	t.Helper()
	m := newMeshCluster(t)

	m.namespace("istio-system", nil)
	m.peerAuthentication("istio-system", "default", nil, securityapi.PeerAuthentication_MutualTLS_PERMISSIVE)
	m.namespace(meshStrict, map[string]string{mesh.LabelInjection: "enabled"})
	m.peerAuthentication(meshStrict, "default", nil, securityapi.PeerAuthentication_MutualTLS_STRICT)
	m.namespace(meshPermissive, map[string]string{mesh.LabelRevision: "stable"})
	m.namespace(meshLeaky, map[string]string{mesh.LabelInjection: "enabled"})
	m.namespace(meshStrictDR, map[string]string{mesh.LabelInjection: "enabled"})
	m.peerAuthentication(meshStrictDR, "default", nil, securityapi.PeerAuthentication_MutualTLS_STRICT)
	m.destinationRule(meshStrictDR, "reports-plain", "reports", 0)
	m.namespace(meshAmbient, map[string]string{mesh.LabelDataplaneMode: "ambient"})
	m.peerAuthentication(meshAmbient, "default", nil, securityapi.PeerAuthentication_MutualTLS_STRICT)
	m.namespace(meshLegacy, nil)

	m.exporter = meshtest.NewExporter(t)
	var certs []rolloutCert
	for _, w := range []meshtest.Workload{wWeb, wAPI, wFrontend, wCart, wShop, wReports, wLedger, wRatings, wBatch} {
		m.pod(w)
		switch w.Namespace {
		case meshLegacy:
		case meshAmbient:
			certs = append(certs, rolloutCert{w.Namespace, w.ServiceAccount, -time.Hour, 23 * time.Hour})
		default:
			m.exporter.Sidecar(w, w.Name+"-0").SetCertificate(time.Now().Add(23 * time.Hour))
			certs = append(certs, rolloutCert{w.Namespace, w.ServiceAccount, -time.Hour, 23 * time.Hour})
		}
	}
	m.exporter.Ztunnel("node-a", wRatings)
	m.db = rolloutLog(t, time.Now(), certs, [2]string{meshLegacy, "batch"})
	m.prom = promtest.Start(t, promtest.Options{ScrapeConfigs: m.exporter.ScrapeConfig("istio-proxies", time.Second)})
	m.prom.WaitScraped(t, time.Now(), time.Minute)
	return m
}

func (m *testMesh) namespace(name string, labels map[string]string) {
	m.t.Helper()
	if _, err := m.kube.CoreV1().Namespaces().Create(m.t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
}

func (m *testMesh) pod(w meshtest.Workload) {
	m.t.Helper()
	ctx := m.t.Context()
	if _, err := m.kube.CoreV1().ServiceAccounts(w.Namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: w.ServiceAccount}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		m.t.Fatal(err)
	}
	if _, err := m.kube.CoreV1().Pods(w.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: w.Name + "-0", Labels: map[string]string{"app": w.App, "version": w.Version, mesh.LabelWorkloadName: w.Name}},
		Spec: corev1.PodSpec{ServiceAccountName: w.ServiceAccount, NodeName: "node-a",
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
}

func (m *testMesh) peerAuthentication(ns, name string, selector map[string]string, mode securityapi.PeerAuthentication_MutualTLS_Mode) {
	m.t.Helper()
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if selector != nil {
		pa.Spec.Selector = &typeapi.WorkloadSelector{MatchLabels: selector}
	}
	pa.Spec.Mtls = &securityapi.PeerAuthentication_MutualTLS{Mode: mode}
	if _, err := m.istio.SecurityV1().PeerAuthentications(ns).Create(m.t.Context(), pa, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
}

// destinationRule disables mTLS to host (on port, 0: every port).
func (m *testMesh) destinationRule(ns, name, host string, port uint32) {
	m.t.Helper()
	dr := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	dr.Spec.Host = host
	disable := &networkingapi.ClientTLSSettings{Mode: networkingapi.ClientTLSSettings_DISABLE}
	if port == 0 {
		dr.Spec.TrafficPolicy = &networkingapi.TrafficPolicy{Tls: disable}
	} else {
		dr.Spec.TrafficPolicy = &networkingapi.TrafficPolicy{PortLevelSettings: []*networkingapi.TrafficPolicy_PortTrafficPolicy{
			{Port: &networkingapi.PortSelector{Number: port}, Tls: disable},
		}}
	}
	if _, err := m.istio.NetworkingV1().DestinationRules(ns).Create(m.t.Context(), dr, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
}

func (m *testMesh) must(err error) {
	m.t.Helper()
	if err != nil {
		m.t.Fatal(err)
	}
}

// period starts a traffic period: after it, the caller sends traffic;
// end waits for Prometheus to scrape it and ends the period.
func (m *testMesh) period() (from time.Time, end func() time.Time) {
	// After a scrape of what came before: the period's baseline.
	m.prom.WaitScraped(m.t, time.Now(), time.Minute)
	from = time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(from.Add(100 * time.Millisecond)))
	return from, func() time.Time {
		m.prom.WaitScraped(m.t, time.Now(), time.Minute)
		time.Sleep(time.Second)
		return time.Now()
	}
}

// report runs ca report encryption and decodes its JSON.
func (m *testMesh) report(t *testing.T, from, to time.Time, args ...string) encryptionReport {
	t.Helper()
	out, errOut, code := runCA(t, append([]string{"report", "encryption", "--db", m.db, "--kubeconfig", m.kubeconfig,
		"--prometheus", m.prom.URL, "--step", "1s", "--from", from.UTC().Format(time.RFC3339), "--to", to.UTC().Format(time.RFC3339), "-o", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var r encryptionReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return r
}

func pairsOf(n *mesh.NamespaceAssessment) []string {
	var out []string
	for _, p := range n.Plaintext {
		out = append(out, fmt.Sprintf("%s → %s: %d requests, %d connections", p.Source(), p.DestinationWorkload, p.Requests, p.Connections))
	}
	return out
}

// On a cluster of six namespaces (STRICT and encrypted; PERMISSIVE and
// clean; PERMISSIVE with one plaintext client; STRICT with a
// DestinationRule disabling mTLS to one host; ambient; not in the mesh),
// each gets its verdict, its figures are those the proxies served, and
// after a policy change lets one pair fall back to plaintext, the next
// period shows that pair.
func TestReportEncryption(t *testing.T) {
	m := newTestMesh(t)
	t.Setenv("KUBECONFIG", "")

	from, end := m.period()
	m.must(m.exporter.Request(wWeb, wAPI, true, 120, 200))
	m.must(m.exporter.Request(wFrontend, wAPI, true, 30, 200))
	m.must(m.exporter.Request(wFrontend, wCart, true, 50, 200))
	m.must(m.exporter.Connection(wFrontend, wCart, true, 4))
	m.must(m.exporter.Request(wFrontend, wShop, true, 20, 200))
	m.must(m.exporter.Request(meshtest.NoProxy, wShop, false, 7, 200))
	m.must(m.exporter.Connection(meshtest.NoProxy, wShop, false, 2))
	m.must(m.exporter.Refused(wLedger, wReports, 5))
	m.must(m.exporter.Request(wFrontend, wLedger, true, 10, 200))
	m.must(m.exporter.Connection(wFrontend, wRatings, true, 9))
	to := end()

	r := m.report(t, from, to)
	if !r.TrafficChecked || r.Traffic == nil || r.Traffic.Prometheus != m.prom.URL {
		t.Fatalf("traffic_checked %v, traffic %+v", r.TrafficChecked, r.Traffic)
	}
	if len(r.Gaps) != 0 {
		t.Errorf("gaps %+v in a period Prometheus scraped throughout", r.Gaps)
	}
	type want struct {
		verdict               mesh.Verdict
		requests, connections int64
		plaintext             []string
		reason, note          string
		readyForStrict        *bool
	}
	yes := true
	wants := map[string]want{
		meshStrict:     {verdict: mesh.Encrypted, requests: 150, reason: "STRICT for every workload and port (PeerAuthentication enc-strict/default)"},
		meshPermissive: {verdict: mesh.PermissiveClean, requests: 50, connections: 4, reason: "workload cart PERMISSIVE (PeerAuthentication istio-system/default)", readyForStrict: &yes},
		meshLeaky: {verdict: mesh.PlaintextSeen, requests: 27, connections: 2, reason: "7 plaintext requests and 2 plaintext connections from 1 source→destination pair",
			plaintext: []string{"unknown (a client without a proxy) → shop: 7 requests, 2 connections"}},
		meshStrictDR: {verdict: mesh.Encrypted, requests: 10,
			note: "DestinationRule enc-strict-dr/reports-plain disables mTLS to reports: STRICT refuses the plaintext it makes clients send"},
		meshAmbient: {verdict: mesh.Encrypted, connections: 9},
		meshLegacy:  {verdict: mesh.NotInMesh, reason: "no istio-injection=enabled, istio.io/rev or istio.io/dataplane-mode=ambient label"},
	}
	got := map[string]*mesh.NamespaceAssessment{}
	for _, n := range r.Namespaces {
		got[n.Namespace] = n
	}
	for ns, w := range wants {
		t.Run(ns, func(t *testing.T) {
			n := got[ns]
			if n == nil {
				t.Fatalf("%s is not in the report", ns)
			}
			t.Logf("%s: %s: %s %v", ns, n.Verdict, n.Reason, n.Notes)
			if n.Verdict != w.verdict {
				t.Errorf("verdict %s, want %s (reason: %s)", n.Verdict, w.verdict, n.Reason)
			}
			if n.Requests.Total() != w.requests || n.Connections.Total() != w.connections {
				t.Errorf("%d requests, %d connections; want %d, %d", n.Requests.Total(), n.Connections.Total(), w.requests, w.connections)
			}
			if p := pairsOf(n); !slices.Equal(p, w.plaintext) {
				t.Errorf("plaintext pairs %q, want %q", p, w.plaintext)
			}
			if !strings.Contains(n.Reason, w.reason) {
				t.Errorf("reason %q lacks %q", n.Reason, w.reason)
			}
			if w.note != "" && !slices.ContainsFunc(n.Notes, func(s string) bool { return strings.Contains(s, w.note) }) {
				t.Errorf("notes %q lack %q", n.Notes, w.note)
			}
			if (n.ReadyForStrict == nil) != (w.readyForStrict == nil) || (n.ReadyForStrict != nil && *n.ReadyForStrict != *w.readyForStrict) {
				t.Errorf("ready_for_strict %v, want %v", n.ReadyForStrict, w.readyForStrict)
			}
		})
	}
	if s := got[meshLeaky].MTLSShare; s == nil || fmt.Sprintf("%.4f", *s) != fmt.Sprintf("%.4f", 20.0/29) {
		t.Errorf("%s mTLS share %v, want 20/29", meshLeaky, s)
	}

	t.Run("table", func(t *testing.T) {
		out, errOut, code := runCA(t, "report", "encryption", "--db", m.db, "--kubeconfig", m.kubeconfig, "--prometheus", m.prom.URL,
			"--step", "1s", "--from", from.UTC().Format(time.RFC3339), "--to", to.UTC().Format(time.RFC3339))
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		t.Logf("ca report encryption:\n%s", out)
		rows := map[string][]string{}
		for line := range strings.Lines(out) {
			if f := strings.Fields(line); len(f) >= 8 && strings.HasPrefix(f[0], "enc-") {
				rows[f[0]] = f[1:]
			}
		}
		for ns, row := range map[string]string{
			meshStrict:     "sidecar STRICT 100.0% 150 0 0 ENCRYPTED",
			meshPermissive: "sidecar PERMISSIVE 100.0% 50 4 0 PERMISSIVE-CLEAN",
			meshLeaky:      "sidecar PERMISSIVE 69.0% 27 2 9 PLAINTEXT SEEN",
			meshStrictDR:   "sidecar STRICT 100.0% 10 0 0 ENCRYPTED",
			meshAmbient:    "ambient STRICT 100.0% 0 9 0 ENCRYPTED",
			meshLegacy:     "none - - 0 0 0 NOT IN MESH",
		} {
			if g := strings.Join(rows[ns], " "); g != row {
				t.Errorf("row %s: %q, want %q", ns, g, row)
			}
		}
		for _, want := range []string{
			"namespace enc-leaky: PLAINTEXT SEEN: 7 plaintext requests and 2 plaintext connections",
			"unknown (a client without a proxy)  shop",
			"note: DestinationRule enc-strict-dr/reports-plain disables mTLS to reports",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("table lacks %q:\n%s", want, out)
			}
		}
	})

	// The rollout report's traffic column: per service account, what its
	// workloads received; per namespace, the share and the plaintext pairs.
	t.Run("rollout", func(t *testing.T) {
		window := to.Truncate(time.Second).Add(time.Second).Sub(from).String()
		args := []string{"report", "rollout", "--db", m.db, "--kubeconfig", m.kubeconfig, "--prometheus", m.prom.URL, "--step", "1s",
			"--at", to.UTC().Add(time.Second).Format(time.RFC3339), "--window", window}
		out, errOut, code := runCA(t, append(args, "-o", "json")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var r rolloutReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		if !r.TrafficChecked {
			t.Fatal("traffic_checked = false with --prometheus")
		}
		accounts := map[string]string{}
		for _, n := range r.Namespaces {
			for _, a := range n.ServiceAccounts {
				if a.Requests != nil {
					accounts[n.Namespace+"/"+a.Name] = fmt.Sprintf("%d+%d mTLS, %d+%d plaintext",
						a.Requests.MutualTLS, a.Connections.MutualTLS, a.Requests.Plaintext, a.Connections.Plaintext)
				}
			}
			if n.Namespace == meshLeaky {
				if n.Traffic == nil || len(n.Traffic.Plaintext) != 1 || n.Traffic.Requests.Plaintext != 7 || n.Traffic.Connections.Plaintext != 2 {
					t.Errorf("%s traffic %+v, want 7 plaintext requests and 2 connections from one pair", meshLeaky, n.Traffic)
				}
			}
		}
		for k, want := range map[string]string{
			meshStrict + "/api":      "150+0 mTLS, 0+0 plaintext",
			meshLeaky + "/shop":      "20+0 mTLS, 7+2 plaintext",
			meshPermissive + "/cart": "50+4 mTLS, 0+0 plaintext",
			meshAmbient + "/ratings": "0+9 mTLS, 0+0 plaintext",
		} {
			if accounts[k] != want {
				t.Errorf("%s: %q, want %q", k, accounts[k], want)
			}
		}
		out, errOut, code = runCA(t, append(args, "--namespace", meshLeaky)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{
			"traffic: 69.0% mTLS of 27 requests and 2 connections; PLAINTEXT 9: unknown (a client without a proxy) → shop (9)",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("table lacks %q:\n%s", want, out)
			}
		}
		rows := map[string][]string{}
		for line := range strings.Lines(out) {
			if f := strings.Fields(line); len(f) >= 6 {
				rows[f[0]] = f[1:]
			}
		}
		if got := strings.Join(rows["shop"], " "); !strings.HasPrefix(got, "1 1 ") || !strings.HasSuffix(got, " 20 9") {
			t.Errorf("row shop %q, want 1 pod, 1 certificate, 20 mTLS, 9 plaintext", got)
		}
	})

	t.Run("one namespace", func(t *testing.T) {
		r := m.report(t, from, to, "--namespace", meshLeaky)
		if len(r.Namespaces) != 1 || r.Namespaces[0].Namespace != meshLeaky || r.Namespaces[0].Verdict != mesh.PlaintextSeen {
			t.Fatalf("namespaces %+v, want %s alone, PLAINTEXT SEEN", r.Namespaces, meshLeaky)
		}
	})

	t.Run("without Prometheus", func(t *testing.T) {
		out, errOut, code := runCA(t, "report", "encryption", "--db", m.db, "--kubeconfig", m.kubeconfig, "-o", "json")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if !strings.Contains(errOut, "traffic not checked") {
			t.Errorf("stderr does not say traffic was not checked: %s", errOut)
		}
		var r encryptionReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		if r.TrafficChecked || r.Traffic != nil {
			t.Errorf("traffic_checked %v, traffic %+v without --prometheus", r.TrafficChecked, r.Traffic)
		}
		for _, n := range r.Namespaces {
			if n.Namespace == meshLeaky && n.Verdict != mesh.PermissiveClean {
				t.Errorf("%s without traffic: %s, want PERMISSIVE-CLEAN (plaintext cannot be seen)", meshLeaky, n.Verdict)
			}
			if n.Namespace == meshStrict && (n.Verdict != mesh.Encrypted || !strings.Contains(n.Reason, "traffic not checked")) {
				t.Errorf("%s without traffic: %s: %s", meshStrict, n.Verdict, n.Reason)
			}
		}
	})

	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--prometheus", "prometheus:9090"}, "want the base URL"},
			{[]string{"-o", "xml"}, `-o "xml"`},
			{[]string{"--from", "yesterday"}, "--from"},
			{[]string{"--from", "now", "--to", "-1h"}, "the period is empty"},
			{[]string{"--kubeconfig", ""}, "give --kubeconfig"},
		} {
			_, errOut, code := runCA(t, append([]string{"report", "encryption", "--db", m.db, "--kubeconfig", m.kubeconfig}, tc.args...)...)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Errorf("%q: exit %d, stderr %q, want an error with %q", tc.args, code, errOut, tc.want)
			}
		}
	})

	// The fallback: api gets a workload-level PERMISSIVE policy, and a
	// DestinationRule makes its clients send plaintext; frontend's
	// requests now arrive in plaintext, and the next period shows it.
	m.peerAuthentication(meshStrict, "api-permissive", map[string]string{"app": "api"}, securityapi.PeerAuthentication_MutualTLS_PERMISSIVE)
	m.destinationRule(meshPermissive, "api-plain", wAPI.Host(), 0)
	from2, end2 := m.period()
	m.must(m.exporter.Request(wWeb, wAPI, true, 40, 200))
	m.must(m.exporter.Request(wFrontend, wAPI, false, 6, 200))
	to2 := end2()

	r = m.report(t, from2, to2, "--namespace", meshStrict)
	n := r.Namespaces[0]
	t.Logf("after the change: %s: %s", n.Verdict, n.Reason)
	if n.Verdict != mesh.PlaintextSeen {
		t.Errorf("%s after the fallback: %s, want PLAINTEXT SEEN", meshStrict, n.Verdict)
	}
	if p, w := pairsOf(n), []string{meshPermissive + "/frontend → api: 6 requests, 0 connections"}; !slices.Equal(p, w) {
		t.Errorf("plaintext pairs %q, want %q", p, w)
	}
	if n.Requests.MutualTLS != 40 || n.Requests.Plaintext != 6 {
		t.Errorf("requests %+v, want 40 mTLS and 6 plaintext", n.Requests)
	}
	for _, w := range n.Workloads {
		if w.Name == "api" && (w.Mode != mesh.ModePermissive || w.ModeFrom != meshStrict+"/api-permissive") {
			t.Errorf("api: %s from %s, want PERMISSIVE from the new workload policy", w.Mode, w.ModeFrom)
		}
	}
	if !slices.ContainsFunc(n.DisabledTLS, func(d mesh.DisabledTLS) bool { return d.DestinationRule == meshPermissive+"/api-plain" }) {
		t.Errorf("disabled TLS %+v lacks %s/api-plain", n.DisabledTLS, meshPermissive)
	}
	// The first period is unchanged by what came after.
	if r := m.report(t, from, to, "--namespace", meshStrict); r.Namespaces[0].Requests.Plaintext != 0 {
		t.Errorf("the first period now shows %d plaintext requests", r.Namespaces[0].Requests.Plaintext)
	}
}

// cc67Mesh is the cluster and the telemetry behind the CC6.7 section
// of the evidence test: shop is STRICT, its web and api hold the
// evidence daemon's certificates and talk mTLS only (30 requests, 4
// connections); store is PERMISSIVE, a client without a proxy sends till 7
// plaintext requests and web 3 mTLS ones; legacy is not in the mesh.
// api's proxy is not scraped for a few seconds: a gap in its series. It
// returns the flags that point ca report evidence at it.
func cc67Mesh(t *testing.T) []string {
	t.Helper()
	m := newMeshCluster(t)
	m.namespace("istio-system", nil)
	m.namespace("shop", map[string]string{mesh.LabelInjection: "enabled"})
	m.peerAuthentication("shop", "default", nil, securityapi.PeerAuthentication_MutualTLS_STRICT)
	m.namespace("store", map[string]string{mesh.LabelInjection: "enabled"})
	m.namespace("legacy", nil)
	web := meshtest.Workload{Namespace: "shop", Name: "web", ServiceAccount: "web", App: "web", Version: "v1", Service: "web"}
	api := meshtest.Workload{Namespace: "shop", Name: "api", ServiceAccount: "api", App: "api", Version: "v1", Service: "api"}
	till := meshtest.Workload{Namespace: "store", Name: "till", ServiceAccount: "till", App: "till", Version: "v1", Service: "till"}
	batch := meshtest.Workload{Namespace: "legacy", Name: "batch", ServiceAccount: "batch", App: "batch", Version: "v1", Service: "batch"}
	m.exporter = meshtest.NewExporter(t)
	proxies := map[string]*meshtest.Proxy{}
	for _, w := range []meshtest.Workload{web, api, till, batch} {
		m.pod(w)
		if w.Namespace != "legacy" {
			proxies[w.Name] = m.exporter.Sidecar(w, w.Name+"-0")
			proxies[w.Name].SetCertificate(time.Now().Add(23 * time.Hour))
		}
	}
	m.prom = promtest.Start(t, promtest.Options{ScrapeConfigs: m.exporter.ScrapeConfig("istio-proxies", time.Second)})
	_, end := m.period()
	m.must(m.exporter.Request(web, api, true, 30, 200))
	m.must(m.exporter.Connection(web, api, true, 4))
	m.must(m.exporter.Request(meshtest.NoProxy, till, false, 7, 200))
	m.must(m.exporter.Request(web, till, true, 3, 200))
	m.prom.WaitScraped(t, time.Now(), time.Minute)
	m.exporter.SetDown(proxies["api"], true)
	time.Sleep(5 * time.Second)
	m.exporter.SetDown(proxies["api"], false)
	end()
	return []string{"--kubeconfig", m.kubeconfig, "--prometheus", m.prom.URL, "--step", "1s"}
}

// cc67JSON runs ca report evidence -o json over cc67Mesh and checks
// the CC6.7 section's figures against what the exporter served.
func cc67JSON(t *testing.T, args []string) {
	t.Helper()
	out, errs, code := runCA(t, args...)
	if code != 0 {
		t.Fatalf("ca report evidence exited %d: %s", code, errs)
	}
	var r evidenceReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	e := r.Encryption
	if e == nil || !e.Checked || e.Assessment == nil || !e.TrafficChecked {
		t.Fatalf("the CC6.7 section was not checked: %+v", e)
	}
	ns := map[string]*mesh.NamespaceAssessment{}
	for _, n := range e.Namespaces {
		ns[n.Namespace] = n
	}
	share := func(n *mesh.NamespaceAssessment) float64 {
		if n.MTLSShare == nil {
			return -1
		}
		return *n.MTLSShare
	}
	if n := ns["shop"]; n == nil || n.Verdict != mesh.Encrypted || n.Requests.MutualTLS != 30 || n.Requests.Plaintext != 0 ||
		n.Connections.MutualTLS != 4 || share(n) != 1 {
		t.Errorf("shop: %+v, want ENCRYPTED, 30 mTLS requests and 4 connections, share 1", n)
	}
	if n := ns["store"]; n == nil || n.Verdict != mesh.PlaintextSeen || n.Requests.MutualTLS != 3 || n.Requests.Plaintext != 7 || share(n) != 0.3 ||
		!slices.Equal(pairsOf(n), []string{"unknown (a client without a proxy) → till: 7 requests, 0 connections"}) {
		t.Errorf("store: %+v, want PLAINTEXT SEEN, 3 mTLS and 7 plaintext requests, share 0.3, one pair", n)
	}
	if n := ns["legacy"]; n == nil || n.Verdict != mesh.NotInMesh {
		t.Errorf("legacy: %+v, want NOT IN MESH", n)
	}
	if e.MTLSShare == nil || *e.MTLSShare != float64(30+4+3)/float64(30+4+3+7) {
		t.Errorf("mesh-wide mTLS share %v, want 37/44", e.MTLSShare)
	}
	if !slices.ContainsFunc(e.Gaps, func(g mesh.Gap) bool { return g.Namespace == "shop" && g.Target == "api-0" }) {
		t.Errorf("gaps %+v lack the stretch api-0 was not scraped", e.Gaps)
	}
	cannot := strings.Join(e.CannotShow, "\n")
	t.Logf("CC6.7: %d namespaces, mTLS share %s, cannot show:\n%s\nrecheck: %s", len(e.Namespaces), percent(e.MTLSShare), cannot, e.Recheck)
	for _, want := range []string{"Kubernetes keeps no history", "legacy", "shop/api-0", "retention"} {
		if !strings.Contains(cannot, want) {
			t.Errorf("the section's cannot-show lacks %q:\n%s", want, cannot)
		}
	}
	if !strings.Contains(e.Recheck, "ca report encryption") || !strings.Contains(e.Recheck, "--from "+r.From) {
		t.Errorf("recheck %q", e.Recheck)
	}
}

// The walkthroughs of docs/rollout.md ("What the wire shows") and
// docs/auditing.md (the CC6.7 section) run as printed on the six-namespace
// mesh, $LOG, $VKEY, $KUBECONFIG and $PROMETHEUS set to it: every command
// succeeds and prints what the page says.
func TestEncryptionDocsWalkthrough(t *testing.T) {
	m := newTestMesh(t)
	t.Setenv("KUBECONFIG", "")
	_, end := m.period()
	m.must(m.exporter.Request(wWeb, wAPI, true, 120, 200))
	m.must(m.exporter.Request(wFrontend, wCart, true, 50, 200))
	m.must(m.exporter.Request(wFrontend, wShop, true, 20, 200))
	m.must(m.exporter.Request(meshtest.NoProxy, wShop, false, 7, 200))
	m.must(m.exporter.Connection(meshtest.NoProxy, wShop, false, 2))
	m.must(m.exporter.Request(wFrontend, wLedger, true, 10, 200))
	m.must(m.exporter.Connection(wFrontend, wRatings, true, 9))
	end()

	vkey := filepath.Join(t.TempDir(), "log-verifier.vkey")
	writeFile(t, vkey, testNoteSigner(t).VerifierKey()+"\n")
	vars := map[string]string{"LOG": m.db, "VKEY": vkey, "KUBECONFIG": m.kubeconfig, "PROMETHEUS": m.prom.URL}
	dir := t.TempDir()
	for _, doc := range []struct{ file, marker string }{
		{"docs/rollout.md", "### What the wire shows"},
		{"docs/auditing.md", "To make the section"},
	} {
		cmds := quickstartCommands(docBlock(t, doc.file, doc.marker))
		if len(cmds) < 2 {
			t.Fatalf("%s: %d commands after %q", doc.file, len(cmds), doc.marker)
		}
		for _, c := range cmds {
			words, outFile := shellWords(c.line, vars)
			if len(words) == 0 || words[0] != "ca" {
				t.Fatalf("%s: %q is not a ca command", doc.file, c.line)
			}
			out, errOut, code := runCA(t, words[1:]...)
			if code != 0 {
				t.Errorf("%s: %s: exit %d: %s", doc.file, c.line, code, errOut)
				continue
			}
			if outFile != "" {
				writeFile(t, filepath.Join(dir, outFile), out)
			}
			if len(c.expect) == 0 {
				t.Errorf("%s: %s: the page says nothing of what it prints", doc.file, c.line)
			}
			for _, want := range c.expect {
				if !strings.Contains(out, want) {
					t.Errorf("%s: %s printed\n%s\nthe page says it prints %q", doc.file, c.line, out, want)
				}
			}
		}
	}
}
