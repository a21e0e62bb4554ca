package mesh

import (
	"cmp"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
)

// Mode is a PeerAuthentication mTLS mode once resolved: what a workload's
// proxy accepts.
type Mode string

// The modes. Istio's default, when no PeerAuthentication decides, is
// PERMISSIVE.
const (
	ModeStrict     Mode = "STRICT"
	ModePermissive Mode = "PERMISSIVE"
	ModeDisable    Mode = "DISABLE"
)

// Dataplanes a namespace can be in the mesh with.
const (
	DataplaneSidecar = "sidecar"
	DataplaneAmbient = "ambient"
	// DataplaneNone is a namespace outside the mesh.
	DataplaneNone = "none"
)

// Istio's labels that put a namespace or a pod in the mesh.
const (
	LabelInjection     = "istio-injection"
	LabelRevision      = "istio.io/rev"
	LabelDataplaneMode = "istio.io/dataplane-mode"
	LabelSidecarInject = "sidecar.istio.io/inject"
	// LabelWorkloadName overrides the workload name Istio derives from a
	// pod's controller.
	LabelWorkloadName = "service.istio.io/workload-name"
)

// Defaults of Options.
const (
	DefaultRootNamespace = "istio-system"
	DefaultDomain        = "cluster.local"
)

// Options say how the mesh is configured where the cluster does not.
type Options struct {
	// RootNamespace is meshConfig.rootNamespace: PeerAuthentications
	// without a selector there are mesh-wide. Default istio-system.
	RootNamespace string
	// Domain is the cluster's DNS domain, for DestinationRule hosts.
	// Default cluster.local.
	Domain string
}

func (o Options) withDefaults() Options {
	o.RootNamespace = cmp.Or(o.RootNamespace, DefaultRootNamespace)
	o.Domain = cmp.Or(o.Domain, DefaultDomain)
	return o
}

// Objects are what the policy is computed from, as read from the cluster.
type Objects struct {
	Namespaces          []*corev1.Namespace
	Pods                []*corev1.Pod
	PeerAuthentications []*securityv1.PeerAuthentication
	DestinationRules    []*networkingv1.DestinationRule
}

// Policy is the mTLS policy of every namespace.
type Policy struct {
	RootNamespace string `json:"root_namespace"`
	// MeshWide names the mesh-wide PeerAuthentication in force
	// (namespace/name), "" when there is none.
	MeshWide string `json:"mesh_wide"`
	// MeshMode is the mode it sets, or Istio's default.
	MeshMode   Mode               `json:"mesh_mode"`
	Namespaces []*NamespacePolicy `json:"namespaces"`
	// ExternalDisabled are DestinationRules that disable TLS to hosts
	// outside the cluster's services (ServiceEntries, external names).
	// They are listed, but do not concern service-to-service traffic.
	ExternalDisabled []DisabledTLS `json:"external_disabled_tls"`
}

// NamespacePolicy is the policy of one namespace.
type NamespacePolicy struct {
	Namespace string `json:"namespace"`
	// Dataplane is sidecar, ambient or none.
	Dataplane string `json:"dataplane"`
	// MeshLabel is the label that puts the namespace in the mesh, or says
	// why it is not.
	MeshLabel string `json:"mesh_label"`
	// Mode is the namespace-wide mode: what a workload no workload
	// selector picks gets. ModeFrom names the PeerAuthentication that
	// decides it ("" when Istio's default does).
	Mode     Mode   `json:"mode"`
	ModeFrom string `json:"mode_from"`
	// Workloads are the namespace's workloads (pods grouped by Istio's
	// workload name) with the mode each gets.
	Workloads []*WorkloadPolicy `json:"workloads"`
	// DisabledTLS are the DestinationRules that disable mTLS to a host of
	// this namespace: clients that follow them send plaintext.
	DisabledTLS []DisabledTLS `json:"disabled_tls"`
	// Ignored are PeerAuthentications Istio ignores here: a second
	// namespace-wide one (the oldest wins).
	Ignored []string `json:"ignored,omitempty"`
}

// WorkloadPolicy is the resolved policy of one workload.
type WorkloadPolicy struct {
	// Name is Istio's workload name (the Deployment of a ReplicaSet's
	// pods, ...), the destination_workload of its telemetry.
	Name            string   `json:"name"`
	Pods            int      `json:"pods"`
	ServiceAccounts []string `json:"service_accounts"`
	// InMesh is false for pods that opt out of their namespace's
	// dataplane (sidecar.istio.io/inject=false, istio.io/dataplane-mode=none).
	InMesh bool `json:"in_mesh"`
	// Mode is the workload's mode on every port without its own;
	// ModeFrom names the PeerAuthentication that decides it.
	Mode     Mode   `json:"mode"`
	ModeFrom string `json:"mode_from"`
	// Ports are port-level modes, by container port.
	Ports map[uint32]Mode `json:"ports,omitempty"`
}

