package mesh

import (
	"fmt"
	"slices"
	"strings"
)

// Verdict is what a namespace's traffic is, in one word.
type Verdict string

// The verdicts.
const (
	// Encrypted: every workload accepts only mTLS on every port, every
	// service account that runs its pods holds a live certificate, and no
	// plaintext was seen in the period.
	Encrypted Verdict = "ENCRYPTED"
	// PermissiveClean: in the mesh, no plaintext seen, but the policy
	// still lets plaintext in somewhere (or a workload lacks a live
	// certificate); ReadyForStrict says whether STRICT can be turned on.
	PermissiveClean Verdict = "PERMISSIVE-CLEAN"
	// PlaintextSeen: a destination in the namespace reported plaintext in
	// the period; the pairs say from whom.
	PlaintextSeen Verdict = "PLAINTEXT SEEN"
	// NotInMesh: no label puts the namespace in the mesh: no proxy
	// enforces or reports anything there.
	NotInMesh Verdict = "NOT IN MESH"
)

// Certificates are the live certificates by namespace and service
// account.
type Certificates map[string]map[string]int

// Assessment is the verdict on every namespace.
type Assessment struct {
	RootNamespace string `json:"root_namespace"`
	MeshWide      string `json:"mesh_wide"`
	MeshMode      Mode   `json:"mesh_mode"`
	// TrafficChecked is false when no Prometheus was given: the verdicts
	// then rest on the policy and the certificates only, and none can be
	// PLAINTEXT SEEN.
	TrafficChecked bool `json:"traffic_checked"`
	// Traffic is where and over which period the traffic was read; nil
	// when it was not.
	Traffic    *TrafficSource         `json:"traffic,omitempty"`
	Namespaces []*NamespaceAssessment `json:"namespaces"`
	// Gaps are the stretches of the period without samples.
	Gaps             []Gap         `json:"gaps"`
	ExternalDisabled []DisabledTLS `json:"external_disabled_tls"`
}

// TrafficSource says where the traffic figures come from.
type TrafficSource struct {
	Prometheus string `json:"prometheus"`
	From       string `json:"from"`
	To         string `json:"to"`
	Step       string `json:"step"`
	Retention  string `json:"retention,omitempty"`
}

// NamespaceAssessment is one namespace's verdict and what it rests on.
type NamespaceAssessment struct {
	Namespace string  `json:"namespace"`
	Verdict   Verdict `json:"verdict"`
	Reason    string  `json:"reason"`
	// ReadyForStrict is set for PERMISSIVE-CLEAN: whether turning STRICT
	// on would break nothing the report can see.
	ReadyForStrict *bool  `json:"ready_for_strict,omitempty"`
	Dataplane      string `json:"dataplane"`
	MeshLabel      string `json:"mesh_label"`
	Mode           Mode   `json:"mode"`
	ModeFrom       string `json:"mode_from"`
	// Requests and Connections are what the namespace's destinations
	// reported in the period (zero when traffic was not checked).
	Requests    Counts `json:"requests"`
	Connections Counts `json:"connections"`
	// MTLSShare is the share of requests and connections that were mTLS,
	// nil when there were none.
	MTLSShare *float64 `json:"mtls_share"`
	// Plaintext are the pairs that carried plaintext into the namespace.
	Plaintext []*Pair `json:"plaintext_pairs"`
	// MissingCertificates are the service accounts that run pods in the
	// mesh and hold no live certificate.
	MissingCertificates []string              `json:"missing_certificates"`
	Workloads           []*WorkloadAssessment `json:"workloads"`
	DisabledTLS         []DisabledTLS         `json:"disabled_tls"`
	// Notes are what an operator should know that does not change the
	// verdict.
	Notes []string `json:"notes"`
}

// WorkloadAssessment is one workload: its policy, certificates and
// traffic.
type WorkloadAssessment struct {
	Name             string          `json:"name"`
	Pods             int             `json:"pods"`
	ServiceAccounts  []string        `json:"service_accounts"`
	InMesh           bool            `json:"in_mesh"`
	Mode             Mode            `json:"mode"`
	ModeFrom         string          `json:"mode_from"`
	Ports            map[uint32]Mode `json:"ports,omitempty"`
	LiveCertificates int             `json:"live_certificates"`
	Requests         Counts          `json:"requests"`
	Connections      Counts          `json:"connections"`
}

