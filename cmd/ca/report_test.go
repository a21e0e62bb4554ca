package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/store"
)

// rolloutLog writes a log with an issuance entry for each certificate,
// valid from now+from to now+to, and a denial for one service account.
func rolloutLog(t *testing.T, now time.Time, certs []rolloutCert, denied [2]string) string {
	t.Helper()
	db := filepath.Join(t.TempDir(), "issuance.db")
	l, err := store.Open(db, store.Options{Signer: testNoteSigner(t), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i, c := range certs {
		e := &store.Entry{
			Kind: store.KindIssuance, Time: now.Add(c.from),
			Serial:   fmt.Sprintf("%040x", i+1),
			SPIFFEID: "spiffe://cluster.local/ns/" + c.ns + "/sa/" + c.sa, Namespace: c.ns, ServiceAccount: c.sa,
			Tier: "workload", NotBefore: now.Add(c.from), NotAfter: now.Add(c.to),
			IssuerFingerprint: strings.Repeat("ab", 32), Certificate: []byte("not parsed by the report"),
		}
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Append(ctx, &store.Entry{
		Kind: store.KindDenial, Time: now, Namespace: denied[0], ServiceAccount: denied[1],
		SPIFFEID: "spiffe://cluster.local/ns/" + denied[0] + "/sa/" + denied[1], Code: "PermissionDenied", Reason: "test",
	}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return db
}

type rolloutCert struct {
	ns, sa   string
	from, to time.Duration
}

// The rollout report, against a real API server: namespaces where every
// service account that runs pods holds a live certificate are READY; the
// others name the service accounts to fix before going STRICT.
func TestReportRollout(t *testing.T) {
	s, err := kubetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	ready, partial, certsOnly := kubetest.NewOn(t, s), kubetest.NewOn(t, s), kubetest.NewOn(t, s)
	pods := func(env *kubetest.Env, sa string, n int) {
		env.ServiceAccount(t, sa)
		for i := range n {
			env.Pod(t, fmt.Sprintf("%s-%d", sa, i), sa, "node-a")
		}
	}
	// ready: web and api run pods and hold certificates; job's only pod has
	// finished and counts for nothing.
	pods(ready, "web", 2)
	pods(ready, "api", 1)
	pods(ready, "job", 1)
	job, err := ready.Client.CoreV1().Pods(ready.Namespace).Get(t.Context(), "job-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	job.Status.Phase = corev1.PodSucceeded
	if _, err := ready.Client.CoreV1().Pods(ready.Namespace).UpdateStatus(t.Context(), job, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// partial: web holds one; batch's expired yesterday; legacy was only
	// ever denied.
	pods(partial, "web", 1)
	pods(partial, "batch", 1)
	pods(partial, "legacy", 1)

	now := time.Now()
	db := rolloutLog(t, now, []rolloutCert{
		{ready.Namespace, "web", -time.Hour, 23 * time.Hour},
		{ready.Namespace, "web", -2 * time.Hour, 22 * time.Hour},
		{ready.Namespace, "api", -time.Hour, 23 * time.Hour},
		{partial.Namespace, "web", -time.Hour, 23 * time.Hour},
		{partial.Namespace, "batch", -48 * time.Hour, -24 * time.Hour},
		{certsOnly.Namespace, "gone", -time.Hour, time.Hour},
	}, [2]string{partial.Namespace, "legacy"})
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := s.WriteKubeconfig(kubeconfig, s.AdminToken, ""); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", "")

	report := func(t *testing.T, args ...string) rolloutReport {
		t.Helper()
		out, errOut, code := runCA(t, append([]string{"report", "rollout", "--db", db, "-o", "json"}, args...)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var r rolloutReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return r
	}
	type nsWant struct {
		ready   bool
		missing []string
		// accounts are name:pods:live certificates.
		accounts []string
	}
	check := func(t *testing.T, r rolloutReport, want map[string]nsWant) {
		t.Helper()
		var got []string
		for _, n := range r.Namespaces {
			got = append(got, n.Namespace)
			w, ok := want[n.Namespace]
			if !ok {
				continue
			}
			if n.Ready == nil || *n.Ready != w.ready {
				t.Errorf("%s: ready = %v, want %v", n.Namespace, n.Ready, w.ready)
			}
			if !slices.Equal(n.Missing, w.missing) {
				t.Errorf("%s: missing = %q, want %q", n.Namespace, n.Missing, w.missing)
			}
			var accounts []string
			for _, a := range n.ServiceAccounts {
				accounts = append(accounts, fmt.Sprintf("%s:%d:%d", a.Name, a.Pods, a.LiveCertificates))
			}
			if !slices.Equal(accounts, w.accounts) {
				t.Errorf("%s: service accounts = %q, want %q", n.Namespace, accounts, w.accounts)
			}
		}
		var wantNS []string
		for ns := range want {
			wantNS = append(wantNS, ns)
		}
		slices.Sort(wantNS)
		if !slices.Equal(got, wantNS) {
			t.Errorf("namespaces = %q, want %q", got, wantNS)
		}
	}

	t.Run("now", func(t *testing.T) {
		r := report(t, "--kubeconfig", kubeconfig)
		if !r.PodsChecked {
			t.Error("pods_checked = false")
		}
		check(t, r, map[string]nsWant{
			ready.Namespace:     {true, []string{}, []string{"api:1:1", "web:2:2"}},
			partial.Namespace:   {false, []string{"batch", "legacy"}, []string{"batch:1:0", "legacy:1:0", "web:1:1"}},
			certsOnly.Namespace: {true, []string{}, []string{"gone:0:1"}},
		})
	})
	t.Run("one namespace", func(t *testing.T) {
		check(t, report(t, "--kubeconfig", kubeconfig, "--namespace", partial.Namespace), map[string]nsWant{
			partial.Namespace: {false, []string{"batch", "legacy"}, []string{"batch:1:0", "legacy:1:0", "web:1:1"}},
		})
	})
	t.Run("at a past time", func(t *testing.T) {
		// 36 hours ago only batch's certificate was live; pods are as of now.
		check(t, report(t, "--kubeconfig", kubeconfig, "--at", "-36h"), map[string]nsWant{
			ready.Namespace:   {false, []string{"api", "web"}, []string{"api:1:0", "web:2:0"}},
			partial.Namespace: {false, []string{"legacy", "web"}, []string{"batch:1:1", "legacy:1:0", "web:1:0"}},
		})
	})
	t.Run("KUBECONFIG", func(t *testing.T) {
		t.Setenv("KUBECONFIG", kubeconfig)
		out, errOut, code := runCA(t, "report", "rollout", "--db", db, "--namespace", partial.Namespace)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{
			"namespace " + partial.Namespace + ": NOT READY: no live certificate for batch, legacy",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("table lacks %q:\n%s", want, out)
			}
		}
		rows := map[string][]string{}
		for line := range strings.Lines(out) {
			if f := strings.Fields(line); len(f) >= 4 {
				rows[f[0]] = f[1:]
			}
		}
		for sa, want := range map[string][]string{
			"web":    {"1", "1"},
			"batch":  {"1", "0", "-", "MISSING"},
			"legacy": {"1", "0", "-", "MISSING"},
		} {
			if got := rows[sa]; len(got) < len(want) || !slices.Equal(got[:2], want[:2]) || (len(want) > 2 && !slices.Equal(got, want)) {
				t.Errorf("row %s = %q, want %q", sa, got, want)
			}
		}
		out, errOut, code = runCA(t, "report", "rollout", "--db", db, "--namespace", ready.Namespace)
		if code != 0 || !strings.Contains(out, "namespace "+ready.Namespace+": READY") {
			t.Errorf("exit %d, want READY for %s:\n%s%s", code, ready.Namespace, out, errOut)
		}
	})
	t.Run("without an API server", func(t *testing.T) {
		out, errOut, code := runCA(t, "report", "rollout", "--db", db, "-o", "json")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if !strings.Contains(errOut, "pods not checked") {
			t.Errorf("stderr does not say pods were not checked: %s", errOut)
		}
		var r rolloutReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		if r.PodsChecked || len(r.Namespaces) != 3 {
			t.Fatalf("pods_checked %v, %d namespaces, want false and 3:\n%s", r.PodsChecked, len(r.Namespaces), out)
		}
		for _, n := range r.Namespaces {
			if n.Ready != nil {
				t.Errorf("%s judged ready=%v without pods", n.Namespace, *n.Ready)
			}
		}
	})
}

// The PeerAuthentication manifests of docs/rollout.md: mesh-wide
// PERMISSIVE and STRICT share one name in the root namespace, so the last
// step replaces the first; the namespace template is STRICT for NAMESPACE.
func TestMeshManifests(t *testing.T) {
	type peerAuthentication struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Spec struct {
			MTLS struct {
				Mode string `json:"mode"`
			} `json:"mtls"`
		} `json:"spec"`
	}
	for _, tc := range []struct {
		file, namespace, mode string
	}{
		{"peerauthentication-permissive.yaml", "istio-system", "PERMISSIVE"},
		{"peerauthentication-strict-namespace.yaml", "NAMESPACE", "STRICT"},
		{"peerauthentication-strict-mesh.yaml", "istio-system", "STRICT"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "mesh", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			var pa peerAuthentication
			if err := yaml.UnmarshalStrict(b, &pa); err != nil {
				t.Fatal(err)
			}
			if pa.APIVersion != "security.istio.io/v1" || pa.Kind != "PeerAuthentication" || pa.Metadata.Name != "default" ||
				pa.Metadata.Namespace != tc.namespace || pa.Spec.MTLS.Mode != tc.mode {
				t.Errorf("got %+v, want PeerAuthentication default in %s, mode %s", pa, tc.namespace, tc.mode)
			}
		})
	}
}