// Strict is whether the workload accepts only mTLS on every port.
func (w *WorkloadPolicy) Strict() bool {
	if w.Mode != ModeStrict {
		return false
	}
	for _, m := range w.Ports {
		if m != ModeStrict {
			return false
		}
	}
	return true
}

// DisabledTLS is one DestinationRule setting with tls.mode DISABLE.
type DisabledTLS struct {
	// DestinationRule is namespace/name.
	DestinationRule string `json:"destination_rule"`
	// Host is the rule's host as written.
	Host string `json:"host"`
	// Port is the port of a portLevelSettings entry; 0 is every port.
	Port uint32 `json:"port,omitempty"`
	// Subset names the subset whose traffic policy it is, if any.
	Subset string `json:"subset,omitempty"`
}

func (d DisabledTLS) String() string {
	s := "DestinationRule " + d.DestinationRule + " disables mTLS to " + d.Host
	if d.Port != 0 {
		s += fmt.Sprintf(" port %d", d.Port)
	}
	if d.Subset != "" {
		s += " subset " + d.Subset
	}
	return s
}

// Resolve computes the policy of every namespace of objs.
func Resolve(objs Objects, o Options) *Policy {
	o = o.withDefaults()
	pas := slices.Clone(objs.PeerAuthentications)
	// Istio's order: oldest first, then by name, then namespace
	// (pilot/pkg/model configCompareByCreationTime); the first of a scope
	// in this order wins.
	slices.SortFunc(pas, func(a, b *securityv1.PeerAuthentication) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Namespace, b.Namespace))
	})
	byNS := map[string][]*securityv1.PeerAuthentication{}
	for _, pa := range pas {
		byNS[pa.Namespace] = append(byNS[pa.Namespace], pa)
	}

	p := &Policy{RootNamespace: o.RootNamespace, MeshMode: ModePermissive}
	if mesh := first(byNS[o.RootNamespace], namespaceWide); mesh != nil {
		p.MeshWide = mesh.Namespace + "/" + mesh.Name
		if m, ok := mode(mesh.Spec.GetMtls()); ok {
			p.MeshMode = m
		}
	}

	podsByNS := map[string][]*corev1.Pod{}
	for _, pod := range objs.Pods {
		podsByNS[pod.Namespace] = append(podsByNS[pod.Namespace], pod)
	}
	disabled, external := disabledTLS(objs.DestinationRules, o.Domain)
	p.ExternalDisabled = external

	for _, ns := range objs.Namespaces {
		np := &NamespacePolicy{Namespace: ns.Name, DisabledTLS: []DisabledTLS{}, Workloads: []*WorkloadPolicy{}}
		np.Dataplane, np.MeshLabel = dataplane(ns)
		r := compose(o.RootNamespace, byNS, ns.Name, nil)
		np.Mode, np.ModeFrom = r.mode, r.from
		np.Ignored = ignored(byNS[ns.Name], ns.Name == o.RootNamespace)
		np.DisabledTLS = append(np.DisabledTLS, disabled[ns.Name]...)
		np.DisabledTLS = append(np.DisabledTLS, disabled["*"]...)
		np.Workloads = workloads(o.RootNamespace, byNS, np.Dataplane, podsByNS[ns.Name])
		p.Namespaces = append(p.Namespaces, np)
	}
	slices.SortFunc(p.Namespaces, func(a, b *NamespacePolicy) int { return strings.Compare(a.Namespace, b.Namespace) })
	return p
}

// resolved is the outcome of composing the PeerAuthentications that
// apply to a workload.
type resolved struct {
	mode  Mode
	from  string
	ports map[uint32]Mode
}

