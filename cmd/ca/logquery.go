package main

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/atomicfile"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// queryFlags are the filters of query and export.
type queryFlags struct {
	serial, spiffeID, namespace, issuer, kind string
	cluster                                   string
	from, to, validAt, expiringBefore         string
	newest                                    bool
	limit                                     int

	// req is the request the filters make, once prepare checked them.
	req *adminv1.QueryLogRequest
}

func (q *queryFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&q.serial, "serial", "", "certificate serial (hex; colons and case ignored)")
	fs.StringVar(&q.spiffeID, "spiffe-id", "", "SPIFFE ID")
	fs.StringVar(&q.namespace, "namespace", "", "Kubernetes namespace")
	fs.StringVar(&q.issuer, "issuer", "", "issuing CA certificate SHA-256 (hex): every certificate it signed")
	fs.StringVar(&q.kind, "kind", "", "issuance, denial or admin")
	fs.StringVar(&q.cluster, "cluster", "", "cluster ID the caller presented (clusterid)")
	fs.StringVar(&q.from, "from", "", "entries at or after this time (RFC 3339)")
	fs.StringVar(&q.to, "to", "", "entries before this time (RFC 3339)")
	fs.StringVar(&q.validAt, "valid-at", "", "certificates valid at this time (RFC 3339, or \"now\")")
	fs.StringVar(&q.expiringBefore, "expiring-before", "", "certificates expiring before this time (RFC 3339, or a duration from now such as 72h)")
	fs.BoolVar(&q.newest, "newest", false, "newest first")
}

func parseWhen(s string) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if s == "now" {
		return timestamppb.Now(), nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return timestamppb.New(time.Now().Add(d)), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, fmt.Errorf("time %q: want RFC 3339 (2026-01-02T15:04:05Z), \"now\" or a duration", s)
	}
	return timestamppb.New(t), nil
}

// prepare checks the filters and makes the request, q.req.
func (q *queryFlags) prepare() (err error) {
	q.req, err = q.request()
	return err
}

func (q *queryFlags) request() (*adminv1.QueryLogRequest, error) {
	if q.limit < 0 || q.limit > 10000 {
		return nil, fmt.Errorf("--limit %d: want 1 to 10000", q.limit)
	}
	req := &adminv1.QueryLogRequest{
		Serial: q.serial, SpiffeId: q.spiffeID, Namespace: q.namespace, Issuer: q.issuer, Cluster: q.cluster,
		NewestFirst: q.newest, Limit: int32(q.limit),
	}
	if q.kind != "" {
		k, err := store.ParseKind(q.kind)
		if err != nil {
			return nil, err
		}
		req.Kind = adminv1.Kind(k)
	}
	var err error
	for _, p := range []struct {
		s   string
		dst **timestamppb.Timestamp
	}{{q.from, &req.From}, {q.to, &req.To}, {q.validAt, &req.ValidAt}, {q.expiringBefore, &req.ExpiringBefore}} {
		if *p.dst, err = parseWhen(p.s); err != nil {
			return nil, err
		}
	}
	return req, nil
}

// exportEntry is the JSON form of an entry, one per line: stable field
// names a security team can load into its own tools.
type exportEntry struct {
	// Shard is the log (replica) the entry is from, when several were
	// read: the --addr or --db it was read through.
	Shard             string `json:"shard,omitempty"`
	Seq               uint64 `json:"seq"`
	Kind              string `json:"kind"`
	Time              string `json:"time"`
	Serial            string `json:"serial,omitempty"`
	SPIFFEID          string `json:"spiffe_id,omitempty"`
	Namespace         string `json:"namespace,omitempty"`
	ServiceAccount    string `json:"service_account,omitempty"`
	Tier              string `json:"tier,omitempty"`
	RequestedTTL      string `json:"requested_ttl,omitempty"`
	GrantedTTL        string `json:"granted_ttl,omitempty"`
	NotBefore         string `json:"not_before,omitempty"`
	NotAfter          string `json:"not_after,omitempty"`
	IssuerFingerprint string `json:"issuer_fingerprint,omitempty"`
	IssuerKeyVersion  int64  `json:"issuer_key_version,omitempty"`
	RootKeyVersion    int64  `json:"root_key_version,omitempty"`
	CallerID          string `json:"caller_id,omitempty"`
	AuthMethod        string `json:"auth_method,omitempty"`
	CallerSubject     string `json:"caller_subject,omitempty"`
	ClusterID         string `json:"cluster_id,omitempty"`
	PodName           string `json:"pod_name,omitempty"`
	PodUID            string `json:"pod_uid,omitempty"`
	CallerNode        string `json:"caller_node,omitempty"`
	Code              string `json:"code,omitempty"`
	Reason            string `json:"reason,omitempty"`
	Action            string `json:"action,omitempty"`
	Actor             string `json:"actor,omitempty"`
	Detail            string `json:"detail,omitempty"`
	CertificateDER    string `json:"certificate_der,omitempty"`
	CertificatePEM    string `json:"certificate_pem,omitempty"`
}