// Assess gives every namespace of the policy its verdict. traffic is nil
// when no Prometheus was read.
func Assess(p *Policy, certs Certificates, traffic *Traffic) *Assessment {
	a := &Assessment{
		RootNamespace: p.RootNamespace, MeshWide: p.MeshWide, MeshMode: p.MeshMode,
		TrafficChecked: traffic != nil, Namespaces: []*NamespaceAssessment{}, Gaps: []Gap{},
		ExternalDisabled: p.ExternalDisabled,
	}
	if a.ExternalDisabled == nil {
		a.ExternalDisabled = []DisabledTLS{}
	}
	byWorkload := map[[2]string]*WorkloadTraffic{}
	pairs := map[string][]*Pair{}
	gaps := map[string][]Gap{}
	if traffic != nil {
		a.Traffic = &TrafficSource{Prometheus: traffic.Prometheus, From: traffic.From, To: traffic.To, Step: traffic.Step, Retention: traffic.Retention}
		for _, w := range traffic.Workloads {
			byWorkload[[2]string{w.Namespace, w.Workload}] = w
		}
		for _, pr := range traffic.Plaintext {
			pairs[pr.DestinationNamespace] = append(pairs[pr.DestinationNamespace], pr)
		}
		for _, g := range traffic.Gaps {
			gaps[g.Namespace] = append(gaps[g.Namespace], g)
		}
		a.Gaps = traffic.Gaps
	}
	for _, np := range p.Namespaces {
		n := &NamespaceAssessment{
			Namespace: np.Namespace, Dataplane: np.Dataplane, MeshLabel: np.MeshLabel, Mode: np.Mode, ModeFrom: np.ModeFrom,
			Plaintext: pairs[np.Namespace], MissingCertificates: []string{},
			Workloads: []*WorkloadAssessment{}, DisabledTLS: np.DisabledTLS, Notes: []string{},
		}
		if n.Plaintext == nil {
			n.Plaintext = []*Pair{}
		}
		seen := map[string]bool{}
		for _, w := range np.Workloads {
			wa := &WorkloadAssessment{Name: w.Name, Pods: w.Pods, ServiceAccounts: w.ServiceAccounts, InMesh: w.InMesh, Mode: w.Mode, ModeFrom: w.ModeFrom, Ports: w.Ports}
			for _, sa := range w.ServiceAccounts {
				wa.LiveCertificates += certs[np.Namespace][sa]
				if w.InMesh && certs[np.Namespace][sa] == 0 && !slices.Contains(n.MissingCertificates, sa) {
					n.MissingCertificates = append(n.MissingCertificates, sa)
				}
			}
			if t := byWorkload[[2]string{np.Namespace, w.Name}]; t != nil {
				wa.Requests, wa.Connections = t.Requests, t.Connections
			}
			seen[w.Name] = true
			n.Workloads = append(n.Workloads, wa)
		}
		// Traffic of workloads that have no pod now.
		if traffic != nil {
			for _, t := range traffic.Workloads {
				if t.Namespace == np.Namespace && !seen[t.Workload] {
					n.Workloads = append(n.Workloads, &WorkloadAssessment{Name: t.Workload, ServiceAccounts: []string{}, InMesh: true, Mode: np.Mode, ModeFrom: np.ModeFrom, Requests: t.Requests, Connections: t.Connections})
				}
			}
		}
		for _, w := range n.Workloads {
			n.Requests.plus(w.Requests)
			n.Connections.plus(w.Connections)
		}
		if total := n.Requests.Total() + n.Connections.Total(); total > 0 {
			share := float64(n.Requests.MutualTLS+n.Connections.MutualTLS) / float64(total)
			n.MTLSShare = &share
		}
		slices.Sort(n.MissingCertificates)
		judge(n, np, traffic != nil)
		for _, i := range np.Ignored {
			n.Notes = append(n.Notes, "ignored by Istio: PeerAuthentication "+i)
		}
		for _, g := range gaps[np.Namespace] {
			n.Notes = append(n.Notes, fmt.Sprintf("no samples from %s between %s and %s: %s", g.Target, g.From, g.To, g.Reason))
		}
		a.Namespaces = append(a.Namespaces, n)
	}
	return a
}