// compose is istiod's ComposePeerAuthentication
// (pilot/pkg/security/authn/policy_applier.go) for a workload with the
// given labels in namespace ns (nil labels: a workload no selector picks):
// the candidates are the PeerAuthentications of ns and of the root
// namespace whose selector is a subset of the labels; the oldest of each
// scope (mesh: root namespace without selector; namespace: ns without
// selector; workload: ns with a selector, never the root namespace) is
// taken, the narrowest scope with a mode set wins, UNSET inherits, and the
// workload policy's port-level modes (UNSET: the workload's) override per
// port. With nothing set, the mode is PERMISSIVE.
func compose(root string, byNS map[string][]*securityv1.PeerAuthentication, ns string, labels map[string]string) resolved {
	var meshPA, nsPA, wlPA *securityv1.PeerAuthentication
	for _, scope := range []string{ns, root} {
		for _, pa := range byNS[scope] {
			sel := pa.Spec.GetSelector().GetMatchLabels()
			if !subset(sel, labels) {
				continue
			}
			switch {
			case len(sel) == 0 && pa.Namespace == root:
				if meshPA == nil {
					meshPA = pa
				}
			case len(sel) == 0:
				if nsPA == nil {
					nsPA = pa
				}
			case pa.Namespace != root:
				if wlPA == nil {
					wlPA = pa
				}
			}
		}
		if ns == root {
			break
		}
	}
	r := resolved{mode: ModePermissive}
	for _, pa := range []*securityv1.PeerAuthentication{meshPA, nsPA, wlPA} {
		if pa == nil {
			continue
		}
		if m, ok := mode(pa.Spec.GetMtls()); ok {
			r.mode, r.from = m, pa.Namespace+"/"+pa.Name
		}
	}
	if wlPA != nil && len(wlPA.Spec.GetPortLevelMtls()) > 0 {
		r.ports = map[uint32]Mode{}
		for port, mtls := range wlPA.Spec.GetPortLevelMtls() {
			if m, ok := mode(mtls); ok {
				r.ports[port] = m
			} else {
				r.ports[port] = r.mode
			}
		}
	}
	return r
}

// mode is the mode mtls sets; false when it is UNSET (inherit).
func mode(mtls *securityapi.PeerAuthentication_MutualTLS) (Mode, bool) {
	switch mtls.GetMode() {
	case securityapi.PeerAuthentication_MutualTLS_STRICT:
		return ModeStrict, true
	case securityapi.PeerAuthentication_MutualTLS_PERMISSIVE:
		return ModePermissive, true
	case securityapi.PeerAuthentication_MutualTLS_DISABLE:
		return ModeDisable, true
	default:
		return "", false
	}
}

func namespaceWide(pa *securityv1.PeerAuthentication) bool {
	return len(pa.Spec.GetSelector().GetMatchLabels()) == 0
}

func first(pas []*securityv1.PeerAuthentication, f func(*securityv1.PeerAuthentication) bool) *securityv1.PeerAuthentication {
	for _, pa := range pas {
		if f(pa) {
			return pa
		}
	}
	return nil
}

// ignored names the namespace-wide PeerAuthentications after the first
// (pas is in Istio's order): istiod logs and ignores them.
func ignored(pas []*securityv1.PeerAuthentication, root bool) []string {
	var out []string
	seen := false
	for _, pa := range pas {
		if !namespaceWide(pa) {
			if root {
				out = append(out, pa.Namespace+"/"+pa.Name+" (a workload selector in the root namespace)")
			}
			continue
		}
		if seen {
			out = append(out, pa.Namespace+"/"+pa.Name+" (a second namespace-wide PeerAuthentication; the oldest wins)")
		}
		seen = true
	}
	return out
}

func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// dataplane says whether a namespace is in the mesh, as Istio's injection
// webhook and ambient's node agent decide: istio-injection=enabled, or an
// istio.io/rev label without istio-injection, is the sidecar; else
// istio.io/dataplane-mode=ambient is ambient.
func dataplane(ns *corev1.Namespace) (string, string) {
	l := ns.Labels
	inj, hasInj := l[LabelInjection]
	rev, hasRev := l[LabelRevision]
	switch {
	case inj == "enabled":
		return DataplaneSidecar, LabelInjection + "=enabled"
	case hasRev && !hasInj:
		return DataplaneSidecar, LabelRevision + "=" + rev
	case l[LabelDataplaneMode] == DataplaneAmbient:
		return DataplaneAmbient, LabelDataplaneMode + "=ambient"
	case hasInj:
		return DataplaneNone, LabelInjection + "=" + inj
	default:
		return DataplaneNone, "no " + LabelInjection + "=enabled, " + LabelRevision + " or " + LabelDataplaneMode + "=ambient label"
	}
}

// podInMesh is whether a pod of a namespace with dataplane dp is in the
// mesh: it may opt out with sidecar.istio.io/inject=false (label or
// annotation) or istio.io/dataplane-mode=none.
func podInMesh(pod *corev1.Pod, dp string) bool {
	switch dp {
	case DataplaneSidecar:
		return pod.Labels[LabelSidecarInject] != "false" && pod.Annotations[LabelSidecarInject] != "false"
	case DataplaneAmbient:
		return pod.Labels[LabelDataplaneMode] != "none"
	default:
		return false
	}
}

var cronJobName = regexp.MustCompile(`(.+)-\d{8,10}$`)

