package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/atomicfile"
	"github.com/transitca/transitca/internal/daemon"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// logAPI is what the log subcommands need: the admin API of a running
// daemon, or the same service over a log file opened read-only.
type logAPI interface {
	QueryLog(ctx context.Context, req *adminv1.QueryLogRequest) (*adminv1.QueryLogResponse, error)
	GetEntry(ctx context.Context, req *adminv1.GetEntryRequest) (*adminv1.GetEntryResponse, error)
	GetCheckpoint(ctx context.Context, req *adminv1.GetCheckpointRequest) (*adminv1.GetCheckpointResponse, error)
	GetInclusionProof(ctx context.Context, req *adminv1.GetInclusionProofRequest) (*adminv1.GetInclusionProofResponse, error)
	GetConsistencyProof(ctx context.Context, req *adminv1.GetConsistencyProofRequest) (*adminv1.GetConsistencyProofResponse, error)
	VerifyLog(ctx context.Context, req *adminv1.VerifyLogRequest) (*adminv1.VerifyLogResponse, error)
	Backup(ctx context.Context, w io.Writer) error
}

type remoteLog struct{ c adminv1.AdminServiceClient }

func (r remoteLog) QueryLog(ctx context.Context, q *adminv1.QueryLogRequest) (*adminv1.QueryLogResponse, error) {
	return r.c.QueryLog(ctx, q)
}
func (r remoteLog) GetEntry(ctx context.Context, q *adminv1.GetEntryRequest) (*adminv1.GetEntryResponse, error) {
	return r.c.GetEntry(ctx, q)
}
func (r remoteLog) GetCheckpoint(ctx context.Context, q *adminv1.GetCheckpointRequest) (*adminv1.GetCheckpointResponse, error) {
	return r.c.GetCheckpoint(ctx, q)
}
func (r remoteLog) GetInclusionProof(ctx context.Context, q *adminv1.GetInclusionProofRequest) (*adminv1.GetInclusionProofResponse, error) {
	return r.c.GetInclusionProof(ctx, q)
}
func (r remoteLog) GetConsistencyProof(ctx context.Context, q *adminv1.GetConsistencyProofRequest) (*adminv1.GetConsistencyProofResponse, error) {
	return r.c.GetConsistencyProof(ctx, q)
}
func (r remoteLog) VerifyLog(ctx context.Context, q *adminv1.VerifyLogRequest) (*adminv1.VerifyLogResponse, error) {
	return r.c.VerifyLog(ctx, q)
}
func (r remoteLog) Backup(ctx context.Context, w io.Writer) error {
	stream, err := r.c.Backup(ctx, &adminv1.BackupRequest{})
	if err != nil {
		return err
	}
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := w.Write(chunk.GetData()); err != nil {
			return err
		}
	}
}

type localLog struct {
	*ca.AdminService
	l *store.Log
}

func (l localLog) Backup(_ context.Context, w io.Writer) error {
	_, err := l.l.WriteTo(w)
	return err
}

// logFlags are the flags every log subcommand takes: where the log is.
type logFlags struct {
	addr, cert, key, rootCert, serverName string
	db, verifierKey                       string
	timeout                               time.Duration
	// addrs and dbs are every --addr and --db given: several logs, one
	// per replica, for the commands that read several (logshards.go).
	addrs, dbs []string

	// witnessFile, with db, is a witness file the log is checked against;
	// with witnessNextToLog, each log file is checked against the witness
	// file next to it, if there is one.
	witnessFile      string
	witnessNextToLog bool
}

func (f *logFlags) register(fs *flag.FlagSet) {
	f.registerConn(fs)
	fs.Var(repeatable{&f.db, &f.dbs}, "db", "read a log file directly (a stopped daemon's, or a backup) instead of --addr; query, export and verify take several, one per replica")
	fs.StringVar(&f.verifierKey, "verifier-key", "", "checkpoint verifier key, or a file holding it (<data_dir>/log-verifier.vkey)")
}