// judge gives one namespace its verdict and reason.
func judge(n *NamespaceAssessment, np *NamespacePolicy, trafficChecked bool) {
	seen := "traffic not checked (no Prometheus)"
	if trafficChecked {
		seen = fmt.Sprintf("%d requests and %d connections in the period", n.Requests.Total(), n.Connections.Total())
	}
	if np.Dataplane == DataplaneNone {
		n.Verdict = NotInMesh
		n.Reason = np.MeshLabel + ": no proxy enforces mTLS or reports traffic here"
		if t := n.Requests.Total() + n.Connections.Total(); t > 0 {
			n.Reason += fmt.Sprintf(" (yet %d requests and connections were reported by proxies of its pods)", t)
		}
		return
	}
	if plain := n.Requests.Plaintext + n.Connections.Plaintext; plain > 0 {
		n.Verdict = PlaintextSeen
		n.Reason = fmt.Sprintf("%d plaintext requests and %d plaintext connections from %s, of %s",
			n.Requests.Plaintext, n.Connections.Plaintext, plural(len(n.Plaintext), "source→destination pair"), seen)
		return
	}

	// What stands between the namespace and ENCRYPTED.
	var notStrict []string
	if len(n.Workloads) == 0 && np.Mode != ModeStrict {
		notStrict = append(notStrict, fmt.Sprintf("mode %s (%s)", np.Mode, from(np.ModeFrom)))
	}
	for _, w := range n.Workloads {
		if w.Pods == 0 {
			continue
		}
		if w.Mode != ModeStrict {
			notStrict = append(notStrict, fmt.Sprintf("workload %s %s (%s)", w.Name, w.Mode, from(w.ModeFrom)))
		}
		for _, port := range sortedPorts(w.Ports) {
			if m := w.Ports[port]; m != ModeStrict {
				notStrict = append(notStrict, fmt.Sprintf("workload %s port %d %s", w.Name, port, m))
			}
		}
	}
	var outside []string
	for _, w := range n.Workloads {
		if !w.InMesh {
			outside = append(outside, w.Name)
		}
	}
	var blockers []string
	if len(notStrict) > 0 {
		blockers = append(blockers, "not STRICT: "+strings.Join(notStrict, ", "))
	}
	if len(n.MissingCertificates) > 0 {
		blockers = append(blockers, "no live certificate for "+strings.Join(n.MissingCertificates, ", "))
	}
	if len(outside) > 0 {
		blockers = append(blockers, "pods outside the mesh: "+strings.Join(outside, ", "))
	}
	for _, d := range np.DisabledTLS {
		if len(notStrict) == 0 {
			// STRICT refuses what such clients send: their requests
			// fail, nothing crosses in plaintext.
			n.Notes = append(n.Notes, d.String()+": STRICT refuses the plaintext it makes clients send, so their requests fail; remove it")
		}
	}

	if len(blockers) == 0 {
		n.Verdict = Encrypted
		n.Reason = "STRICT for every workload and port (" + from(np.ModeFrom) + "), every service account that runs pods holds a live certificate, no plaintext in " + seen
		return
	}
	n.Verdict = PermissiveClean
	ready := len(n.MissingCertificates) == 0 && len(outside) == 0 && len(np.DisabledTLS) == 0
	n.ReadyForStrict = &ready
	n.Reason = "no plaintext in " + seen + "; " + strings.Join(blockers, "; ")
	if ready {
		n.Reason += "; ready to go STRICT"
		return
	}
	var fix []string
	if len(n.MissingCertificates) > 0 {
		fix = append(fix, "every service account needs a live certificate")
	}
	if len(outside) > 0 {
		fix = append(fix, "the pods outside the mesh would be cut off")
	}
	for _, d := range np.DisabledTLS {
		fix = append(fix, d.String()+": its clients would be refused")
	}
	n.Reason += "; not ready for STRICT: " + strings.Join(fix, "; ")
}

func from(pa string) string {
	if pa == "" {
		return "Istio's default, no PeerAuthentication"
	}
	return "PeerAuthentication " + pa
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func sortedPorts(m map[uint32]Mode) []uint32 {
	out := make([]uint32, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}
