package deploy

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
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/transitca/transitca/internal/kubetest"
)

// rbacKinds are the kinds of deploy/rbac, which the chart renders too.
var rbacKinds = map[string]func() runtime.Object{
	"ServiceAccount":                   func() runtime.Object { return &corev1.ServiceAccount{} },
	"ClusterRole":                      func() runtime.Object { return &rbacv1.ClusterRole{} },
	"ClusterRoleBinding":               func() runtime.Object { return &rbacv1.ClusterRoleBinding{} },
	"Role":                             func() runtime.Object { return &rbacv1.Role{} },
	"RoleBinding":                      func() runtime.Object { return &rbacv1.RoleBinding{} },
	"ValidatingAdmissionPolicy":        func() runtime.Object { return &admissionregistrationv1.ValidatingAdmissionPolicy{} },
	"ValidatingAdmissionPolicyBinding": func() runtime.Object { return &admissionregistrationv1.ValidatingAdmissionPolicyBinding{} },
}

// TestRBACMatchesShipped checks that the chart's RBAC and admission
// policies grant and refuse what deploy/rbac's do, no more and no less,
// for each way the configuration turns the optional parts on or off, so
// that the two cannot drift apart: deploy/rbac itself always,
// deploy/rbac/istiod with kubernetes.istiod on (the default), and
// deploy/rbac/ambient with auth.trusted_node_accounts set.
func TestRBACMatchesShipped(t *testing.T) {
	tests := []struct {
		name, values string
		parts        []string
	}{
		{"defaults", "", []string{"istiod"}},
		{"istiod certificate off", "config: {kubernetes: {istiod: {enabled: false}}}", nil},
		{"kubernetes off", "config: {kubernetes: {enabled: false}}", nil},
		{"ambient", "config: {auth: {trusted_node_accounts: [istio-system/ztunnel]}}", []string{"istiod", "ambient"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var files []string
			if tt.values != "" {
				files = append(files, writeTemp(t, "values.yaml", []byte(tt.values)))
			}
			r, err := render(t, "istio-system", files...)
			if err != nil {
				t.Fatal(err)
			}
			chart := map[string]string{}
			for _, o := range r.objects {
				newObj, ok := rbacKinds[o.GetKind()]
				if !ok {
					continue
				}
				obj := newObj()
				fromUnstructured(t, o, obj)
				chart[o.GetKind()+" "+o.GetNamespace()+"/"+o.GetName()] = rbacView(t, obj)
			}
			shipped := shippedRBAC(t, tt.parts...)
			for _, k := range slices.Sorted(maps.Keys(shipped)) {
				switch got, ok := chart[k]; {
				case !ok:
					t.Errorf("the chart renders no %s", k)
				case got != shipped[k]:
					t.Errorf("%s differs from deploy/rbac:\nchart:\n%s\nshipped:\n%s", k, got, shipped[k])
				}
			}
			for _, k := range slices.Sorted(maps.Keys(chart)) {
				if _, ok := shipped[k]; !ok {
					t.Errorf("the chart renders %s, which deploy/rbac (parts %v) does not hold", k, tt.parts)
				}
			}
		})
	}
}

// shippedRBAC reads the objects of deploy/rbac and of the named parts
// (its subdirectories), strictly, keyed by kind, namespace and name.
func shippedRBAC(t *testing.T, parts ...string) map[string]string {
	t.Helper()
	files := []string{"serviceaccount", "clusterrole", "clusterrolebinding", "role", "rolebinding", "admissionpolicy"}
	var paths []string
	for _, f := range files {
		paths = append(paths, rbacDir+"/"+f+".yaml")
	}
	partFiles := map[string][]string{"istiod": {"role", "rolebinding", "admissionpolicy"}, "ambient": {"clusterrole", "clusterrolebinding"}}
	for _, p := range parts {
		for _, f := range partFiles[p] {
			paths = append(paths, rbacDir+"/"+p+"/"+f+".yaml")
		}
	}
	out := map[string]string{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range splitYAML(t, data) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			newObj, ok := rbacKinds[tm.Kind]
			if !ok {
				t.Fatalf("%s: kind %q", p, tm.Kind)
			}
			obj := newObj()
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			m := obj.(metav1.Object)
			out[tm.Kind+" "+m.GetNamespace()+"/"+m.GetName()] = rbacView(t, obj)
		}
	}
	return out
}

