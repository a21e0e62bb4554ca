package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/transitca/transitca/internal/kube"
	"github.com/transitca/transitca/internal/mesh"
)

// evidenceEncryption is the report's CC6.7 section, encryption in
// transit: the mTLS policy of every namespace when the report was made,
// with its verdict, the traffic Istio's proxies reported over the period
// with the plaintext pairs, and what these cannot show.
type evidenceEncryption struct {
	// Checked is false when neither --kubeconfig nor --prometheus was
	// given; NotChecked then says so, and nothing else is set.
	Checked    bool   `json:"checked"`
	NotChecked string `json:"not_checked,omitempty"`
	// PolicyAt is when the policy, the pods and the live certificates
	// were read: the report's own time, not the period's.
	PolicyAt string `json:"policy_at,omitempty"`
	*mesh.Assessment
	// MTLSShare is the share of mTLS among every request and connection
	// the destinations reported in the period; nil when none was.
	MTLSShare *float64 `json:"mtls_share"`
	// Verdicts counts the namespaces by verdict.
	Verdicts map[mesh.Verdict]int `json:"verdicts,omitempty"`
	// CannotShow is what the policy and the telemetry cannot show: the
	// policy during the period, traffic no proxy reported, the gaps in
	// the series.
	CannotShow []string `json:"cannot_show"`
	// Recheck is the command that reads the same figures again, while
	// Prometheus keeps the period.
	Recheck string `json:"recheck,omitempty"`
}

// evidenceMesh are the flags and clients of the CC6.7 section.
type evidenceMesh struct {
	flags meshFlags
	// wanted is whether --kubeconfig or --prometheus was given.
	wanted bool
	kc     *kube.Client
	ic     istioclient.Interface
	prom   *mesh.Prometheus
}

func (m *evidenceMesh) register(fs *flag.FlagSet) {
	fs.StringVar(&m.flags.kubeconfig, "kubeconfig", "", "CC6.7: kubeconfig of the cluster whose mTLS policy to read (with --prometheus alone: in-cluster); without it or --prometheus the section is not checked")
	fs.StringVar(&m.flags.rootNamespace, "root-namespace", mesh.DefaultRootNamespace, "CC6.7: Istio's root namespace (meshConfig.rootNamespace)")
	fs.StringVar(&m.flags.domain, "domain", mesh.DefaultDomain, "CC6.7: the cluster's DNS domain, for DestinationRule hosts")
	m.flags.registerTraffic(fs)
}

// prepare connects to the cluster and Prometheus when the section is
// wanted.
func (m *evidenceMesh) prepare(stderr io.Writer) (err error) {
	m.wanted = m.flags.kubeconfig != "" || m.flags.prometheus != ""
	if !m.wanted {
		return nil
	}
	if m.prom, err = m.flags.prometheusClient(stderr); err != nil {
		return err
	}
	m.kc, m.ic, err = m.flags.clients()
	return err
}

// encryptionEvidence builds the CC6.7 section over [start, end).
func encryptionEvidence(ctx context.Context, shards []shard, lf *logFlags, m *evidenceMesh, start, end time.Time) (*evidenceEncryption, error) {
	if m == nil || !m.wanted {
		return &evidenceEncryption{
			NotChecked: "encryption in transit not checked: give --kubeconfig (the cluster's PeerAuthentications and DestinationRules) and --prometheus (the traffic Istio's proxies reported)",
			CannotShow: []string{},
		}, nil
	}
	now := time.Now()
	a, err := assessMesh(ctx, shards, m.kc, m.ic, m.prom, m.flags, "", now, start, end)
	if err != nil {
		return nil, fmt.Errorf("CC6.7: %w", err)
	}
	e := &evidenceEncryption{Checked: true, PolicyAt: now.UTC().Format(time.RFC3339), Assessment: a, Verdicts: map[mesh.Verdict]int{}}
	var all mesh.Counts
	for _, n := range a.Namespaces {
		e.Verdicts[n.Verdict]++
		for _, c := range []mesh.Counts{n.Requests, n.Connections} {
			all.MutualTLS += c.MutualTLS
			all.Plaintext += c.Plaintext
			all.Other += c.Other
		}
	}
	if total := all.Total(); total > 0 {
		share := float64(all.MutualTLS) / float64(total)
		e.MTLSShare = &share
	}
	e.CannotShow = encryptionCannotShow(e)
	if a.TrafficChecked {
		e.Recheck = encryptionRecheck(lf, shards, m.flags, start, end)
	}
	return e, nil
}

