package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/transitca/transitca/internal/kubetest"
)

// What of the pinned istio.io/istio module the cluster is set up with,
// relative to the module's directory.
const (
	// istioCRDs are all of Istio's CustomResourceDefinitions, as the base
	// chart installs them.
	istioCRDs = "manifests/charts/base/files/crd-all.gen.yaml"
	// istiodRendered is istiod's chart rendered by istioctl for the default
	// profile: Istio's own test of its renderer keeps this file equal to
	// what "istioctl manifest generate" prints. The values
	// deploy/istio/istio-operator.yaml sets (caAddress, pilotCertProvider
	// istiod, trustDomain, pilot.env) change nothing in the chart's RBAC,
	// whose templates depend only on pilotCertProvider (istiod is the
	// default), resourceScope, istiodRemote, taint and a few other env
	// values; their pilot.env is applied to the Deployment's environment
	// here. (Rendering the chart here would need Helm 4, which this module
	// does not otherwise depend on.)
	istiodRendered = "operator/cmd/mesh/testdata/manifest-generate/output/pilot_default.golden.yaml"
)

// istiodNamespace is where istiod and transitca run, as in the chart.
const istiodNamespace = "istio-system"

// istioCluster is a real API server set up as a mesh's cluster before
// Istio's programs run in it: transitca's RBAC (deploy/rbac), Istio's CRDs,
// and istiod's service account, RBAC and mesh ConfigMap from istiod's
// rendered chart, all applied server-side. Its istiod fields are the
// Deployment's container, for running pilot-discovery the way the chart
// does.
type istioCluster struct {
	srv    *kubetest.Server
	client kubernetes.Interface
	// admin is an Env on istio-system for the admin's helpers (tokens,
	// service accounts).
	system *kubetest.Env
	// istiodArgs and istiodEnv are the discovery container's arguments and
	// literal environment (with deploy/istio's pilot.env over it); values
	// the kubelet fills in from the pod (fieldRef) are left to the caller.
	istiodArgs []string
	istiodEnv  map[string]string
	// meshConfig is the mesh ConfigMap's "mesh" key, as mounted at
	// /etc/istio/config/mesh.
	meshConfig string
	// setup is how long the API server took to start and be set up.
	setup time.Duration
}

func startIstioCluster(t *testing.T) *istioCluster {
	t.Helper()
	began := time.Now()
	srv, err := kubetest.Start()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(srv.Stop)
	client, err := srv.AdminClient()
	if err != nil {
		t.Fatal(err)
	}
	c := &istioCluster{srv: srv, client: client, system: &kubetest.Env{Server: srv, Client: client, Namespace: istiodNamespace}}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := kubetest.ApplyFiles(ctx, client, kubetest.RBACManifests()...); err != nil {
		t.Fatal(err)
	}

	mod := istioModuleDir(t)
	crds, err := readObjects(filepath.Join(mod, istioCRDs))
	if err != nil {
		t.Fatal(err)
	}
	rendered, err := readObjects(filepath.Join(mod, istiodRendered))
	if err != nil {
		t.Fatal(err)
	}
	var apply []*unstructured.Unstructured
	apply = append(apply, crds...)
	var deployment *appsv1.Deployment
	for _, o := range rendered {
		switch o.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			apply = append(apply, o)
		case "ConfigMap":
			if o.GetName() == "istio" {
				apply = append(apply, o)
				c.meshConfig, _, _ = unstructured.NestedString(o.Object, "data", "mesh")
			}
		case "Deployment":
			deployment = &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, deployment); err != nil {
				t.Fatal(err)
			}
		}
	}
	if deployment == nil || c.meshConfig == "" {
		t.Fatalf("%s has no istiod Deployment or no mesh ConfigMap", istiodRendered)
	}
	if err := serverSideApply(ctx, srv, apply); err != nil {
		t.Fatal(err)
	}
	if err := c.discoveryContainer(deployment); err != nil {
		t.Fatal(err)
	}
	// The CRDs serve once established.
	if err := eventually(time.Minute, 200*time.Millisecond, func() error {
		_, err := client.Discovery().ServerResourcesForGroupVersion("security.istio.io/v1")
		return err
	}); err != nil {
		t.Fatalf("Istio's CRDs are not served: %v", err)
	}
	c.setup = time.Since(began)
	t.Logf("API server started and set up with %d Istio CRDs and istiod's RBAC in %v", len(crds), c.setup.Round(time.Millisecond))
	return c
}

// discoveryContainer takes the discovery container's arguments and
// environment from the rendered Deployment, then deploy/istio's pilot.env.
func (c *istioCluster) discoveryContainer(d *appsv1.Deployment) error {
	i := slices.IndexFunc(d.Spec.Template.Spec.Containers, func(c corev1.Container) bool { return c.Name == "discovery" })
	if i < 0 {
		return errors.New("the rendered istiod Deployment has no discovery container")
	}
	ctr := d.Spec.Template.Spec.Containers[i]
	c.istiodArgs = ctr.Args
	c.istiodEnv = map[string]string{}
	for _, e := range ctr.Env {
		if e.ValueFrom == nil {
			c.istiodEnv[e.Name] = e.Value
		}
	}
	b, err := os.ReadFile(istioOperatorFile)
	if err != nil {
		return err
	}
	var iop struct {
		Spec struct {
			Values struct {
				Pilot struct {
					Env map[string]string `json:"env"`
				} `json:"pilot"`
			} `json:"values"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &iop); err != nil {
		return fmt.Errorf("%s: %w", istioOperatorFile, err)
	}
	if len(iop.Spec.Values.Pilot.Env) == 0 {
		return fmt.Errorf("%s sets no pilot.env", istioOperatorFile)
	}
	for k, v := range iop.Spec.Values.Pilot.Env {
		c.istiodEnv[k] = v
	}
	return nil
}

// readObjects decodes the objects of a multi-document YAML file.
func readObjects(path string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		o := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &o.Object); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(o.Object) == 0 {
			continue
		}
		out = append(out, o)
	}
}

// serverSideApply applies the objects the way "kubectl apply
// --server-side" does: some of Istio's CRDs are too big for the annotation
// a client-side apply writes. A namespaced object's namespace is created
// first when missing.
func serverSideApply(ctx context.Context, srv *kubetest.Server, objs []*unstructured.Unstructured) error {
	cfg := srv.AdminConfig()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery()))
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s %s: %w", gvk.Kind, o.GetName(), err)
		}
		data, err := o.MarshalJSON()
		if err != nil {
			return err
		}
		var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := o.GetNamespace()
			if ns == "" {
				return fmt.Errorf("%s %s has no namespace", gvk.Kind, o.GetName())
			}
			if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
			r = dyn.Resource(m.Resource).Namespace(ns)
		}
		force := true
		if _, err := r.Patch(ctx, o.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: "transitca-e2e", Force: &force}); err != nil {
			return fmt.Errorf("apply %s %s: %w", gvk.Kind, o.GetName(), err)
		}
	}
	return nil
}
