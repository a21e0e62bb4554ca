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

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
)

// Apply creates the objects in YAML manifest files (several documents per
// file allowed), as "kubectl create -f" would, creating the namespace of a
// namespaced object first when it is missing. Objects that exist already
// are left as they are. It knows the kinds RBAC manifests use: Namespace,
// ServiceAccount, ClusterRole, ClusterRoleBinding, Role and RoleBinding.
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
	default:
		return fmt.Errorf("kind %T is not supported", obj)
	}
	return err
}

// RBACManifests are the files of the shipped least-privilege RBAC
// (deploy/rbac in this repository), in the order to apply them, so that
// tests run the daemon under exactly what ships.
func RBACManifests() []string {
	_, here, _, ok := goruntime.Caller(0)
	if !ok {
		panic("kubetest: cannot locate the repository")
	}
	dir := filepath.Join(filepath.Dir(here), "..", "..", "deploy", "rbac")
	var out []string
	for _, f := range []string{"serviceaccount", "clusterrole", "clusterrolebinding", "role", "rolebinding"} {
		out = append(out, filepath.Join(dir, f+".yaml"))
	}
	return out
}
