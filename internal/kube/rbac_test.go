package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/internal/kubetest"
)

// The shipped RBAC manifests grant what the daemon does (the other tests
// run under them) and nothing beyond it.
func TestRBACAllowsTheDaemonAndNoMore(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	admin, sa := c.admin, c.daemon
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "other-" + randHex(5), Namespace: "istio-system"}, StringData: map[string]string{"k": "v"}}
	if _, err := admin.CoreV1().Secrets("istio-system").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	unrelated := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "app-config", Namespace: c.env.Namespace}, Data: map[string]string{"k": "v"}}
	if _, err := admin.CoreV1().ConfigMaps(c.env.Namespace).Create(ctx, unrelated, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	root := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: c.env.Namespace}, Data: map[string]string{RootCertKey: "x"}}
	byName := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", RootCertConfigMap).String()}
	crt, key := tlsPair(t)
	istiodTLS := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istiod-tls", Namespace: "istio-system"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": crt, "tls.key": key}}

	allowed := []struct {
		name string
		call func() error
	}{
		{"create istio-ca-root-cert", func() error {
			_, err := sa.CoreV1().ConfigMaps(root.Namespace).Create(ctx, root, metav1.CreateOptions{})
			return err
		}},
		{"list istio-ca-root-cert in all namespaces", func() error {
			_, err := sa.CoreV1().ConfigMaps("").List(ctx, byName)
			return err
		}},
		{"update istio-ca-root-cert", func() error {
			cm, err := sa.CoreV1().ConfigMaps(root.Namespace).Get(ctx, RootCertConfigMap, metav1.GetOptions{})
			if err != nil {
				return err
			}
			cm.Data[RootCertKey] = "y"
			_, err = sa.CoreV1().ConfigMaps(root.Namespace).Update(ctx, cm, metav1.UpdateOptions{})
			return err
		}},
		{"watch namespaces", func() error {
			w, err := sa.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"create a token review", func() error {
			_, err := sa.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: "x"}}, metav1.CreateOptions{})
			return err
		}},
		{"create istiod-tls", func() error {
			_, err := sa.CoreV1().Secrets("istio-system").Create(ctx, istiodTLS, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return nil
			}
			return err
		}},
		{"update istiod-tls", func() error {
			s, err := sa.CoreV1().Secrets("istio-system").Get(ctx, "istiod-tls", metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.Data["ca.crt"] = crt
			_, err = sa.CoreV1().Secrets("istio-system").Update(ctx, s, metav1.UpdateOptions{})
			return err
		}},
	}
	for _, a := range allowed {
		if err := a.call(); err != nil {
			t.Errorf("%s: %v", a.name, err)
		}
	}

	forbidden := []struct {
		name string
		call func() error
	}{
		{"update a Secret other than istiod-tls", func() error {
			_, err := sa.CoreV1().Secrets("istio-system").Update(ctx, other, metav1.UpdateOptions{})
			return err
		}},
		{"read a Secret other than istiod-tls", func() error {
			_, err := sa.CoreV1().Secrets("istio-system").Get(ctx, other.Name, metav1.GetOptions{})
			return err
		}},
		{"list Secrets", func() error {
			_, err := sa.CoreV1().Secrets("istio-system").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"create a Secret elsewhere", func() error {
			s := other.DeepCopy()
			s.Namespace = c.env.Namespace
			_, err := sa.CoreV1().Secrets(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
			return err
		}},
		{"delete istio-ca-root-cert", func() error {
			return sa.CoreV1().ConfigMaps(root.Namespace).Delete(ctx, RootCertConfigMap, metav1.DeleteOptions{})
		}},
		{"read another ConfigMap", func() error {
			_, err := sa.CoreV1().ConfigMaps(unrelated.Namespace).Get(ctx, unrelated.Name, metav1.GetOptions{})
			return err
		}},
		{"list every ConfigMap", func() error {
			_, err := sa.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"update another ConfigMap", func() error {
			_, err := sa.CoreV1().ConfigMaps(unrelated.Namespace).Update(ctx, unrelated, metav1.UpdateOptions{})
			return err
		}},
		{"update another Lease", func() error {
			l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "kube-scheduler", Namespace: "istio-system"}}
			_, err := sa.CoordinationV1().Leases("istio-system").Update(ctx, l, metav1.UpdateOptions{})
			return err
		}},
		{"create a Lease elsewhere", func() error {
			l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: testLease, Namespace: "kube-system"}}
			_, err := sa.CoordinationV1().Leases("kube-system").Create(ctx, l, metav1.CreateOptions{})
			return err
		}},
		{"update a namespace", func() error {
			ns, err := sa.CoreV1().Namespaces().Get(ctx, c.env.Namespace, metav1.GetOptions{})
			if err != nil {
				return err
			}
			_, err = sa.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
			return err
		}},
	}
	for _, f := range forbidden {
		if err := f.call(); !apierrors.IsForbidden(err) {
			t.Errorf("%s: got %v, want Forbidden", f.name, err)
		}
	}
}