// rbacView is what an RBAC object or admission policy grants or refuses:
// its name, namespace, rules, role reference, subjects or policy, without
// labels and comments.
func rbacView(t *testing.T, o runtime.Object) string {
	t.Helper()
	switch o := o.(type) {
	case *rbacv1.ClusterRole:
		return fmt.Sprintf("%s\n%s", o.Name, mustYAML(t, o.Rules))
	case *rbacv1.Role:
		return fmt.Sprintf("%s/%s\n%s", o.Namespace, o.Name, mustYAML(t, o.Rules))
	case *rbacv1.ClusterRoleBinding:
		return fmt.Sprintf("%s\n%s\n%s", o.Name, mustYAML(t, o.RoleRef), mustYAML(t, o.Subjects))
	case *rbacv1.RoleBinding:
		return fmt.Sprintf("%s/%s\n%s\n%s", o.Namespace, o.Name, mustYAML(t, o.RoleRef), mustYAML(t, o.Subjects))
	case *corev1.ServiceAccount:
		return o.Namespace + "/" + o.Name
	case *admissionregistrationv1.ValidatingAdmissionPolicy:
		return fmt.Sprintf("%s\n%s", o.Name, mustYAML(t, o.Spec))
	case *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
		return fmt.Sprintf("%s\n%s", o.Name, mustYAML(t, o.Spec))
	}
	t.Fatalf("rbacView: %T", o)
	return ""
}

// "helm template transitca deploy/charts/transitca -n istio-system", as a
// user types it: no --kube-version, so Helm's default capabilities (its
// offline Kubernetes version, far older than the test server's, and API
// versions without kinds). The chart renders, admission policies
// included. Rendered against a cluster, as "helm install" renders it (the
// server's version and API versions, kinds included), it renders for the
// test server and refuses a cluster that does not serve
// ValidatingAdmissionPolicy, naming what it lacks.
func TestHelmTemplateWithDefaultCapabilities(t *testing.T) {
	r, err := renderWith(t, "istio-system", nil)
	if err != nil {
		t.Fatalf("helm template without --kube-version: %v", err)
	}
	for _, kind := range []string{"StatefulSet", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		if len(r.ofKind(kind)) == 0 {
			t.Errorf("helm template without --kube-version rendered no %s", kind)
		}
	}

	c, err := kubetest.Shared(t).AdminClient()
	if err != nil {
		t.Fatal(err)
	}
	served, err := action.GetVersionSet(c.Discovery())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := renderWith(t, "istio-system", func(i *action.Install) {
		i.KubeVersion, i.APIVersions = serverVersion(t), served
	}); err != nil {
		t.Fatalf("rendered for the test server's capabilities: %v", err)
	}
	var old []string
	for _, v := range served {
		if !strings.HasPrefix(v, "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy") {
			old = append(old, v)
		}
	}
	_, err = renderWith(t, "istio-system", func(i *action.Install) {
		i.KubeVersion, i.APIVersions = mustParseKubeVersion(t, "v1.29.4"), old
	})
	if err == nil || !strings.Contains(err.Error(), "ValidatingAdmissionPolicy") || !strings.Contains(err.Error(), "1.30") {
		t.Fatalf("rendered for a cluster without ValidatingAdmissionPolicy: %v, want a refusal naming it and Kubernetes 1.30", err)
	}
}