// registerConn registers the flags that reach a running daemon's admin
// API ("ca log" and "ca admin" share them).
func (f *logFlags) registerConn(fs *flag.FlagSet) {
	f.addr = "127.0.0.1:15015"
	fs.Var(repeatable{&f.addr, &f.addrs}, "addr", "admin API address of a running daemon (default 127.0.0.1:15015); query, export and verify take several, one per replica, and dns:///NAME:PORT for every address of a headless Service")
	fs.StringVar(&f.cert, "cert", "", "client certificate chain (PEM) carrying an admin SPIFFE ID")
	fs.StringVar(&f.key, "key", "", "client private key (PEM)")
	fs.StringVar(&f.rootCert, "root-cert", "", "root bundle that verifies the daemon (PEM)")
	fs.StringVar(&f.serverName, "server-name", "", "name to verify in the daemon's certificate (default: the host of --addr)")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Minute, "time limit")
}

func (f *logFlags) open() (logAPI, func(), error) {
	if err := f.single(); err != nil {
		return nil, nil, err
	}
	if f.db != "" {
		return f.openDB(f.db, f.witnessFor(f.db))
	}
	return f.openRemote(target{addr: f.addr, serverName: f.serverName})
}

// openDB opens a log file read-only, checked against the witness file
// witness when it is not "".
func (f *logFlags) openDB(db, witness string) (logAPI, func(), error) {
	vs, err := f.verifiers()
	if err != nil {
		return nil, nil, err
	}
	opts := store.Options{ReadOnly: true, Verifiers: vs, Logger: slog.New(slog.DiscardHandler)}
	if witness != "" {
		opts.Witness = store.NewFileWitness(witness)
	}
	l, err := store.Open(db, opts)
	if err != nil {
		return nil, nil, err
	}
	vkey, _ := f.verifierKeyText()
	return localLog{AdminService: ca.NewAdminService(l, vkey, nil), l: l}, func() { _ = l.Close() }, nil
}

// witnessFor returns the witness file the log file db is checked against:
// --witness, or with witnessNextToLog the one next to it if present.
func (f *logFlags) witnessFor(db string) string {
	if f.witnessFile != "" {
		return f.witnessFile
	}
	if f.witnessNextToLog {
		if p := filepath.Join(filepath.Dir(db), daemon.WitnessFileName); fileExists(p) {
			return p
		}
	}
	return ""
}

func (f *logFlags) openRemote(t target) (logAPI, func(), error) {
	conn, err := f.dialTarget(t)
	if err != nil {
		return nil, nil, err
	}
	return remoteLog{c: adminv1.NewAdminServiceClient(conn)}, func() { conn.Close() }, nil
}

// dial connects to a running daemon's admin API with the client
// certificate of --cert and --key, verifying the daemon against
// --root-cert.
func (f *logFlags) dial() (*grpc.ClientConn, error) {
	if err := f.single(); err != nil {
		return nil, err
	}
	return f.dialTarget(target{addr: f.addr, serverName: f.serverName})
}

func (f *logFlags) dialTarget(t target) (*grpc.ClientConn, error) {
	if f.cert == "" || f.key == "" || f.rootCert == "" {
		return nil, errors.New("to reach a running daemon, --cert, --key and --root-cert are required (or read a file with --db)")
	}
	pair, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	roots, err := os.ReadFile(f.rootCert)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		return nil, fmt.Errorf("%s holds no PEM certificates", f.rootCert)
	}
	name := t.serverName
	if name == "" {
		host, _, err := net.SplitHostPort(t.addr)
		if err != nil {
			return nil, fmt.Errorf("--addr %q: %w", t.addr, err)
		}
		name = host
	}
	return grpc.NewClient(t.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: name, MinVersion: tls.VersionTLS12,
	})))
}

// connect opens the log and bounds the work on it by --timeout; done
// releases both.
func (f *logFlags) connect(ctx context.Context) (logAPI, context.Context, func(), error) {
	api, closeAPI, err := f.open()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	return api, ctx, func() { cancel(); closeAPI() }, nil
}

