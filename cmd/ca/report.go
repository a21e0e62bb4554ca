package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/internal/kube"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

func runReport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	subs := map[string]runFunc{
		"rollout":  reportRollout,
		"evidence": reportEvidence,
		"verify":   reportVerify,
		"sample":   reportSample,
	}
	return runLogSubcommand(ctx, args, stdout, stderr, subs, "report", `usage: ca report rollout|evidence|verify|sample [flags]

rollout: per namespace, the service accounts that hold a live certificate and
those that run pods without one: the list to check before a namespace goes STRICT.

evidence --from T1 [--to T2]: for an auditor, what was issued in the period, against
the tiers' policy; denials; rotations and drills; the checkpoint and the commands that
recompute every figure from a backup of the log (HTML, or -o json); --sign signs
it with the log's checkpoint key.

verify --verifier-key KEY REPORT: checks a signed report against its signature
(REPORT.sig): signed with that key, and byte for byte the report that was signed.

sample --from T1 --n 25 --seed S: for a test of controls, issuances picked
reproducibly, each with its inclusion proof and the facts to check.
`)
}

// rolloutReport is the JSON form of ca report rollout: stable field names.
type rolloutReport struct {
	// At is the time certificates were checked to be live at.
	At string `json:"at"`
	// PodsChecked is false when no API server was reachable: then only
	// certificates are listed and no namespace is judged ready.
	PodsChecked bool                `json:"pods_checked"`
	Namespaces  []*rolloutNamespace `json:"namespaces"`
}

type rolloutNamespace struct {
	Namespace string `json:"namespace"`
	// Ready, when pods were checked, is whether every service account that
	// runs a pod holds a live certificate.
	Ready           *bool                    `json:"ready,omitempty"`
	ServiceAccounts []*rolloutServiceAccount `json:"service_accounts"`
	// Missing are the service accounts that run pods but hold no live
	// certificate, sorted.
	Missing []string `json:"missing"`
}

type rolloutServiceAccount struct {
	Name string `json:"name"`
	// Pods is the number of non-terminated pods that run as it (0 when
	// pods were not checked).
	Pods int `json:"pods"`
	// LiveCertificates is the number of certificates issued to it that are
	// valid at At.
	LiveCertificates int `json:"live_certificates"`
	// LatestNotAfter is when the last of them expires.
	LatestNotAfter string `json:"latest_not_after,omitempty"`
}

// podsClient is the client of the cluster whose pods rollout checks: of
// kubeconfig, or in-cluster; nil, said on stderr, when there is neither.
func podsClient(kubeconfig string, stderr io.Writer) (kubernetes.Interface, error) {
	if kubeconfig == "" && !kube.InCluster() {
		fmt.Fprintln(stderr, "no API server (--kubeconfig, $KUBECONFIG or in-cluster): listing certificates only, pods not checked")
		return nil, nil
	}
	c, err := kube.NewClient(kubeconfig, "transitca-report")
	if err != nil {
		return nil, err
	}
	return c.Clientset, nil
}

func reportRollout(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca report rollout", stderr)
	namespace := fs.String("namespace", "", "only this namespace")
	at := fs.String("at", "now", "certificates live at this time (RFC 3339, \"now\" or a duration from now); pods are always as of now")
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster whose pods to check (default $KUBECONFIG, else in-cluster)")
	output := fs.String("o", "table", "output: table or json")
	var (
		when time.Time
		pods kubernetes.Interface
	)
	shards, ctx, done, err := lf.connectShards(ctx, fs, args, func() error {
		if *output != "table" && *output != "json" {
			return fmt.Errorf("-o %q: want table or json", *output)
		}
		ts, err := parseWhen(*at)
		if err != nil {
			return fmt.Errorf("--at: %w", err)
		}
		when = ts.AsTime()
		pods, err = podsClient(*kubeconfig, stderr)
		return err
	})
	if err != nil {
		return err
	}
	defer done()
	r := &rolloutReport{At: when.UTC().Format(time.RFC3339), PodsChecked: pods != nil}
	accounts := map[[2]string]*rolloutServiceAccount{}
	account := func(ns, sa string) *rolloutServiceAccount {
		k := [2]string{ns, sa}
		if accounts[k] == nil {
			accounts[k] = &rolloutServiceAccount{Name: sa}
		}
		return accounts[k]
	}
	// Every replica's log: a certificate is in the shard of the replica
	// that issued it.
	for _, sh := range shards {
		if err := liveCertificates(ctx, sh.api, *namespace, when, func(p *adminv1.Entry) {
			a := account(p.GetNamespace(), p.GetServiceAccount())
			a.LiveCertificates++
			if na := p.GetNotAfter().AsTime().UTC().Format(time.RFC3339); na > a.LatestNotAfter {
				a.LatestNotAfter = na
			}
		}); err != nil {
			return fmt.Errorf("issuance log %s: %w", sh.name, err)
		}
	}
	if pods != nil {
		if err := runningPods(ctx, pods, *namespace, func(p *corev1.Pod) {
			account(p.Namespace, cmp.Or(p.Spec.ServiceAccountName, "default")).Pods++
		}); err != nil {
			return fmt.Errorf("pods: %w", err)
		}
	}
	r.Namespaces = groupRollout(accounts, pods != nil)

	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	writeRolloutTable(stdout, r)
	return nil
}

