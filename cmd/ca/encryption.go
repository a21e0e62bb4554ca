package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/transitca/transitca/internal/kube"
	"github.com/transitca/transitca/internal/mesh"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// meshFlags are the flags of the commands that read the mesh's policy and
// traffic: report encryption, and the traffic of report rollout.
type meshFlags struct {
	kubeconfig    string
	prometheus    string
	rootNamespace string
	domain        string
	step          time.Duration
}

func (m *meshFlags) registerTraffic(fs *flag.FlagSet) {
	fs.StringVar(&m.prometheus, "prometheus", "", "base URL of the Prometheus that scrapes Istio's proxies (its HTTP API, e.g. http://prometheus.istio-system:9090); without it traffic is not checked")
	fs.DurationVar(&m.step, "step", 0, "resolution of the traffic read from Prometheus (default: a thousandth of the period, at least 15s)")
}

func (m *meshFlags) registerPolicy(fs *flag.FlagSet) {
	fs.StringVar(&m.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster whose policy and pods to read (default $KUBECONFIG, else in-cluster)")
	fs.StringVar(&m.rootNamespace, "root-namespace", mesh.DefaultRootNamespace, "Istio's root namespace (meshConfig.rootNamespace): its PeerAuthentications without a selector are mesh-wide")
	fs.StringVar(&m.domain, "domain", mesh.DefaultDomain, "the cluster's DNS domain, for DestinationRule hosts")
}

// prometheusClient returns the reader of --prometheus; nil, said on
// stderr, when it is not given.
func (m *meshFlags) prometheusClient(stderr io.Writer) (*mesh.Prometheus, error) {
	if m.step < 0 {
		return nil, fmt.Errorf("--step %s: want a positive duration", m.step)
	}
	if m.prometheus == "" {
		fmt.Fprintln(stderr, "no --prometheus: traffic not checked; verdicts rest on the policy and the certificates only")
		return nil, nil
	}
	u, err := url.Parse(m.prometheus)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--prometheus %q: want the base URL of Prometheus' HTTP API, http(s)://host:port", m.prometheus)
	}
	return mesh.NewPrometheus(m.prometheus, nil)
}

// clients connects to the cluster of --kubeconfig (or in-cluster), with an
// Istio client too.
func (m *meshFlags) clients() (*kube.Client, istioclient.Interface, error) {
	if m.kubeconfig == "" && !kube.InCluster() {
		return nil, nil, errors.New("the mesh's policy is read from the cluster: give --kubeconfig (or $KUBECONFIG), or run in a pod")
	}
	kc, err := kube.NewClient(m.kubeconfig, "transitca-report")
	if err != nil {
		return nil, nil, err
	}
	ic, err := istioclient.NewForConfig(kc.Config)
	if err != nil {
		return nil, nil, err
	}
	return kc, ic, nil
}

// liveCertificatesByAccount counts, in every shard, the certificates live
// at t by namespace and service account.
func liveCertificatesByAccount(ctx context.Context, shards []shard, namespace string, t time.Time) (mesh.Certificates, error) {
	certs := mesh.Certificates{}
	for _, sh := range shards {
		if err := liveCertificates(ctx, sh.api, namespace, t, func(e *adminv1.Entry) {
			if certs[e.GetNamespace()] == nil {
				certs[e.GetNamespace()] = map[string]int{}
			}
			certs[e.GetNamespace()][e.GetServiceAccount()]++
		}); err != nil {
			return nil, fmt.Errorf("issuance log %s: %w", sh.name, err)
		}
	}
	return certs, nil
}

// encryptionReport is the JSON form of ca report encryption.
type encryptionReport struct {
	// At is when the policy, the pods and the certificates were read.
	At string `json:"at"`
	*mesh.Assessment
}

func reportEncryption(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca report encryption", stderr)
	var mf meshFlags
	mf.registerPolicy(fs)
	mf.registerTraffic(fs)
	namespace := fs.String("namespace", "", "only this namespace")
	from := fs.String("from", "-24h", "start of the traffic period (RFC 3339 or a duration from now)")
	to := fs.String("to", "now", "end of the traffic period (RFC 3339, \"now\" or a duration from now)")
	output := fs.String("o", "table", "output: table or json")
	var (
		start, end time.Time
		kc         *kube.Client
		ic         istioclient.Interface
		prom       *mesh.Prometheus
	)
	shards, ctx, done, err := lf.connectShards(ctx, fs, args, func() (err error) {
		if *output != "table" && *output != "json" {
			return fmt.Errorf("-o %q: want table or json", *output)
		}
		if start, end, err = evidencePeriod(*from, *to); err != nil {
			return err
		}
		if prom, err = mf.prometheusClient(stderr); err != nil {
			return err
		}
		kc, ic, err = mf.clients()
		return err
	})
	if err != nil {
		return err
	}
	defer done()
	now := time.Now()
	a, err := assessMesh(ctx, shards, kc, ic, prom, mf, *namespace, now, start, end)
	if err != nil {
		return err
	}
	r := &encryptionReport{At: now.UTC().Format(time.RFC3339), Assessment: a}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	writeEncryptionTable(stdout, r)
	return nil
}

