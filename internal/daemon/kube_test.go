package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/transitca/transitca/internal/kube"
	"github.com/transitca/transitca/internal/kubetest"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// A dev daemon pointed at a cluster by a kubeconfig, running as the
// transitca service account under the shipped RBAC manifests, writes the
// istio-ca-root-cert ConfigMaps with the bytes of root-cert.pem, and
// rewrites them as soon as a root rotation step changes the bundle.
func TestDaemonWritesTrustBundleConfigMaps(t *testing.T) {
	srv, err := kubetest.Start()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(srv.Stop)
	env := kubetest.NewOn(t, srv)
	var rbac []string
	for _, f := range []string{"serviceaccount", "clusterrole", "clusterrolebinding", "role", "rolebinding"} {
		rbac = append(rbac, filepath.Join("..", "..", "deploy", "rbac", f+".yaml"))
	}
	env.Apply(t, rbac...)
	system := &kubetest.Env{Server: srv, Client: env.Client, Namespace: "istio-system"}
	selected := map[string]string{"istio-injection": "enabled"}
	var nss []string
	for range 2 {
		ns := "mesh-" + fmt.Sprint(len(nss))
		if _, err := env.Client.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: selected}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		nss = append(nss, ns)
	}

	cfg := devConfig(t, t.TempDir())
	cfg.Kubernetes.Kubeconfig = system.ServiceAccountKubeconfig(t, "transitca")
	cfg.Kubernetes.TrustBundle.NamespaceSelector = "istio-injection=enabled"
	d := startDaemon(t, cfg)

	holdsRootFile := func() error {
		want, err := os.ReadFile(d.RootFile())
		if err != nil {
			return err
		}
		for _, ns := range nss {
			cm, err := env.Client.CoreV1().ConfigMaps(ns).Get(t.Context(), kube.RootCertConfigMap, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if cm.Data[kube.RootCertKey] != string(want) || cm.Labels[kube.ConfigLabel] != "true" {
				return fmt.Errorf("%s: ConfigMap %v does not hold root-cert.pem", ns, cm.Labels)
			}
		}
		return nil
	}
	waitFor(t, 20*time.Second, holdsRootFile)
	if cm, err := env.Client.CoreV1().ConfigMaps(env.Namespace).Get(t.Context(), kube.RootCertConfigMap, metav1.GetOptions{}); err == nil {
		t.Fatalf("unselected namespace %s got %v", env.Namespace, cm.Name)
	}
	lease, err := env.Client.CoordinationV1().Leases("istio-system").Get(t.Context(), "transitca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := lease.Spec.HolderIdentity; h == nil || *h == "" {
		t.Fatalf("lease %v has no holder", lease.Spec)
	}

	// Prepare a new root: the bundle now holds two roots, and the
	// ConfigMaps follow within seconds, long before the resync.
	before, _ := os.ReadFile(d.RootFile())
	adm := d.admin(t, d.request(t, "transitca", "admin"))
	if _, err := adm.PrepareRoot(context.Background(), &adminv1.PrepareRootRequest{Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, 5*time.Second, func() error {
		after, _ := os.ReadFile(d.RootFile())
		if string(after) == string(before) {
			return fmt.Errorf("root-cert.pem unchanged")
		}
		return holdsRootFile()
	})
	t.Logf("ConfigMaps updated %v after PrepareRoot", time.Since(start).Round(time.Millisecond))

	// The metrics say this replica leads and wrote.
	resp, err := http.Get("http://" + d.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{MetricKubernetesLeader + " 1", MetricTrustBundleWrites + " 4"} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}

	// On shutdown the daemon releases the Lease for the next replica.
	d.stop(t)
	waitFor(t, 5*time.Second, func() error {
		l, err := env.Client.CoordinationV1().Leases("istio-system").Get(t.Context(), "transitca", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if h := l.Spec.HolderIdentity; h != nil && *h != "" {
			return fmt.Errorf("lease still held by %s", *h)
		}
		return nil
	})
}

func waitFor(t *testing.T, limit time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", limit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