// liveCertificates calls f with every issuance entry of the log, in the
// namespace when one is given, whose certificate is valid at t.
func liveCertificates(ctx context.Context, api logAPI, namespace string, t time.Time, f func(*adminv1.Entry)) error {
	req := &adminv1.QueryLogRequest{
		Namespace: namespace, Kind: adminv1.Kind_KIND_ISSUANCE,
		ValidAt: timestamppb.New(t), Limit: 10000,
	}
	for {
		resp, err := api.QueryLog(ctx, req)
		if err != nil {
			return err
		}
		for _, e := range resp.GetEntries() {
			// An identity outside Kubernetes has no service account to
			// match a pod with.
			if e.GetNamespace() == "" || e.GetServiceAccount() == "" {
				continue
			}
			f(e)
		}
		if resp.GetNextPageToken() == "" {
			return nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// runningPods calls f with every pod, in the namespace when one is given,
// that has not terminated.
func runningPods(ctx context.Context, c kubernetes.Interface, namespace string, f func(*corev1.Pod)) error {
	opts := metav1.ListOptions{
		FieldSelector: fields.AndSelectors(
			fields.OneTermNotEqualSelector("status.phase", string(corev1.PodSucceeded)),
			fields.OneTermNotEqualSelector("status.phase", string(corev1.PodFailed)),
		).String(),
		Limit: 500,
	}
	for {
		list, err := c.CoreV1().Pods(namespace).List(ctx, opts)
		if err != nil {
			return err
		}
		for i := range list.Items {
			f(&list.Items[i])
		}
		if list.Continue == "" {
			return nil
		}
		opts.Continue = list.Continue
	}
}

// groupRollout sorts the service accounts into namespaces and, when pods
// were checked, judges each namespace.
func groupRollout(accounts map[[2]string]*rolloutServiceAccount, podsChecked bool) []*rolloutNamespace {
	byNS := map[string]*rolloutNamespace{}
	for k, a := range accounts {
		n := byNS[k[0]]
		if n == nil {
			n = &rolloutNamespace{Namespace: k[0], Missing: []string{}}
			byNS[k[0]] = n
		}
		n.ServiceAccounts = append(n.ServiceAccounts, a)
		if a.Pods > 0 && a.LiveCertificates == 0 {
			n.Missing = append(n.Missing, a.Name)
		}
	}
	out := make([]*rolloutNamespace, 0, len(byNS))
	for _, n := range byNS {
		slices.SortFunc(n.ServiceAccounts, func(a, b *rolloutServiceAccount) int { return strings.Compare(a.Name, b.Name) })
		slices.Sort(n.Missing)
		if podsChecked {
			ready := len(n.Missing) == 0
			n.Ready = &ready
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *rolloutNamespace) int { return strings.Compare(a.Namespace, b.Namespace) })
	return out
}

func writeRolloutTable(w io.Writer, r *rolloutReport) {
	fmt.Fprintf(w, "live certificates at %s\n", r.At)
	if len(r.Namespaces) == 0 {
		fmt.Fprintln(w, "\nno live certificates and no pods")
	}
	for _, n := range r.Namespaces {
		verdict := "pods not checked"
		switch {
		case n.Ready == nil:
		case *n.Ready:
			verdict = "READY: every service account that runs pods holds a live certificate"
		default:
			verdict = fmt.Sprintf("NOT READY: no live certificate for %s", strings.Join(n.Missing, ", "))
		}
		fmt.Fprintf(w, "\nnamespace %s: %s\n", n.Namespace, verdict)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  SERVICE ACCOUNT\tPODS\tLIVE CERTIFICATES\tLATEST EXPIRY")
		for _, a := range n.ServiceAccounts {
			pods := fmt.Sprint(a.Pods)
			if !r.PodsChecked {
				pods = "-"
			}
			expiry := cmp.Or(a.LatestNotAfter, "-")
			mark := ""
			if a.Pods > 0 && a.LiveCertificates == 0 {
				mark = "MISSING"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", a.Name, pods, a.LiveCertificates, expiry, mark)
		}
		_ = tw.Flush()
	}
}