// The chart's RBAC and admission policies on the real API server, in a
// release namespace of their own (their names and the service account's
// user name come from the values), acting as the chart's service account
// with a token of its own: what RBAC alone would let the CA do beyond its
// job is Forbidden, what the daemon does is allowed. Ambient mode added
// later grants read access to pods, which the defaults do not.
func TestChartRBACRefusesEscalations(t *testing.T) {
	env := kubetest.New(t)
	a := newApplier(t, env)
	const name = "transitca-rbac"
	releaseNS := env.CreateNamespace(t, "chart-rbac-"+env.Namespace).Name
	istiodNS := env.CreateNamespace(t, "mesh-"+env.Namespace).Name
	values := fmt.Sprintf("fullnameOverride: %s\nconfig:\n  kubernetes:\n    istiod:\n      namespace: %s\n", name, istiodNS)
	apply := func(values string) {
		t.Helper()
		r, err := render(t, releaseNS, writeTemp(t, "values.yaml", []byte(values)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		for _, o := range r.objects {
			if _, ok := rbacKinds[o.GetKind()]; !ok {
				continue
			}
			if err := a.apply(ctx, o); err != nil {
				t.Fatalf("apply %s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
	}
	apply(values)
	release := &kubetest.Env{Server: env.Server, Client: env.Client, Namespace: releaseNS}
	sa, err := kubernetes.NewForConfig(release.ServiceAccountConfig(t, name))
	if err != nil {
		t.Fatal(err)
	}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	kubetest.AwaitForbidden(t, "dry-run create of ConfigMap istio", func(ctx context.Context) error {
		_, err := sa.CoreV1().ConfigMaps(istiodNS).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio"}}, dryRun)
		return err
	})
	kubetest.AwaitForbidden(t, "dry-run create of Secret cacerts", func(ctx context.Context) error {
		_, err := sa.CoreV1().Secrets(istiodNS).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cacerts"}}, dryRun)
		return err
	})

	crt, key := tlsPair(t)
	tlsSecret := func(typ corev1.SecretType, labels map[string]string, keys ...string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istiod-tls", Labels: labels}, Type: typ, Data: map[string][]byte{}}
		for _, k := range keys {
			s.Data[k] = map[string][]byte{"tls.crt": crt, "tls.key": key}[k]
			if s.Data[k] == nil {
				s.Data[k] = crt
			}
		}
		return s
	}
	createSecret := func(ns string, s *corev1.Secret) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := sa.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{})
			return err
		}
	}
	createConfigMap := func(ns, name string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := sa.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
			return err
		}
	}
	createLease := func(name string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := sa.CoordinationV1().Leases(releaseNS).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
			return err
		}
	}
	listPods := func(ctx context.Context) error {
		_, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		return err
	}
	token := tlsSecret(corev1.SecretTypeServiceAccountToken, nil)
	token.Annotations = map[string]string{corev1.ServiceAccountNameKey: "istiod"}
	forbidden := []struct {
		name string
		do   func(context.Context) error
	}{
		{"list every pod (ambient mode off)", listPods},
		{"create ConfigMap istio", createConfigMap(istiodNS, "istio")},
		{"create another ConfigMap", createConfigMap(env.Namespace, "app-config")},
		{"create Secret cacerts", createSecret(istiodNS, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cacerts"}})},
		{"create istiod-tls as a service-account-token Secret", createSecret(istiodNS, token)},
		{"create istiod-tls labelled istio/multiCluster", createSecret(istiodNS, tlsSecret(corev1.SecretTypeTLS, map[string]string{"istio/multiCluster": "true"}, "tls.crt", "tls.key"))},
		{"create istiod-tls with a kubeconfig in it", createSecret(istiodNS, tlsSecret(corev1.SecretTypeTLS, nil, "tls.crt", "tls.key", "west"))},
		{"create istiod-tls in the release namespace", createSecret(releaseNS, tlsSecret(corev1.SecretTypeTLS, nil, "tls.crt", "tls.key"))},
		{"create another Lease", createLease("istio-leader")},
	}
	for _, f := range forbidden {
		if err := f.do(t.Context()); !apierrors.IsForbidden(err) {
			t.Errorf("%s: got %v, want Forbidden", f.name, err)
		}
	}
	allowed := []struct {
		name string
		do   func(context.Context) error
	}{
		{"create istio-ca-root-cert", createConfigMap(env.Namespace, "istio-ca-root-cert")},
		{"create istiod-tls", createSecret(istiodNS, tlsSecret(corev1.SecretTypeTLS, map[string]string{"app.kubernetes.io/managed-by": "transitca"}, "tls.crt", "tls.key", "ca.crt"))},
		{"update istiod-tls", func(ctx context.Context) error {
			s, err := sa.CoreV1().Secrets(istiodNS).Get(ctx, "istiod-tls", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if s.Data == nil {
				s.Data = map[string][]byte{}
			}
			s.Data["ca.crt"] = append(slices.Clone(crt), crt...)
			_, err = sa.CoreV1().Secrets(istiodNS).Update(ctx, s, metav1.UpdateOptions{})
			return err
		}},
		{"create the leader-election Lease", createLease("transitca")},
	}
	for _, f := range allowed {
		if err := f.do(t.Context()); err != nil {
			t.Errorf("%s: %v", f.name, err)
		}
	}

	apply(values + "  auth:\n    trusted_node_accounts: [istio-system/ztunnel]\n")
	deadline := time.Now().Add(10 * time.Second)
	for err := listPods(t.Context()); err != nil; err = listPods(t.Context()) {
		if time.Now().After(deadline) {
			t.Fatalf("list every pod with ambient mode on: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mustParseKubeVersion(t *testing.T, v string) *chartutil.KubeVersion {
	t.Helper()
	kv, err := chartutil.ParseKubeVersion(v)
	if err != nil {
		t.Fatal(err)
	}
	return kv
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
