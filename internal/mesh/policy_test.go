package mesh

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/internal/meshtest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// cluster is a test's corner of the shared API server with Istio's CRDs:
// its own root namespace, so that its mesh-wide policy is its own.
type cluster struct {
	t     *testing.T
	kube  kubernetes.Interface
	istio istioclient.Interface
	env   *kubetest.Env
	root  string
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	env := kubetest.New(t)
	meshtest.InstallCRDs(t, env.Server)
	c := &cluster{t: t, kube: env.Client, istio: meshtest.IstioClient(t, env.Server), env: env}
	c.root = c.namespace("root", nil)
	return c
}

// namespace creates a namespace named after the test's and returns its name.
func (c *cluster) namespace(suffix string, labels map[string]string) string {
	c.t.Helper()
	name := c.env.Namespace + "-" + suffix
	if _, err := c.kube.CoreV1().Namespaces().Create(c.t.Context(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
	return name
}

// serviceAccount creates a service account unless it exists: pods need one.
func (c *cluster) serviceAccount(ns, name string) {
	c.t.Helper()
	_, err := c.kube.CoreV1().ServiceAccounts(ns).Create(c.t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		c.t.Fatal(err)
	}
}

func (c *cluster) pod(ns, name, sa string, labels map[string]string) *corev1.Pod {
	c.t.Helper()
	c.serviceAccount(ns, sa)
	p, err := c.kube.CoreV1().Pods(ns).Create(c.t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: "node-a",
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}

func (c *cluster) peerAuthentication(ns, name string, selector map[string]string, mode securityapi.PeerAuthentication_MutualTLS_Mode, ports map[uint32]securityapi.PeerAuthentication_MutualTLS_Mode) {
	c.t.Helper()
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if selector != nil {
		pa.Spec.Selector = &typeapi.WorkloadSelector{MatchLabels: selector}
	}
	pa.Spec.Mtls = &securityapi.PeerAuthentication_MutualTLS{Mode: mode}
	if ports != nil {
		pa.Spec.PortLevelMtls = map[uint32]*securityapi.PeerAuthentication_MutualTLS{}
		for p, m := range ports {
			pa.Spec.PortLevelMtls[p] = &securityapi.PeerAuthentication_MutualTLS{Mode: m}
		}
	}
	if _, err := c.istio.SecurityV1().PeerAuthentications(ns).Create(c.t.Context(), pa, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("create PeerAuthentication %s/%s: %v", ns, name, err)
	}
}

func (c *cluster) destinationRule(ns, name, host string, tp *networkingapi.TrafficPolicy, subsets ...*networkingapi.Subset) {
	c.t.Helper()
	dr := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	dr.Spec.Host, dr.Spec.TrafficPolicy, dr.Spec.Subsets = host, tp, subsets
	if _, err := c.istio.NetworkingV1().DestinationRules(ns).Create(c.t.Context(), dr, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("create DestinationRule %s/%s: %v", ns, name, err)
	}
}

// resolve reads the cluster as the report does and resolves its policy.
func (c *cluster) resolve() map[string]*NamespacePolicy {
	c.t.Helper()
	objs, err := Read(c.t.Context(), c.kube, c.istio, "")
	if err != nil {
		c.t.Fatal(err)
	}
	p := Resolve(objs, Options{RootNamespace: c.root})
	out := map[string]*NamespacePolicy{}
	for _, n := range p.Namespaces {
		out[n.Namespace] = n
	}
	return out
}

func workloadModes(n *NamespacePolicy) map[string]string {
	out := map[string]string{}
	for _, w := range n.Workloads {
		s := fmt.Sprintf("%s from %q in_mesh=%v", w.Mode, w.ModeFrom, w.InMesh)
		for _, p := range slices.Sorted(maps.Keys(w.Ports)) {
			s += fmt.Sprintf(" %d:%s", p, w.Ports[p])
		}
		out[w.Name] = s
	}
	return out
}

const (
	strict     = securityapi.PeerAuthentication_MutualTLS_STRICT
	permissive = securityapi.PeerAuthentication_MutualTLS_PERMISSIVE
	disable    = securityapi.PeerAuthentication_MutualTLS_DISABLE
	unset      = securityapi.PeerAuthentication_MutualTLS_UNSET
)

var injected = map[string]string{LabelInjection: "enabled"}

// PeerAuthentications resolve as istiod resolves them: the narrowest scope
// that sets a mode wins (workload selector, then namespace, then the
// mesh-wide one in the root namespace), UNSET inherits, the oldest of a
// scope wins, port-level modes override per port, and a selector in the
// root namespace does nothing.
func TestPeerAuthenticationResolution(t *testing.T) {
	c := newCluster(t)
	// The mesh-wide policy: STRICT. A second one, created later, and a
	// workload selector in the root namespace change nothing.
	c.peerAuthentication(c.root, "default", nil, strict, nil)

	inherit := c.namespace("inherit", injected)
	c.pod(inherit, "web", "web", map[string]string{"app": "web"})

	relaxed := c.namespace("relaxed", injected)
	c.peerAuthentication(relaxed, "default", nil, permissive, nil)
	c.pod(relaxed, "web", "web", map[string]string{"app": "web"})

	unsetNS := c.namespace("unset", injected)
	c.peerAuthentication(unsetNS, "default", nil, unset, nil)
	c.pod(unsetNS, "web", "web", map[string]string{"app": "web"})

	mixed := c.namespace("mixed", injected)
	c.peerAuthentication(mixed, "default", nil, strict, nil)
	c.peerAuthentication(mixed, "legacy", map[string]string{"app": "legacy"}, permissive, nil)
	c.peerAuthentication(mixed, "db", map[string]string{"app": "db"}, unset, map[uint32]securityapi.PeerAuthentication_MutualTLS_Mode{5432: disable, 8080: unset})
	c.pod(mixed, "web", "web", map[string]string{"app": "web"})
	c.pod(mixed, "legacy", "legacy", map[string]string{"app": "legacy", "version": "v1"})
	c.pod(mixed, "db", "db", map[string]string{"app": "db"})

	// Two namespace-wide policies: the oldest decides. Creation times are
	// in whole seconds.
	twice := c.namespace("twice", injected)
	c.peerAuthentication(twice, "zz-first", nil, disable, nil)
	// Two workload policies for one pod: the oldest decides.
	c.peerAuthentication(twice, "zz-web-first", map[string]string{"app": "web"}, strict, nil)
	time.Sleep(1100 * time.Millisecond)
	c.peerAuthentication(twice, "aa-second", nil, strict, nil)
	c.peerAuthentication(twice, "aa-web-second", map[string]string{"tier": "front"}, permissive, nil)
	c.pod(twice, "web", "web", map[string]string{"app": "web", "tier": "front"})
	c.pod(twice, "api", "api", map[string]string{"app": "api"})

	c.peerAuthentication(c.root, "later", nil, disable, nil)
	c.peerAuthentication(c.root, "selector", map[string]string{"app": "web"}, disable, nil)

	got := c.resolve()
	meshPA := c.root + "/default"
	for _, tc := range []struct {
		name, ns  string
		mode      Mode
		from      string
		workloads map[string]string
		ignored   int
	}{
		{"mesh-wide inherited", inherit, ModeStrict, meshPA,
			map[string]string{"web": `STRICT from "` + meshPA + `" in_mesh=true`}, 0},
		{"namespace overrides mesh", relaxed, ModePermissive, relaxed + "/default",
			map[string]string{"web": `PERMISSIVE from "` + relaxed + `/default" in_mesh=true`}, 0},
		{"namespace UNSET inherits mesh", unsetNS, ModeStrict, meshPA,
			map[string]string{"web": `STRICT from "` + meshPA + `" in_mesh=true`}, 0},
		{"workload selector and port levels", mixed, ModeStrict, mixed + "/default", map[string]string{
			"web":    `STRICT from "` + mixed + `/default" in_mesh=true`,
			"legacy": `PERMISSIVE from "` + mixed + `/legacy" in_mesh=true`,
			"db":     `STRICT from "` + mixed + `/default" in_mesh=true 5432:DISABLE 8080:STRICT`,
		}, 0},
		{"oldest of a scope wins", twice, ModeDisable, twice + "/zz-first", map[string]string{
			"web": `STRICT from "` + twice + `/zz-web-first" in_mesh=true`,
			"api": `DISABLE from "` + twice + `/zz-first" in_mesh=true`,
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := got[tc.ns]
			if n == nil {
				t.Fatalf("namespace %s not in the policy", tc.ns)
			}
			if n.Mode != tc.mode || n.ModeFrom != tc.from {
				t.Errorf("namespace mode %s from %q, want %s from %q", n.Mode, n.ModeFrom, tc.mode, tc.from)
			}
			if w := workloadModes(n); !maps.Equal(w, tc.workloads) {
				t.Errorf("workloads:\n got %q\nwant %q", w, tc.workloads)
			}
			if len(n.Ignored) != tc.ignored {
				t.Errorf("ignored %q, want %d", n.Ignored, tc.ignored)
			}
		})
	}
	if r := got[c.root]; r == nil || len(r.Ignored) != 2 {
		t.Errorf("root namespace: ignored %v, want the later mesh-wide policy and the workload selector", r)
	}
}

// Without any PeerAuthentication Istio's default is PERMISSIVE.
func TestPeerAuthenticationDefault(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace("plain", injected)
	c.pod(ns, "web", "web", nil)
	n := c.resolve()[ns]
	if n.Mode != ModePermissive || n.ModeFrom != "" {
		t.Errorf("mode %s from %q, want PERMISSIVE from Istio's default", n.Mode, n.ModeFrom)
	}
}

// A namespace is in the mesh by the labels Istio's injection webhook and
// ambient's node agent read; a pod may opt out.
func TestInMesh(t *testing.T) {
	c := newCluster(t)
	for _, tc := range []struct {
		suffix    string
		labels    map[string]string
		dataplane string
		label     string
	}{
		{"inj", map[string]string{LabelInjection: "enabled"}, DataplaneSidecar, "istio-injection=enabled"},
		{"rev", map[string]string{LabelRevision: "canary"}, DataplaneSidecar, "istio.io/rev=canary"},
		{"ambient", map[string]string{LabelDataplaneMode: "ambient"}, DataplaneAmbient, "istio.io/dataplane-mode=ambient"},
		{"disabled-rev", map[string]string{LabelInjection: "disabled", LabelRevision: "canary"}, DataplaneNone, "istio-injection=disabled"},
		{"none", nil, DataplaneNone, "no istio-injection=enabled, istio.io/rev or istio.io/dataplane-mode=ambient label"},
	} {
		ns := c.namespace(tc.suffix, tc.labels)
		c.pod(ns, "web", "web", nil)
		c.pod(ns, "batch", "batch", map[string]string{LabelSidecarInject: "false", LabelDataplaneMode: "none"})
		t.Run(tc.suffix, func(t *testing.T) {
			n := c.resolve()[ns]
			if n.Dataplane != tc.dataplane || n.MeshLabel != tc.label {
				t.Errorf("dataplane %s (%s), want %s (%s)", n.Dataplane, n.MeshLabel, tc.dataplane, tc.label)
			}
			want := map[string]bool{"web": tc.dataplane != DataplaneNone, "batch": false}
			for _, w := range n.Workloads {
				if w.InMesh != want[w.Name] {
					t.Errorf("workload %s in_mesh=%v, want %v", w.Name, w.InMesh, want[w.Name])
				}
			}
		})
	}
}

// Pods are grouped under the workload name their telemetry carries.
func TestWorkloadNames(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace("names", injected)
	yes := true
	c.serviceAccount(ns, "app")
	for _, p := range []struct {
		name, generate, ownerKind, ownerName string
		labels                               map[string]string
	}{
		{"web-7d9f8-abcde", "web-7d9f8-", "ReplicaSet", "web-7d9f8", map[string]string{"pod-template-hash": "7d9f8"}},
		{"web-7d9f8-fghij", "web-7d9f8-", "ReplicaSet", "web-7d9f8", map[string]string{"pod-template-hash": "7d9f8"}},
		{"report-29400000-xyz12", "report-29400000-", "Job", "report-29400000", nil},
		{"db-0", "db-", "StatefulSet", "db", nil},
		{"named-0", "", "", "", map[string]string{LabelWorkloadName: "custom"}},
		{"bare", "", "", "", nil},
	} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, GenerateName: p.generate, Labels: p.labels},
			Spec:       corev1.PodSpec{ServiceAccountName: "app", Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
		}
		if p.ownerKind != "" {
			pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: p.ownerKind, Name: p.ownerName, UID: "0c0ffee0-0000-0000-0000-000000000000", Controller: &yes}}
		}
		if _, err := c.kube.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]int{}
	for _, w := range c.resolve()[ns].Workloads {
		got[w.Name] = w.Pods
	}
	want := map[string]int{"web": 2, "report": 1, "db": 1, "custom": 1, "bare": 1}
	if !maps.Equal(got, want) {
		t.Errorf("workloads %v, want %v", got, want)
	}
}