// assessMesh reads the policy, the pods and the certificates as of now
// and, when prom is not nil, the traffic of [start, end), and judges every
// namespace (or the one named).
func assessMesh(ctx context.Context, shards []shard, kc *kube.Client, ic istioclient.Interface, prom *mesh.Prometheus, mf meshFlags,
	namespace string, now, start, end time.Time,
) (*mesh.Assessment, error) {
	objs, err := mesh.Read(ctx, kc.Clientset, ic, namespace)
	if err != nil {
		return nil, fmt.Errorf("mesh policy: %w", err)
	}
	policy := mesh.Resolve(objs, mesh.Options{RootNamespace: mf.rootNamespace, Domain: mf.domain})
	certs, err := liveCertificatesByAccount(ctx, shards, namespace, now)
	if err != nil {
		return nil, err
	}
	var traffic *mesh.Traffic
	if prom != nil {
		if traffic, err = prom.Traffic(ctx, mesh.TrafficOptions{From: start, To: end, Namespace: namespace, Step: mf.step}); err != nil {
			return nil, err
		}
	}
	return mesh.Assess(policy, certs, traffic), nil
}

func percent(share *float64) string {
	if share == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100**share)
}

func writeEncryptionTable(w io.Writer, r *encryptionReport) {
	fmt.Fprintf(w, "encryption in transit: policy, pods and certificates at %s\n", r.At)
	mw := "none (Istio's default: PERMISSIVE)"
	if r.MeshWide != "" {
		mw = fmt.Sprintf("PeerAuthentication %s: %s", r.MeshWide, r.MeshMode)
	}
	fmt.Fprintf(w, "mesh-wide policy (root namespace %s): %s\n", r.RootNamespace, mw)
	if r.Traffic != nil {
		fmt.Fprintf(w, "traffic from %s to %s as the destinations reported it (reporter=\"destination\"), from %s, step %s\n",
			r.Traffic.From, r.Traffic.To, r.Traffic.Prometheus, r.Traffic.Step)
	} else {
		fmt.Fprintln(w, "traffic not checked (no --prometheus): verdicts rest on the policy and the certificates only")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tDATAPLANE\tMODE\tMTLS SHARE\tREQUESTS\tCONNECTIONS\tPLAINTEXT\tVERDICT")
	for _, n := range r.Namespaces {
		mode := string(n.Mode)
		if n.Dataplane == mesh.DataplaneNone {
			mode = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", n.Namespace, n.Dataplane, mode, percent(n.MTLSShare),
			n.Requests.Total(), n.Connections.Total(), n.Requests.Plaintext+n.Connections.Plaintext, n.Verdict)
	}
	_ = tw.Flush()

	for _, n := range r.Namespaces {
		fmt.Fprintf(w, "\nnamespace %s: %s: %s\n", n.Namespace, n.Verdict, n.Reason)
		if len(n.Plaintext) > 0 {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "  PLAINTEXT FROM\tTO\tSERVICE\tREQUESTS\tCONNECTIONS\tFIRST\tLAST")
			for _, p := range n.Plaintext {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%s\t%s\n", p.Source(), p.DestinationWorkload, p.DestinationService, p.Requests, p.Connections, p.First, p.Last)
			}
			_ = tw.Flush()
		}
		for _, note := range n.Notes {
			fmt.Fprintf(w, "  note: %s\n", note)
		}
	}
	var meshGaps []string
	for _, g := range r.Gaps {
		if g.Namespace == "" {
			meshGaps = append(meshGaps, fmt.Sprintf("%s to %s: %s", g.From, g.To, g.Reason))
		}
	}
	if len(meshGaps) > 0 {
		fmt.Fprintf(w, "\ngaps in the telemetry:\n  %s\n", strings.Join(meshGaps, "\n  "))
	}
	for _, d := range r.ExternalDisabled {
		fmt.Fprintf(w, "\nnote: %s (a host outside the cluster's services)\n", d)
	}
}