// A kubeconfig gives the client and the daemon's namespace (its context's).
func TestNewClientFromKubeconfig(t *testing.T) {
	c := newCluster(t)
	path := c.system.ServiceAccountKubeconfig(t, "transitca")
	cl, err := NewClient(path, "transitca-test")
	if err != nil {
		t.Fatal(err)
	}
	if cl.Namespace != "istio-system" {
		t.Errorf("namespace %q, want istio-system", cl.Namespace)
	}
	if _, err := cl.Clientset.CoreV1().Namespaces().Get(t.Context(), c.env.Namespace, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewClient(path+".missing", ""); err == nil {
		t.Error("a missing kubeconfig was accepted")
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := NewClient("", ""); err == nil {
		t.Error("no kubeconfig outside a pod was accepted")
	}
}

// call is one API call made as transitca's service account.
type call struct {
	name string
	do   func(ctx context.Context) error
}

// expectForbidden checks that each call fails with Forbidden.
func expectForbidden(t *testing.T, calls []call) {
	t.Helper()
	for _, c := range calls {
		if err := c.do(t.Context()); !apierrors.IsForbidden(err) {
			t.Errorf("%s: got %v, want Forbidden", c.name, err)
		}
	}
}

// expectAllowed checks that each call succeeds.
func expectAllowed(t *testing.T, calls []call) {
	t.Helper()
	for _, c := range calls {
		if err := c.do(t.Context()); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// What RBAC alone could not refuse, with the shipped manifests on an API
// server of the test's own (the RBAC is cluster-wide): first deploy/rbac
// alone, which grants no pod and no Secret access at all; then with its
// parts istiod/ and ambient/, whose admission policies refuse every
// Secret the CA's service account might create or re-create in
// istio-system but istiod-tls of type kubernetes.io/tls. The escalations
// are each Forbidden; what the daemon does is allowed.
func TestRBACRefusesEscalations(t *testing.T) {
	srv, err := kubetest.Start()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(srv.Stop)
	env := kubetest.NewOn(t, srv)
	env.Apply(t, kubetest.RBACManifestsWith()...)
	system := &kubetest.Env{Server: srv, Client: env.Client, Namespace: "istio-system"}
	sa, err := kubernetes.NewForConfig(system.ServiceAccountConfig(t, "transitca"))
	if err != nil {
		t.Fatal(err)
	}
	admin := env.Client
	const ns = "istio-system"
	configMap := func(namespace, name string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, Data: map[string]string{"k": "v"}}
	}
	createConfigMap := func(cm *corev1.ConfigMap) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := sa.CoreV1().ConfigMaps(cm.Namespace).Create(ctx, cm, metav1.CreateOptions{})
			return err
		}
	}
	createSecret := func(s *corev1.Secret) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := sa.CoreV1().Secrets(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
			return err
		}
	}
	crt, key := tlsPair(t)
	tlsData := func() map[string][]byte {
		return map[string][]byte{"tls.crt": crt, "tls.key": key, "ca.crt": crt}
	}
	istiodTLS := func() *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: IstiodSecretName, Namespace: ns}, Type: corev1.SecretTypeTLS, Data: tlsData()}
	}
	listPods := func(ctx context.Context) error {
		_, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		return err
	}
	kubetest.AwaitRBACPolicies(t, srv)

	// deploy/rbac alone.
	env.ServiceAccount(t, "web")
	env.Pod(t, "web-0", "web", "node-a")
	expectForbidden(t, []call{
		{"list every pod (ambient mode off)", listPods},
		{"get a pod (ambient mode off)", func(ctx context.Context) error {
			_, err := sa.CoreV1().Pods(env.Namespace).Get(ctx, "web-0", metav1.GetOptions{})
			return err
		}},
		{"create istiod-tls (istiod certificate off)", createSecret(istiodTLS())},
		{"create ConfigMap istio in istio-system", createConfigMap(configMap(ns, "istio"))},
		{"create another ConfigMap", createConfigMap(configMap(env.Namespace, "app-config"))},
		{"create a ConfigMap with a generated name", createConfigMap(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "istio-ca-root-cert-", Namespace: env.Namespace}})},
		{"create istiod's leader-election Lease", func(ctx context.Context) error {
			l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "istio-leader", Namespace: ns}}
			_, err := sa.CoordinationV1().Leases(ns).Create(ctx, l, metav1.CreateOptions{})
			return err
		}},
	})
	if err := admin.CoreV1().Secrets(ns).Delete(t.Context(), IstiodSecretName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	expectAllowed(t, []call{
		{"create istio-ca-root-cert", createConfigMap(configMap(env.Namespace, RootCertConfigMap))},
		{"create Lease transitca", func(ctx context.Context) error {
			l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: testLease, Namespace: ns}}
			_, err := sa.CoordinationV1().Leases(ns).Create(ctx, l, metav1.CreateOptions{})
			return err
		}},
	})

	// With istiod/ and ambient/.
	env.Apply(t, kubetest.RBACManifests()...)
	kubetest.AwaitRBACPolicies(t, srv)
	// istiod-tls as someone else left it, of the wrong type: the daemon
	// deletes it to create it again.
	if _, err := admin.CoreV1().Secrets(ns).Create(t.Context(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: IstiodSecretName, Namespace: ns}, Data: tlsData()}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectAllowed(t, []call{
		{"list every pod (ambient mode on)", listPods},
		{"delete istiod-tls of the wrong type", func(ctx context.Context) error {
			return sa.CoreV1().Secrets(ns).Delete(ctx, IstiodSecretName, metav1.DeleteOptions{})
		}},
	})
	token := istiodTLS()
	token.Type = corev1.SecretTypeServiceAccountToken
	token.Annotations = map[string]string{corev1.ServiceAccountNameKey: "istiod"}
	token.Data = nil
	extraKey := istiodTLS()
	extraKey.Data["kubeconfig"] = []byte("apiVersion: v1\nkind: Config\n")
	labelled := istiodTLS()
	labelled.Labels = map[string]string{"istio/multiCluster": "true"}
	expectForbidden(t, []call{
		{"re-create istiod-tls as a service-account-token Secret", createSecret(token)},
		{"create istiod-tls as an Opaque Secret", createSecret(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: IstiodSecretName, Namespace: ns}, Data: tlsData()})},
		{"create istiod-tls with a key beyond tls.crt, tls.key and ca.crt", createSecret(extraKey)},
		{"create istiod-tls labelled istio/multiCluster", createSecret(labelled)},
		{"create Secret cacerts", createSecret(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cacerts", Namespace: ns}, Data: map[string][]byte{"ca-cert.pem": []byte("c"), "ca-key.pem": []byte("k")}})},
		{"create a Secret labelled istio/multiCluster", createSecret(&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "istio-remote-secret-west", Namespace: ns, Labels: map[string]string{"istio/multiCluster": "true"}},
			Data:       map[string][]byte{"west": []byte("apiVersion: v1\nkind: Config\n")},
		})},
		{"create a service-account-token Secret", createSecret(&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "istiod-token", Namespace: ns, Annotations: map[string]string{corev1.ServiceAccountNameKey: "istiod"}},
			Type:       corev1.SecretTypeServiceAccountToken,
		})},
		{"create ConfigMap istio in istio-system", createConfigMap(configMap(ns, "istio"))},
	})
	expectAllowed(t, []call{
		{"create istiod-tls", createSecret(istiodTLS())},
		{"update istiod-tls", func(ctx context.Context) error {
			s, err := sa.CoreV1().Secrets(ns).Get(ctx, IstiodSecretName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.Data = tlsData()
			s.Data["ca.crt"] = append(slices.Clone(crt), crt...)
			_, err = sa.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
			return err
		}},
	})
	expectForbidden(t, []call{
		{"label istiod-tls istio/multiCluster", func(ctx context.Context) error {
			s, err := sa.CoreV1().Secrets(ns).Get(ctx, IstiodSecretName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.Labels = map[string]string{"istio/multiCluster": "true"}
			_, err = sa.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
			return err
		}},
		{"add a kubeconfig to istiod-tls", func(ctx context.Context) error {
			s, err := sa.CoreV1().Secrets(ns).Get(ctx, IstiodSecretName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.Data["kubeconfig"] = []byte("apiVersion: v1\nkind: Config\n")
			_, err = sa.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
			return err
		}},
	})

	// What is left: istiod-tls as the daemon writes it, and nothing else.
	secrets, err := admin.CoreV1().Secrets(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(secrets.Items) != 1 || secrets.Items[0].Name != IstiodSecretName || secrets.Items[0].Type != corev1.SecretTypeTLS ||
		len(secrets.Items[0].Labels) != 0 || len(secrets.Items[0].Data) != 3 {
		t.Errorf("Secrets in %s after the refused writes: %v", ns, secretNames(secrets.Items))
	}
	if _, err := admin.CoreV1().ConfigMaps(ns).Get(t.Context(), "istio", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ConfigMap istio in %s after the refused create: %v", ns, err)
	}
}

func secretNames(items []corev1.Secret) []string {
	var out []string
	for _, s := range items {
		out = append(out, fmt.Sprintf("%s (%s, labels %v, keys %v)", s.Name, s.Type, s.Labels, slices.Sorted(maps.Keys(s.Data))))
	}
	return out
}

// tlsPair is a self-signed certificate and its key, PEM: what a Secret of
// type kubernetes.io/tls holds (the API server warns of anything else).
func tlsPair(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"istiod.istio-system.svc"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}