// DestinationRules that disable mTLS are found wherever the setting is
// (the whole rule, a port, a subset; tls without a mode is DISABLE) and
// filed under the namespace of the host's service; a wildcard over every
// service concerns every namespace, and a host outside the cluster's
// services none.
func TestDestinationRulesDisablingMTLS(t *testing.T) {
	c := newCluster(t)
	a := c.namespace("a", injected)
	b := c.namespace("b", injected)
	tls := func(m networkingapi.ClientTLSSettings_TLSmode) *networkingapi.TrafficPolicy {
		return &networkingapi.TrafficPolicy{Tls: &networkingapi.ClientTLSSettings{Mode: m}}
	}
	c.destinationRule(a, "short", "reports", tls(networkingapi.ClientTLSSettings_DISABLE))
	c.destinationRule(a, "to-b", "api."+b+".svc.cluster.local", &networkingapi.TrafficPolicy{
		PortLevelSettings: []*networkingapi.TrafficPolicy_PortTrafficPolicy{
			{Port: &networkingapi.PortSelector{Number: 9000}, Tls: &networkingapi.ClientTLSSettings{}},
			{Port: &networkingapi.PortSelector{Number: 8080}, Tls: &networkingapi.ClientTLSSettings{Mode: networkingapi.ClientTLSSettings_ISTIO_MUTUAL}},
		},
	})
	c.destinationRule(b, "subset", "db", nil,
		&networkingapi.Subset{Name: "v1", Labels: map[string]string{"version": "v1"}, TrafficPolicy: tls(networkingapi.ClientTLSSettings_DISABLE)},
		&networkingapi.Subset{Name: "v2", Labels: map[string]string{"version": "v2"}, TrafficPolicy: tls(networkingapi.ClientTLSSettings_ISTIO_MUTUAL)})
	c.destinationRule(b, "mutual", "web", tls(networkingapi.ClientTLSSettings_ISTIO_MUTUAL))
	c.destinationRule(b, "external", "api.example.com", tls(networkingapi.ClientTLSSettings_DISABLE))

	list := func(ds []DisabledTLS) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.String())
		}
		slices.Sort(out)
		return out
	}
	got := c.resolve()
	for _, tc := range []struct {
		ns   string
		want []string
	}{
		{a, []string{"DestinationRule " + a + "/short disables mTLS to reports"}},
		{b, []string{
			"DestinationRule " + a + "/to-b disables mTLS to api." + b + ".svc.cluster.local port 9000",
			"DestinationRule " + b + "/subset disables mTLS to db subset v1",
		}},
	} {
		if g := list(got[tc.ns].DisabledTLS); !slices.Equal(g, tc.want) {
			t.Errorf("%s: disabled TLS\n got %q\nwant %q", tc.ns, g, tc.want)
		}
	}

	objs, err := Read(t.Context(), c.kube, c.istio, "")
	if err != nil {
		t.Fatal(err)
	}
	p := Resolve(objs, Options{RootNamespace: c.root})
	if g := list(p.ExternalDisabled); !slices.Contains(g, "DestinationRule "+b+"/external disables mTLS to api.example.com") {
		t.Errorf("external hosts %q lack api.example.com", g)
	}

	// A wildcard over every service concerns every namespace.
	c.destinationRule(b, "everything", "*.svc.cluster.local", tls(networkingapi.ClientTLSSettings_DISABLE))
	got = c.resolve()
	for _, ns := range []string{a, b, c.root} {
		if !slices.Contains(list(got[ns].DisabledTLS), "DestinationRule "+b+"/everything disables mTLS to *.svc.cluster.local") {
			t.Errorf("%s: the wildcard rule is not listed: %q", ns, list(got[ns].DisabledTLS))
		}
	}
}

// Read names the missing CRDs rather than failing with a bare 404.
func TestReadWithoutCRDs(t *testing.T) {
	s, err := kubetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	kube, err := s.AdminClient()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Read(context.Background(), kube, meshtest.IstioClient(t, s), "")
	if err == nil || !errors.Is(err, ErrNoIstioCRDs) {
		t.Fatalf("Read without Istio's CRDs: %v, want ErrNoIstioCRDs", err)
	}
	t.Log(err)
}
