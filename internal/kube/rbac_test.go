package kube

import (
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
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
	istiodTLS := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istiod-tls", Namespace: "istio-system"}, StringData: map[string]string{"tls.crt": "c"}}

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
			s.StringData = map[string]string{"tls.crt": "d"}
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
