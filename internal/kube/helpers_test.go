package kube

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/internal/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// cluster is a test's view of the API server: the admin, and transitca's
// service account under exactly the shipped RBAC manifests.
type cluster struct {
	env    *kubetest.Env
	admin  kubernetes.Interface
	daemon kubernetes.Interface
	// system is the env of transitca's own namespace.
	system *kubetest.Env
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	env := kubetest.New(t)
	env.Apply(t, kubetest.RBACManifests()...)
	kubetest.AwaitRBACPolicies(t, env.Server)
	system := &kubetest.Env{Server: env.Server, Client: env.Client, Namespace: "istio-system"}
	cs, err := kubernetes.NewForConfig(system.ServiceAccountConfig(t, "transitca"))
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{env: env, admin: env.Client, daemon: cs, system: system}
}

// namespace creates a namespace with labels.
func (c *cluster) namespace(t *testing.T, lbls map[string]string) string {
	t.Helper()
	name := "t-" + randHex(5)
	_, err := c.admin.CoreV1().Namespaces().Create(t.Context(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// configMap is the namespace's istio-ca-root-cert, or nil.
func (c *cluster) configMap(t *testing.T, ns string) *corev1.ConfigMap {
	t.Helper()
	cm, err := c.admin.CoreV1().ConfigMaps(ns).Get(t.Context(), RootCertConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return cm
}

// holds says whether the namespace's ConfigMap is exactly the bundle.
func (c *cluster) holds(t *testing.T, ns string, bundle []byte) error {
	t.Helper()
	cm := c.configMap(t, ns)
	switch {
	case cm == nil:
		return fmt.Errorf("%s: no ConfigMap", ns)
	case cm.Labels[ConfigLabel] != "true":
		return fmt.Errorf("%s: labels %v", ns, cm.Labels)
	case len(cm.Data) != 1 || len(cm.BinaryData) != 0:
		return fmt.Errorf("%s: keys %v %v", ns, keys(cm.Data), cm.BinaryData)
	case cm.Data[RootCertKey] != string(bundle):
		return fmt.Errorf("%s: %s holds another bundle", ns, RootCertKey)
	}
	return nil
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// eventually retries check until it passes or the limit passes.
func eventually(t *testing.T, limit time.Duration, check func() error) {
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

// fakeBundle is PEM that stands for a trust bundle: the controller copies
// bytes and never parses them.
func fakeBundle() []byte {
	var b bytes.Buffer
	for range 2 {
		raw := make([]byte, 64)
		_, _ = rand.Read(raw)
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: raw})
	}
	return b.Bytes()
}

// bundleSource is a bundle the test changes.
type bundleSource struct{ p atomic.Pointer[[]byte] }

func newSource() *bundleSource {
	s := &bundleSource{}
	s.set(fakeBundle())
	return s
}
func (s *bundleSource) set(b []byte) { s.p.Store(&b) }
func (s *bundleSource) get() []byte  { return *s.p.Load() }

// logBuffer collects log output.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// run runs r until the test ends or the returned stop is called, which
// waits for r to return.
func run(t *testing.T, r Runner) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// controller starts a controller as transitca's service account.
func (c *cluster) controller(t *testing.T, src *bundleSource, selector string, resync time.Duration, log *slog.Logger) (*BundleController, func()) {
	t.Helper()
	sel, err := labels.Parse(selector)
	if err != nil {
		t.Fatal(err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bc, err := NewBundleController(BundleOptions{Client: c.daemon, Bundle: src.get, NamespaceSelector: sel, Resync: resync, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return bc, run(t, bc)
}

func mustSelector(t *testing.T, s string) labels.Selector {
	t.Helper()
	sel, err := labels.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}
