package daemon

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/transitca/transitca/internal/kube"
)

// The runner is built from kubernetes.istiod: the namespace, the service
// account in the identity, the revisions and extra names, the lifetime.
// (internal/kube tests the writer itself against a real API server; a fake
// clientset is enough to see the settings arrive.)
func TestIstiodRunnerFollowsConfig(t *testing.T) {
	cfg := devConfig(t, t.TempDir())
	cfg.Kubernetes.Istiod.Namespace = "mesh-cp"
	cfg.Kubernetes.Istiod.ServiceAccount = "istiod"
	cfg.Kubernetes.Istiod.Revisions = []string{"canary"}
	cfg.Kubernetes.Istiod.ExtraDNSNames = []string{"istiod.mesh.example"}
	d := startDaemon(t, cfg)
	client := fake.NewClientset()
	w, err := d.istiodRunner(client)
	if err != nil || w == nil {
		t.Fatalf("istiodRunner: writer %v, %v", w != nil, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var s *corev1.Secret
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		s, err = client.CoreV1().Secrets("mesh-cp").Get(ctx, kube.IstiodSecretName, metav1.GetOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no istiod-tls Secret in mesh-cp: %v", err)
		}
	}
	b, _ := pem.Decode(s.Data[kube.TLSCertKey])
	if b == nil {
		t.Fatal("tls.crt is not PEM")
	}
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"istiod.mesh-cp.svc", "istiod-canary.mesh-cp.svc", "istiod.mesh.example"}
	if !slices.Equal(leaf.DNSNames, want) {
		t.Errorf("DNS names %v, want %v", leaf.DNSNames, want)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/mesh-cp/sa/istiod" {
		t.Errorf("URIs %v", leaf.URIs)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 24*time.Hour {
		t.Errorf("validity period %s, want kubernetes.istiod.cert_ttl 24h", got)
	}

	cfg.Kubernetes.Istiod.Enabled = false
	if w, err := d.istiodRunner(client); w != nil || err != nil {
		t.Errorf("kubernetes.istiod.enabled false: writer %v, %v; want none", w != nil, err)
	}
}