func toExport(p *adminv1.Entry, withPEM bool) exportEntry {
	e := ca.EntryFromProto(p)
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	dur := func(d time.Duration) string {
		if d == 0 {
			return ""
		}
		return d.String()
	}
	x := exportEntry{
		Seq: e.Seq, Kind: e.Kind.String(), Time: ts(e.Time), Serial: e.Serial, SPIFFEID: e.SPIFFEID,
		Namespace: e.Namespace, ServiceAccount: e.ServiceAccount, Tier: e.Tier,
		RequestedTTL: dur(e.RequestedTTL), GrantedTTL: dur(e.GrantedTTL), NotBefore: ts(e.NotBefore), NotAfter: ts(e.NotAfter),
		IssuerFingerprint: e.IssuerFingerprint, IssuerKeyVersion: int64(e.IssuerKeyVersion), RootKeyVersion: int64(e.RootKeyVersion),
		CallerID: e.CallerID, AuthMethod: e.AuthMethod, CallerSubject: e.CallerSubject, ClusterID: e.ClusterID,
		PodName: e.PodName, PodUID: e.PodUID, CallerNode: e.CallerNode,
		Code: e.Code, Reason: e.Reason, Action: e.Action, Actor: e.Actor, Detail: e.Detail,
	}
	if len(e.Certificate) > 0 {
		x.CertificateDER = base64.StdEncoding.EncodeToString(e.Certificate)
		if withPEM {
			x.CertificatePEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.Certificate}))
		}
	}
	return x
}

func logQuery(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log query", stderr)
	var qf queryFlags
	qf.register(fs)
	fs.IntVar(&qf.limit, "limit", 50, "entries per page")
	page := fs.String("page-token", "", "continue from a previous page")
	all := fs.Bool("all", false, "every entry the filters select, page after page (--limit is then the size of each page read)")
	asJSON := fs.Bool("json", false, "JSON lines instead of a table")
	shards, ctx, done, err := lf.connectShards(ctx, fs, args, func() error {
		if *all && *page != "" {
			return errors.New("--all reads every page: it takes no --page-token")
		}
		return qf.prepare()
	})
	if err != nil {
		return err
	}
	defer done()
	m, err := newMergedQuery(shards, qf.req, *page)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	for n := 0; *all || n < cmp.Or(qf.limit, 50); n++ {
		p, from, err := m.Next(ctx)
		if err != nil {
			return err
		}
		if p == nil {
			break
		}
		x := toExport(p, false)
		if len(shards) > 1 {
			x.Shard = from.name
		}
		if *asJSON {
			x.CertificateDER = ""
			if err := enc.Encode(x); err != nil {
				return err
			}
			continue
		}
		what := x.SPIFFEID
		switch x.Kind {
		case "denial":
			what += " " + x.Code + ": " + x.Reason
		case "admin":
			what = x.Action + " by " + x.Actor + " " + x.Detail
		default:
			what += " tier=" + x.Tier + " until " + x.NotAfter
		}
		if x.Shard != "" {
			fmt.Fprintf(stdout, "%-21s ", x.Shard)
		}
		fmt.Fprintf(stdout, "%-8d %-30s %-8s %-34s %s\n", x.Seq, x.Time, x.Kind, x.Serial, what)
	}
	next, err := m.PageToken()
	if err != nil {
		return err
	}
	if next != "" {
		fmt.Fprintf(stderr, "more: --page-token %s\n", next)
	}
	return nil
}

func logExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log export", stderr)
	var qf queryFlags
	qf.register(fs)
	out := fs.String("out", "", "write to this file instead of standard output")
	withPEM := fs.Bool("pem", false, "include each certificate as PEM")
	qf.limit = 1000 // a page of each log at a time; export reads them all
	shards, ctx, done, err := lf.connectShards(ctx, fs, args, qf.prepare)
	if err != nil {
		return err
	}
	defer done()
	n := 0
	export := func(w io.Writer) error {
		m, err := newMergedQuery(shards, qf.req, "")
		if err != nil {
			return err
		}
		enc := json.NewEncoder(w)
		for {
			p, from, err := m.Next(ctx)
			if err != nil || p == nil {
				return err
			}
			x := toExport(p, *withPEM)
			if len(shards) > 1 {
				x.Shard = from.name
			}
			if err := enc.Encode(x); err != nil {
				return err
			}
			n++
		}
	}
	// Stream to the terminal, or into a file that appears only when the
	// export is complete.
	if *out == "" {
		err = export(stdout)
	} else {
		_, err = atomicfile.WriteFrom(*out, 0o600, export)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "exported %d entries\n", n)
	return nil
}
