package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/transitca/transitca/internal/kube"
	"github.com/transitca/transitca/internal/kubetest"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// A dev daemon pointed at a cluster by a kubeconfig, running as the
// transitca service account under the shipped RBAC manifests, writes the
// istio-ca-root-cert ConfigMaps with the bytes of root-cert.pem, and
// rewrites them as soon as a root rotation step changes the bundle.
func TestDaemonWritesTrustBundleConfigMaps(t *testing.T) {
	env, system := rbacCluster(t)
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

	// The leader also keeps istiod's serving certificate in istiod-tls:
	// valid for istiod.istio-system.svc against the bundle it carries.
	waitFor(t, 20*time.Second, func() error {
		sec, err := env.Client.CoreV1().Secrets("istio-system").Get(t.Context(), kube.IstiodSecretName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if _, err := tls.X509KeyPair(sec.Data[kube.TLSCertKey], sec.Data[kube.TLSKeyKey]); err != nil {
			return err
		}
		chain, roots := parsePEM(t, string(sec.Data[kube.TLSCertKey])), x509.NewCertPool()
		if !roots.AppendCertsFromPEM(sec.Data[kube.CACertKey]) || len(chain) < 2 {
			return fmt.Errorf("istiod-tls holds %d certificates and ca.crt %d bytes", len(chain), len(sec.Data[kube.CACertKey]))
		}
		inter := x509.NewCertPool()
		inter.AddCert(chain[1])
		_, err = chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "istiod.istio-system.svc"})
		return err
	})

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

// With auth.tokenreview on, the daemon checks workloads' projected tokens
// with the real API server through its Kubernetes client, as the transitca
// service account under the shipped RBAC: a pod-bound token is accepted
// and the pod is recorded; a token for another audience is refused.
func TestDaemonTokenReviewThroughTheCluster(t *testing.T) {
	env, system := rbacCluster(t)
	env.ServiceAccount(t, "web")
	pod := env.Pod(t, "web-0", "web", "node-a")

	cfg := devConfig(t, t.TempDir())
	cfg.Kubernetes.Kubeconfig = system.ServiceAccountKubeconfig(t, "transitca")
	cfg.Auth.TokenReview.Enabled = true
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfg)

	tok := env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: pod})
	w := d.requestWithToken(t, env.Namespace, "web", tok)
	serial := store.SerialHex(w.chain[0].SerialNumber)
	entries, _, err := d.Log().Query(t.Context(), store.Query{Serial: serial})
	if err != nil || len(entries) != 1 {
		t.Fatalf("log entry for %s: %v %v", serial, entries, err)
	}
	e := entries[0]
	if e.AuthMethod != "kubernetes-tokenreview" || e.PodName != "web-0" || e.PodUID != string(pod.UID) || e.Namespace != env.Namespace {
		t.Fatalf("log entry: method %s pod %s/%s namespace %s", e.AuthMethod, e.PodName, e.PodUID, e.Namespace)
	}

	other := env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{"vault"}, Pod: pod})
	conn, err := grpc.NewClient(d.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: d.rootPool(t), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+other)
	_, err = pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: "x"})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("token for another audience: %v, want Unauthenticated", err)
	}
}

// rbacCluster starts an API server of the test's own with the shipped RBAC
// (every part, with its admission policies in force) applied; it returns an env on a fresh namespace and one on istio-system,
// where transitca's service account lives.
func rbacCluster(t *testing.T) (env, system *kubetest.Env) {
	t.Helper()
	srv, err := kubetest.Start()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(srv.Stop)
	env = kubetest.NewOn(t, srv)
	env.Apply(t, kubetest.RBACManifests()...)
	kubetest.AwaitRBACPolicies(t, srv)
	return env, &kubetest.Env{Server: srv, Client: env.Client, Namespace: "istio-system"}
}
