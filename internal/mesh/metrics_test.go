package mesh

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	networkingapi "istio.io/api/networking/v1alpha3"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/transitca/transitca/internal/kubetest"
)

// The daemon exports each namespace's namespace-wide mode, reading the
// cluster as transitca's service account under the shipped RBAC (which
// lets it read PeerAuthentications and DestinationRules, and not change
// them); a change shows at the next read, and the metrics go when the
// runner stops (a follower exports none).
func TestPolicyMetrics(t *testing.T) {
	c := newCluster(t)
	c.env.Apply(t, kubetest.RBACManifests()...)
	system := &kubetest.Env{Server: c.env.Server, Client: c.env.Client, Namespace: "istio-system"}
	cfg, err := clientcmd.BuildConfigFromFlags("", system.ServiceAccountKubeconfig(t, "transitca"))
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	istio, err := istioclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	c.peerAuthentication(c.root, "default", nil, permissive, nil)
	shop := c.namespace("shop", injected)
	c.peerAuthentication(shop, "default", nil, strict, nil)
	c.destinationRule(shop, "plain", "reports", tlsDisable())
	legacy := c.namespace("legacy", nil)

	reg := prometheus.NewRegistry()
	m, err := NewPolicyMetrics(PolicyMetricsOptions{Kube: kube, Istio: istio, Options: Options{RootNamespace: c.root},
		Interval: 200 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()

	want := func(lines ...string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var missing []string
			got, err := testutil.CollectAndFormat(reg, expfmt.TypeTextPlain, MetricMTLSMode, MetricDisabledTLS)
			for _, l := range lines {
				if err != nil || !strings.Contains(string(got), l) {
					missing = append(missing, l)
				}
			}
			if len(missing) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("metrics lack %q (%v):\n%s", missing, err, got)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	want(
		`transitca_mesh_mtls_mode{dataplane="sidecar",mesh_namespace="`+shop+`",mode="STRICT"} 1`,
		`transitca_mesh_mtls_mode{dataplane="none",mesh_namespace="`+legacy+`",mode="PERMISSIVE"} 1`,
		`transitca_mesh_mtls_disabled_destination_rules{mesh_namespace="`+shop+`"} 1`,
	)

	// The namespace's policy changes: the old mode's series goes.
	pa, err := c.istio.SecurityV1().PeerAuthentications(shop).Get(t.Context(), "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pa.Spec.Mtls.Mode = permissive
	if _, err := c.istio.SecurityV1().PeerAuthentications(shop).Update(t.Context(), pa, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want(`transitca_mesh_mtls_mode{dataplane="sidecar",mesh_namespace="` + shop + `",mode="PERMISSIVE"} 1`)
	if got, _ := testutil.CollectAndFormat(reg, expfmt.TypeTextPlain, MetricMTLSMode); strings.Contains(string(got), `mesh_namespace="`+shop+`",mode="STRICT"`) {
		t.Errorf("the STRICT series stayed after the change:\n%s", got)
	}

	// Read, never write.
	_, err = istio.SecurityV1().PeerAuthentications(shop).Create(t.Context(), &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("transitca creating a PeerAuthentication: %v, want Forbidden", err)
	}

	cancel()
	<-done
	if n := testutil.CollectAndCount(reg, MetricMTLSMode, MetricDisabledTLS); n != 0 {
		t.Errorf("%d series left after the runner stopped", n)
	}
}

func tlsDisable() *networkingapi.TrafficPolicy {
	return &networkingapi.TrafficPolicy{Tls: &networkingapi.ClientTLSSettings{Mode: networkingapi.ClientTLSSettings_DISABLE}}
}