// WorkloadName is the workload name Istio gives a pod's telemetry
// (pkg/kube GetWorkloadMetaFromPod): the service.istio.io/workload-name
// label, else for a generated pod its controller's name, a ReplicaSet's
// Deployment and a Job's CronJob, else the pod's own name.
func WorkloadName(pod *corev1.Pod) string {
	if n := pod.Labels[LabelWorkloadName]; n != "" {
		return n
	}
	if pod.GenerateName == "" {
		return pod.Name
	}
	for _, ref := range pod.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		switch h := pod.Labels["pod-template-hash"]; {
		case ref.Kind == "ReplicaSet" && h != "" && strings.HasSuffix(ref.Name, h):
			return strings.TrimSuffix(ref.Name, "-"+h)
		case ref.Kind == "Job":
			if m := cronJobName.FindStringSubmatch(ref.Name); m != nil {
				return m[1]
			}
		}
		return ref.Name
	}
	return pod.Name
}

// workloads groups a namespace's pods by workload name and resolves each.
func workloads(root string, byNS map[string][]*securityv1.PeerAuthentication, dp string, pods []*corev1.Pod) []*WorkloadPolicy {
	byName := map[string]*WorkloadPolicy{}
	for _, pod := range pods {
		name := WorkloadName(pod)
		w := byName[name]
		if w == nil {
			r := compose(root, byNS, pod.Namespace, pod.Labels)
			w = &WorkloadPolicy{Name: name, Mode: r.mode, ModeFrom: r.from, Ports: r.ports, InMesh: podInMesh(pod, dp)}
			byName[name] = w
		}
		w.Pods++
		sa := cmp.Or(pod.Spec.ServiceAccountName, "default")
		if !slices.Contains(w.ServiceAccounts, sa) {
			w.ServiceAccounts = append(w.ServiceAccounts, sa)
		}
		// One pod out of the mesh takes the workload out.
		w.InMesh = w.InMesh && podInMesh(pod, dp)
	}
	out := slices.Collect(maps.Values(byName))
	for _, w := range out {
		slices.Sort(w.ServiceAccounts)
	}
	slices.SortFunc(out, func(a, b *WorkloadPolicy) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// disabledTLS finds every DestinationRule setting with tls.mode DISABLE
// (tls present without a mode is DISABLE too, as Istio reads it), keyed by
// the namespace of the host's service ("*": a wildcard over every
// namespace); the settings for hosts outside the cluster's services are
// returned apart.
func disabledTLS(drs []*networkingv1.DestinationRule, domain string) (map[string][]DisabledTLS, []DisabledTLS) {
	byNS := map[string][]DisabledTLS{}
	var external []DisabledTLS
	for _, dr := range drs {
		host := dr.Spec.GetHost()
		ns, inCluster := hostNamespace(host, dr.Namespace, domain)
		add := func(port uint32, subset string) {
			d := DisabledTLS{DestinationRule: dr.Namespace + "/" + dr.Name, Host: host, Port: port, Subset: subset}
			if inCluster {
				byNS[ns] = append(byNS[ns], d)
			} else {
				external = append(external, d)
			}
		}
		scan := func(tp *networkingapi.TrafficPolicy, subset string) {
			if isDisable(tp.GetTls()) {
				add(0, subset)
			}
			for _, pl := range tp.GetPortLevelSettings() {
				if isDisable(pl.GetTls()) {
					add(pl.GetPort().GetNumber(), subset)
				}
			}
		}
		scan(dr.Spec.GetTrafficPolicy(), "")
		for _, s := range dr.Spec.GetSubsets() {
			scan(s.GetTrafficPolicy(), s.GetName())
		}
	}
	return byNS, external
}

func isDisable(tls *networkingapi.ClientTLSSettings) bool {
	return tls != nil && tls.GetMode() == networkingapi.ClientTLSSettings_DISABLE
}

// hostNamespace is the namespace of the service a DestinationRule host
// names, as Istio resolves a short name (no dot) into the rule's own
// namespace; "*" when the host is a wildcard over every namespace's
// services ("*", "*.svc.<domain>", "*.<domain>", ...); false when the
// host is not a service of the cluster.
func hostNamespace(host, ruleNS, domain string) (string, bool) {
	if host == "*" {
		return "*", true
	}
	if !strings.Contains(host, ".") {
		return ruleNS, true
	}
	svcDomain := "svc." + domain
	if rest, ok := strings.CutSuffix(host, "."+svcDomain); ok {
		parts := strings.Split(rest, ".")
		switch {
		case len(parts) == 1 && parts[0] == "*":
			return "*", true
		case len(parts) == 2 && parts[1] != "*":
			return parts[1], true
		}
		return "*", true
	}
	// A wildcard whose suffix covers the service domain.
	if w, ok := strings.CutPrefix(host, "*."); ok && strings.HasSuffix(svcDomain, w) && (svcDomain == w || strings.HasSuffix(svcDomain, "."+w)) {
		return "*", true
	}
	return "", false
}