// encryptionCannotShow is what the section cannot show, for this cluster
// and this period.
func encryptionCannotShow(e *evidenceEncryption) []string {
	out := []string{
		"The policy during the period: Kubernetes keeps no history of PeerAuthentications, DestinationRules and namespace labels. The policy shown is the cluster's at " + e.PolicyAt +
			"; a change made and undone within the period shows only in the traffic (and in the Kubernetes API server's audit log).",
		"Traffic no Istio proxy received: only the destination's proxy reports connection_security_policy (reporter=\"destination\"), so plaintext to a pod without a proxy, to a service outside the cluster, or on ports the sidecar does not intercept is not counted.",
	}
	var outside, idle, ambient []string
	for _, n := range e.Namespaces {
		if n.Verdict == mesh.NotInMesh {
			outside = append(outside, n.Namespace)
			continue
		}
		if n.Dataplane == mesh.DataplaneAmbient {
			ambient = append(ambient, n.Namespace)
		}
		for _, w := range n.Workloads {
			switch {
			case w.Pods > 0 && !w.InMesh:
				outside = append(outside, n.Namespace+"/"+w.Name+" (pods without a proxy)")
			case e.TrafficChecked && w.Pods > 0 && w.Requests.Total()+w.Connections.Total() == 0:
				idle = append(idle, n.Namespace+"/"+w.Name)
			}
		}
	}
	if len(outside) > 0 {
		out = append(out, "Anything received in "+strings.Join(outside, ", ")+": not in the mesh, so nothing there enforces mTLS or reports traffic; count it as plaintext.")
	}
	if len(ambient) > 0 {
		out = append(out, "Requests in the ambient namespaces "+strings.Join(ambient, ", ")+": ztunnel reports TCP connections, not the requests they carried.")
	}
	if !e.TrafficChecked {
		return append(out, "The traffic: no --prometheus was given, so the verdicts rest on the policy and the certificates, and no plaintext could be seen.")
	}
	if len(idle) > 0 {
		out = append(out, "Whether these workloads in the mesh received anything: their proxies reported no request or connection in the period (idle, or not scraped): "+strings.Join(idle, ", ")+".")
	}
	if e.Traffic.Retention != "" {
		out = append(out, "A period older than Prometheus' retention ("+e.Traffic.Retention+"): its samples are deleted, and the recheck command then finds nothing. Keep this report.")
	}
	if len(e.Gaps) == 0 {
		return append(out, "An interruption of the scrapes shorter than the resolution ("+e.Traffic.Step+"): none was found at that resolution, a shorter one can go unseen.")
	}
	for _, g := range e.Gaps {
		who := "every proxy"
		if g.Target != "" {
			who = g.Namespace + "/" + g.Target
		}
		out = append(out, fmt.Sprintf("Traffic from %s to %s (%s): %s.", g.From, g.To, who, g.Reason))
	}
	return out
}

// encryptionRecheck is the ca report encryption command that reads the
// section's figures again, from the same logs, cluster and Prometheus.
func encryptionRecheck(lf *logFlags, shards []shard, f meshFlags, start, end time.Time) string {
	args := []string{}
	for _, s := range shards {
		if len(lf.dbs) > 0 {
			db, err := filepath.Abs(s.name)
			if err != nil {
				db = s.name
			}
			args = append(args, "--db", db)
		}
	}
	if f.kubeconfig != "" {
		args = append(args, "--kubeconfig", f.kubeconfig)
	}
	if f.rootNamespace != mesh.DefaultRootNamespace {
		args = append(args, "--root-namespace", f.rootNamespace)
	}
	if f.domain != mesh.DefaultDomain {
		args = append(args, "--domain", f.domain)
	}
	args = append(args, "--prometheus", f.prometheus)
	if f.step > 0 {
		args = append(args, "--step", f.step.String())
	}
	args = append(args, "--from", start.Format(time.RFC3339), "--to", end.Format(time.RFC3339), "-o", "json")
	cmd := commandLine("ca report encryption", args)
	if len(lf.dbs) == 0 {
		var conn []string
		for _, s := range shards {
			conn = append(conn, connFlags(lf, s))
		}
		cmd += " " + strings.Join(conn, " ")
	}
	return cmd
}

// modeFrom names where a namespace's mode comes from.
func modeFrom(pa string) string {
	if pa == "" {
		return "Istio's default, no PeerAuthentication"
	}
	return "PeerAuthentication " + pa
}

// countsText is "mTLS / plaintext".
func countsText(c mesh.Counts) string { return fmt.Sprintf("%d / %d", c.MutualTLS, c.Plaintext) }

// verdictClass is the colour of a verdict.
func verdictClass(v mesh.Verdict) string {
	switch v {
	case mesh.Encrypted:
		return "ok"
	case mesh.PermissiveClean:
		return "warn"
	case mesh.PlaintextSeen:
		return "bad"
	}
	return ""
}

// encryptionCard is the CC6.7 headline: the namespaces where plaintext
// was seen.
func (v *evidenceView) encryptionCard() evidenceCard {
	e := v.Encryption
	c := evidenceCard{ID: "cc67-plaintext"}
	switch {
	case e == nil || !e.Checked:
		c.Value, c.Label, c.Class = "?", "CC6.7 encryption in transit not checked (give --kubeconfig and --prometheus)", "warn"
	case !e.TrafficChecked:
		c.Value, c.Label, c.Class = "?", "CC6.7: traffic not checked (no --prometheus); policy only", "warn"
	default:
		plain := e.Verdicts[mesh.PlaintextSeen]
		c.Value, c.Label = fmt.Sprint(plain), "namespaces where plaintext was seen (CC6.7)"
		var notes []string
		notes = append(notes, fmt.Sprintf("%d of %d namespaces encrypted", e.Verdicts[mesh.Encrypted], len(e.Namespaces)))
		if e.MTLSShare != nil {
			notes = append(notes, percent(e.MTLSShare)+" of the traffic mTLS")
		}
		if len(e.Gaps) > 0 {
			notes = append(notes, fmt.Sprintf("%d gaps in the telemetry", len(e.Gaps)))
		}
		c.Note = strings.Join(notes, "; ")
		c.Class = "ok"
		if plain > 0 {
			c.Class = "bad"
		} else if len(e.Gaps) > 0 || slices.ContainsFunc(e.Namespaces, func(n *mesh.NamespaceAssessment) bool { return n.Verdict != mesh.Encrypted }) {
			c.Class = "warn"
		}
	}
	return c
}