// newLogFlagSet is the flag set of a log subcommand, with the flags that say
// where the log is.
func newLogFlagSet(name string, stderr io.Writer) (*flag.FlagSet, *logFlags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	lf := &logFlags{}
	lf.register(fs)
	return fs, lf
}

// verifierKeyText returns the verifier key that --verifier-key names, as
// text or in a file, checked to be a note verifier key; "" when the flag is
// not set.
func (f *logFlags) verifierKeyText() (string, error) {
	v := f.verifierKey
	if v == "" {
		return "", nil
	}
	b, ferr := os.ReadFile(v)
	if ferr == nil {
		text := strings.TrimSpace(string(b))
		if _, err := note.NewVerifier(text); err != nil {
			return "", fmt.Errorf("--verifier-key: file %s does not hold a checkpoint verifier key: %w", v, err)
		}
		return text, nil
	}
	if _, err := note.NewVerifier(v); err != nil {
		return "", fmt.Errorf("--verifier-key %s: not a readable file (%w) nor a verifier key", v, ferr)
	}
	return v, nil
}

// verifiers returns the verifier of --verifier-key, nil when it is not set.
func (f *logFlags) verifiers() (note.Verifiers, error) {
	text, err := f.verifierKeyText()
	if err != nil || text == "" {
		return nil, err
	}
	v, err := note.NewVerifier(text)
	if err != nil {
		return nil, fmt.Errorf("--verifier-key: %w", err)
	}
	return note.VerifierList(v), nil
}

func runLog(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	subs := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"query":      logQuery,
		"show":       logShow,
		"export":     logExport,
		"verify":     logVerify,
		"prove":      logProve,
		"checkpoint": logCheckpoint,
		"backup":     logBackup,

		"accept-damage": logAcceptDamage,
	}
	if len(args) == 0 || subs[args[0]] == nil {
		fmt.Fprintln(stderr, "usage: ca log query|show|export|verify|prove|checkpoint|backup|accept-damage [flags]")
		fmt.Fprintln(stderr, "\nReads the issuance log through a running daemon's admin API (--addr, with an admin")
		fmt.Fprintln(stderr, "client certificate) or from a file (--db). Run \"ca log <sub> -h\" for flags.")
		if len(args) == 0 {
			return errUsage
		}
		return fmt.Errorf("unknown log subcommand %q", args[0])
	}
	return withDamageHint(subs[args[0]](ctx, args[1:], stdout, stderr))
}

// withDamageHint adds to an error reporting a damaged meta page the
// command that accepts the loss.
func withDamageHint(err error) error {
	if me, ok := errors.AsType[*store.MetaDamageError](err); ok {
		return fmt.Errorf("%w\nreview what may be lost (the entries of the last transaction; if the machine stopped during that commit, they were never acknowledged to a caller); to accept the loss and append again: ca log accept-damage --db %s --confirm-txid %d", err, me.Path, me.MayBeLost)
	}
	return err
}

// logAcceptDamage accepts the possible loss a damaged bbolt meta page
// stands for, with an admin entry that records it.
func logAcceptDamage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ca log accept-damage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := fs.String("db", "", "the log file (the daemon must be stopped) (required)")
	txid := fs.Uint64("confirm-txid", 0, "the transaction that may be lost, as \"ca log verify\" names it (required)")
	actor := fs.String("actor", os.Getenv("USER"), "who accepts the loss, recorded in the log")
	vkeyFlag := fs.String("verifier-key", "", "checkpoint verifier key, or a file holding it, to check checkpoint signatures while opening")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *db == "" || *txid == 0 {
		return errors.New("--db and --confirm-txid are required")
	}
	vs, err := (&logFlags{verifierKey: *vkeyFlag}).verifiers()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	e, err := store.AcceptDamage(ctx, *db, *txid, *actor, store.Options{Verifiers: vs, Logger: log})
	if err != nil {
		return err
	}
	log.WarnContext(ctx, "accepted a damaged bbolt meta page of the issuance log", slog.String("path", *db),
		slog.Uint64("lost_txid", *txid), slog.String("actor", *actor), slog.Uint64("entry", e.Seq))
	fmt.Fprintf(stdout, "accepted: transaction %d of %s may be lost; recorded as entry %d (%s); the log has %d entries\n", *txid, *db, e.Seq, e.Detail, e.Seq+1)
	return nil
}

