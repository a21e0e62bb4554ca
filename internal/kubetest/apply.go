package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// Apply creates the objects in YAML manifest files (several documents per
// file allowed), as "kubectl create -f" would, creating the namespace of a
// namespaced object first when it is missing. Objects that exist already
// are left as they are. It knows the kinds RBAC manifests use: Namespace,
// ServiceAccount, ClusterRole, ClusterRoleBinding, Role, RoleBinding,
// ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding. The API
// server puts an admission policy in force a moment after it is created;
// AwaitForbidden waits for that.
func (e *Env) Apply(tb testing.TB, paths ...string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), callLimit)
	defer cancel()
	if err := ApplyFiles(ctx, e.Client, paths...); err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
}

// ApplyFiles is Apply for callers that are not tests, such as benchmarks:
// it creates the objects of the manifest files with client.
func ApplyFiles(ctx context.Context, client kubernetes.Interface, paths ...string) error {
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := dec.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("apply %s: %w", path, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
			if err != nil {
				return fmt.Errorf("apply %s: %w", path, err)
			}
			if err := create(ctx, client, obj); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("apply %s: %w", path, err)
			}
		}
	}
	return nil
}

func create(ctx context.Context, c kubernetes.Interface, obj runtime.Object) error {
	if m, ok := obj.(metav1.Object); ok && m.GetNamespace() != "" {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: m.GetNamespace()}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	var err error
	opts := metav1.CreateOptions{}
	switch o := obj.(type) {
	case *corev1.Namespace:
		_, err = c.CoreV1().Namespaces().Create(ctx, o, opts)
	case *corev1.ServiceAccount:
		_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, opts)
	case *rbacv1.ClusterRole:
		_, err = c.RbacV1().ClusterRoles().Create(ctx, o, opts)
	case *rbacv1.ClusterRoleBinding:
		_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, opts)
	case *rbacv1.Role:
		_, err = c.RbacV1().Roles(o.Namespace).Create(ctx, o, opts)
	case *rbacv1.RoleBinding:
		_, err = c.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, opts)
	case *admissionregistrationv1.ValidatingAdmissionPolicy:
		_, err = c.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, o, opts)
	case *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
		_, err = c.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, o, opts)
	default:
		return fmt.Errorf("kind %T is not supported", obj)
	}
	return err
}

// The optional parts of the shipped RBAC, each a directory under
// deploy/rbac.
const (
	// RBACIstiod is istiod's serving certificate (kubernetes.istiod): the
	// istiod-tls Secret and its admission policy.
	RBACIstiod = "istiod"
	// RBACAmbient is ambient mode (auth.trusted_node_accounts): read access
	// to pods.
	RBACAmbient = "ambient"
)

// RBACManifests are the files of the shipped least-privilege RBAC with
// every optional part (deploy/rbac, deploy/rbac/istiod and
// deploy/rbac/ambient in this repository), in the order to apply them, so
// that tests run the daemon under exactly what ships.
func RBACManifests() []string {
	return RBACManifestsWith(RBACIstiod, RBACAmbient)
}

// RBACManifestsWith are the files of deploy/rbac and of the named optional
// parts only (RBACIstiod, RBACAmbient), in the order to apply them.
func RBACManifestsWith(parts ...string) []string {
	_, here, _, ok := goruntime.Caller(0)
	if !ok {
		panic("kubetest: cannot locate the repository")
	}
	dir := filepath.Join(filepath.Dir(here), "..", "..", "deploy", "rbac")
	var out []string
	for _, f := range []string{"serviceaccount", "clusterrole", "clusterrolebinding", "role", "rolebinding", "admissionpolicy"} {
		out = append(out, filepath.Join(dir, f+".yaml"))
	}
	files := map[string][]string{
		RBACIstiod:  {"role", "rolebinding", "admissionpolicy"},
		RBACAmbient: {"clusterrole", "clusterrolebinding"},
	}
	for _, p := range parts {
		fs, ok := files[p]
		if !ok {
			panic("kubetest: no RBAC part " + p)
		}
		for _, f := range fs {
			out = append(out, filepath.Join(dir, p, f+".yaml"))
		}
	}
	return out
}

// AwaitForbidden calls call until it fails with Forbidden, as a write an
// admission policy refuses does once the API server has loaded the policy,
// and fails the test when that does not happen within a minute. Use a
// dry-run write for call.
func AwaitForbidden(tb testing.TB, what string, call func(ctx context.Context) error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), time.Minute)
	defer cancel()
	var last error
	for {
		last = call(ctx)
		if apierrors.IsForbidden(last) {
			return
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("kubetest: %s: not refused after a minute, last answer %v", what, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// AwaitRBACPolicies waits until the server enforces the admission
// policies of the shipped RBAC: until a dry-run create of the ConfigMap
// istio-system/istio by transitca's service account (the admin
// impersonating it) is refused, and, when deploy/rbac/istiod was applied,
// one of the Secret istio-system/cacerts. Call it after applying the
// manifests when a test relies on the policies being in force.
func AwaitRBACPolicies(tb testing.TB, s *Server) {
	tb.Helper()
	cfg := s.AdminConfig()
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:istio-system:transitca"}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	admin, err := s.AdminClient()
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	meta := metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"}
	AwaitForbidden(tb, "dry-run create of ConfigMap istio-system/istio as transitca", func(ctx context.Context) error {
		_, err := c.CoreV1().ConfigMaps(meta.Namespace).Create(ctx, &corev1.ConfigMap{ObjectMeta: meta}, dryRun)
		return err
	})
	_, err = admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(tb.Context(), "transitca-istiod", metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return
	case err != nil:
		tb.Fatalf("kubetest: %v", err)
	}
	meta.Name = "cacerts"
	AwaitForbidden(tb, "dry-run create of Secret istio-system/cacerts as transitca", func(ctx context.Context) error {
		_, err := c.CoreV1().Secrets(meta.Namespace).Create(ctx, &corev1.Secret{ObjectMeta: meta}, dryRun)
		return err
	})
}