// queryFlags are the filters of query and export.
type queryFlags struct {
	serial, spiffeID, namespace, issuer, kind string
	cluster                                   string
	from, to, validAt, expiringBefore         string
	newest                                    bool
	limit                                     int
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
	asJSON := fs.Bool("json", false, "JSON lines instead of a table")
	if err := parse(fs, args); err != nil {
		return err
	}
	req, err := qf.request()
	if err != nil {
		return err
	}
	shards, ctx, done, err := lf.connectShards(ctx)
	if err != nil {
		return err
	}
	defer done()
	m, err := newMergedQuery(shards, req, *page)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	for range cmp.Or(qf.limit, 50) {
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

func logShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log show", stderr)
	seq := fs.Int64("seq", -1, "entry sequence number")
	serial := fs.String("serial", "", "certificate serial")
	withPEM := fs.Bool("pem", false, "include the certificate as PEM")
	if err := parse(fs, args); err != nil {
		return err
	}
	req := &adminv1.GetEntryRequest{}
	switch {
	case *seq >= 0:
		req.Key = &adminv1.GetEntryRequest_Seq{Seq: uint64(*seq)}
	case *serial != "":
		req.Key = &adminv1.GetEntryRequest_Serial{Serial: *serial}
	default:
		return errors.New("name the entry with --seq or --serial")
	}
	api, ctx, done, err := lf.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	resp, err := api.GetEntry(ctx, req)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(toExport(resp.GetEntry(), *withPEM))
}

func logExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log export", stderr)
	var qf queryFlags
	qf.register(fs)
	out := fs.String("out", "", "write to this file instead of standard output")
	withPEM := fs.Bool("pem", false, "include each certificate as PEM")
	if err := parse(fs, args); err != nil {
		return err
	}
	qf.limit = 1000
	req, err := qf.request()
	if err != nil {
		return err
	}
	shards, ctx, done, err := lf.connectShards(ctx)
	if err != nil {
		return err
	}
	defer done()
	n := 0
	export := func(w io.Writer) error {
		m, err := newMergedQuery(shards, req, "")
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

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func logCheckpoint(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log checkpoint", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	api, ctx, done, err := lf.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	resp, err := api.GetCheckpoint(ctx, &adminv1.GetCheckpointRequest{})
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, string(resp.GetCheckpoint()))
	if vk := resp.GetVerifierKey(); vk != "" {
		fmt.Fprintf(stderr, "verifier key: %s\n", vk)
	}
	return nil
}

// logProve fetches an inclusion proof (and optionally a consistency proof)
// and checks it here, offline, with only the checkpoint verifier key.
func logProve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log prove", stderr)
	certFile := fs.String("certificate", "", "prove this certificate (PEM; the first certificate in the file) is in the log")
	serial := fs.String("serial", "", "prove the entry with this serial is in the log")
	seq := fs.Int64("seq", -1, "prove the entry with this sequence number is in the log")
	since := fs.String("since", "", "also prove the log only grew since this earlier signed checkpoint (a file saved from \"ca log checkpoint\")")
	if err := parse(fs, args); err != nil {
		return err
	}
	var want []byte
	req := &adminv1.GetInclusionProofRequest{}
	switch {
	case *certFile != "":
		data, err := os.ReadFile(*certFile)
		if err != nil {
			return err
		}
		block, _ := pem.Decode(data)
		if block == nil {
			return fmt.Errorf("%s: no PEM certificate", *certFile)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return err
		}
		want = cert.Raw
		req.Key = &adminv1.GetInclusionProofRequest_Serial{Serial: store.SerialHex(cert.SerialNumber)}
	case *serial != "":
		req.Key = &adminv1.GetInclusionProofRequest_Serial{Serial: *serial}
	case *seq >= 0:
		req.Key = &adminv1.GetInclusionProofRequest_Seq{Seq: uint64(*seq)}
	default:
		return errors.New("name what to prove with --certificate, --serial or --seq")
	}
	api, ctx, done, err := lf.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	resp, err := api.GetInclusionProof(ctx, req)
	if err != nil {
		return err
	}
	vkey, err := lf.verifierKeyText()
	if err != nil {
		return err
	}
	if vkey == "" {
		cp, err := api.GetCheckpoint(ctx, &adminv1.GetCheckpointRequest{})
		if err != nil {
			return err
		}
		vkey = cp.GetVerifierKey()
		fmt.Fprintln(stderr, "note: verifier key taken from the server; pass --verifier-key to check against a key you trust")
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("verifier key: %w", err)
	}
	cp, err := store.VerifyInclusion(resp.GetCheckpoint(), v, resp.GetLeafData(), resp.GetIndex(), resp.GetProof())
	if err != nil {
		return fmt.Errorf("inclusion proof does not verify: %w", err)
	}
	var e store.Entry
	if err := e.UnmarshalBinary(resp.GetLeafData()); err != nil {
		return fmt.Errorf("proven leaf: %w", err)
	}
	if want != nil && string(e.Certificate) != string(want) {
		return fmt.Errorf("the log's entry %d for serial %s holds a different certificate than %s", resp.GetIndex(), e.Serial, *certFile)
	}
	fmt.Fprintf(stdout, "entry %d (%s %s) is in the log: inclusion proof verified against checkpoint %s size %d\n",
		resp.GetIndex(), e.Kind, e.Serial, cp.Origin, cp.Size)
	if *since != "" {
		old, err := os.ReadFile(*since)
		if err != nil {
			return err
		}
		oldCP, err := store.OpenCheckpoint(old, v)
		if err != nil {
			return fmt.Errorf("%s: %w", *since, err)
		}
		cr, err := api.GetConsistencyProof(ctx, &adminv1.GetConsistencyProofRequest{FromSize: oldCP.Size, ToSize: cp.Size})
		if err != nil {
			return err
		}
		if err := store.VerifyConsistency(old, cr.GetToCheckpoint(), v, cr.GetProof()); err != nil {
			return fmt.Errorf("consistency proof does not verify: %w", err)
		}
		fmt.Fprintf(stdout, "consistency proof verified: the log of size %d in %s is a prefix of the log of size %d\n", oldCP.Size, *since, cp.Size)
	}
	return nil
}

func logBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log backup", stderr)
	out := fs.String("out", "", "file to write the snapshot to (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("--out is required")
	}
	api, ctx, done, err := lf.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	// A failed or interrupted backup never leaves a partial file behind, and
	// the file appears under its name only once it verified: a damaged log
	// (bbolt copies pages as they are) makes no backup.
	tmp := *out + ".unverified"
	defer os.Remove(tmp)
	n, err := atomicfile.WriteFrom(tmp, 0o600, func(w io.Writer) error { return api.Backup(ctx, w) })
	if err != nil {
		return err
	}
	vs, err := lf.verifiers()
	if err != nil {
		return err
	}
	res, err := verifyFile(ctx, tmp, vs)
	if err != nil {
		return fmt.Errorf("the backup does not verify, not writing %s: %w", *out, err)
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup written to %s (%d bytes, %d entries, verified)\n", *out, n, res.Size)
	return nil
}

// verifyFile runs the full check of a log file, read-only.
func verifyFile(ctx context.Context, path string, vs note.Verifiers) (store.VerifyResult, error) {
	l, err := store.Open(path, store.Options{ReadOnly: true, Verifiers: vs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return store.VerifyResult{}, err
	}
	defer func() { _ = l.Close() }()
	return l.Verify(ctx, nil)
}
