package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/transitca/transitca/internal/atomicfile"
	"github.com/transitca/transitca/internal/config"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// evidenceReport is what "ca report evidence" shows an auditor about one
// period [From, To): every figure is computed from the log's entries
// through the same queries as "ca log query", and Commands recompute each
// from a backup of the log with "ca log export" and jq.
type evidenceReport struct {
	From        string `json:"from"`
	To          string `json:"to"`
	GeneratedAt string `json:"generated_at"`
	Source      string `json:"source"`
	// CommandLine is the command that made the report.
	CommandLine string `json:"command_line"`
	// Verification is the state of the weakest log: verified, partial
	// (entries after the last signed checkpoint) or failed.
	Verification string `json:"verification"`
	// Dev is whether a daemon in force during the period ran in dev mode:
	// local software keys, no Vault.
	Dev bool `json:"dev"`

	// Control is the lifetime control the certificates are held to.
	Control       evidenceControl    `json:"control"`
	PolicyChanges []policyChange     `json:"policy_changes"`
	Privileged    evidencePrivileged `json:"privileged"`

	Issued   evidenceIssued   `json:"issued"`
	Validity []*tierValidity  `json:"validity"`
	Denials  evidenceDenials  `json:"denials"`
	Events   []evidenceEvent  `json:"events"`
	Drills   evidenceDrills   `json:"drills"`
	Service  evidenceService  `json:"service"`
	Custody  []custodySeen    `json:"key_custody"`
	Live     []*liveNamespace `json:"live_at_to"`
	// Logs are the logs the figures come from: one per replica (shard).
	Logs []*evidenceLog `json:"logs"`
	// CannotShow is what no log can prove, whatever its figures say.
	CannotShow []string          `json:"cannot_show"`
	Commands   []evidenceCommand `json:"commands"`
}

type evidenceIssued struct {
	Total       int            `json:"total"`
	ByTier      map[string]int `json:"by_tier"`
	ByNamespace map[string]int `json:"by_namespace"`
	ByCluster   map[string]int `json:"by_cluster"`
	// Bucket is "day" (UTC dates) or, for periods over 400 days, "month".
	Bucket string `json:"bucket"`
	// ByBucket holds every bucket of the period, empty ones included, in
	// time order.
	ByBucket []evidenceBucket `json:"by_bucket"`
}

type evidenceBucket struct {
	Start  string         `json:"start"`
	Total  int            `json:"total"`
	ByTier map[string]int `json:"by_tier"`
}

// tierValidity is, for one tier, the longest validity granted in the
// period against the tier's maximum lifetime in force when each
// certificate was issued, and against the stated control.
type tierValidity struct {
	Tier   string `json:"tier"`
	Issued int    `json:"issued"`
	// MaxTTL lists the distinct maximum lifetimes in force for the tier
	// during the period (one, unless the configuration changed).
	MaxTTL []string `json:"max_ttl"`
	// Control is the lifetime the stated control allows the tier ("" when
	// there is no control).
	Control string `json:"control"`
	// LongestSeconds is the longest validity (NotAfter - NotBefore)
	// granted; LongestSerial names that certificate.
	LongestSeconds int64  `json:"longest_seconds"`
	Longest        string `json:"longest"`
	LongestSerial  string `json:"longest_serial"`
	// Over lists every certificate whose validity exceeds the tier's
	// maximum lifetime in force when it was issued: there should be none.
	Over []overCertificate `json:"over"`
	// OverControl lists every certificate whose validity exceeds the
	// stated control: a loosened policy shows here, not in Over.
	OverControl []overCertificate `json:"over_control"`
	// Unchecked counts certificates issued when no policy for the tier was
	// recorded in the log (and none given with --config).
	Unchecked int `json:"unchecked"`
}

type overCertificate struct {
	Serial   string `json:"serial"`
	SPIFFEID string `json:"spiffe_id"`
	Time     string `json:"time"`
	Validity string `json:"validity"`
	MaxTTL   string `json:"max_ttl"`
}

type evidenceDenials struct {
	Total int `json:"total"`
	// ByReason counts denied requests by the reason label of
	// transitca_rejections_total (the class in the entry's detail),
	// aggregated entries counted by their count=.
	ByReason map[string]int `json:"by_reason"`
}

// evidenceEvent is a rotation, an intermediate change, a drill, or a
// change to the log itself (accepted damage, recovery).
type evidenceEvent struct {
	Seq    uint64 `json:"seq"`
	Time   string `json:"time"`
	Action string `json:"action"`
	Actor  string `json:"actor"`
	Detail string `json:"detail"`
}

type evidenceDrills struct {
	Total  int `json:"total"`
	Passed int `json:"passed"`
	Failed int `json:"failed"`
	// NotChecked counts drills that passed with a step that could not
	// check what it is for (no Vault to ask): not counted as passed.
	NotChecked int `json:"not_checked"`
}

// liveNamespace is, at the end of the period, the service accounts of a
// namespace that hold a live certificate.
type liveNamespace struct {
	Namespace       string         `json:"namespace"`
	ServiceAccounts map[string]int `json:"service_accounts"`
}

// evidenceCommand is a command an auditor runs to re-check the report;
// Check, when set, names the figure of the report its output equals.
type evidenceCommand struct {
	What    string `json:"what"`
	Command string `json:"command"`
	Check   string `json:"check,omitempty"`
}

// eventActions are the admin actions the report lists as key events.
var eventActions = regexp.MustCompile(`^(root-|intermediate-|drill$|accept-damage$|log-recovered$)`)

// evidencePeriod is the period --from and --to name, in whole seconds, so
// that the recomputing commands (jq compares whole seconds) select exactly
// the same entries; rounded outwards, so that "--to now" includes the
// current second.
func evidencePeriod(from, to string) (start, end time.Time, err error) {
	if from == "" {
		return start, end, fmt.Errorf("--from is required: the period starts there")
	}
	t1, err := parseWhen(from)
	if err != nil {
		return start, end, fmt.Errorf("--from: %w", err)
	}
	t2, err := parseWhen(to)
	if err != nil {
		return start, end, fmt.Errorf("--to: %w", err)
	}
	start, end = t1.AsTime().UTC().Truncate(time.Second), t2.AsTime().UTC()
	if e := end.Truncate(time.Second); e.Before(end) {
		end = e.Add(time.Second)
	}
	if !start.Before(end) {
		return start, end, fmt.Errorf("the period is empty: --from %s is not before --to %s", start.Format(time.RFC3339), end.Format(time.RFC3339))
	}
	return start, end, nil
}

// tierFallback returns the tiers' max_ttl of the configuration file
// configFile, nil when it is "".
func tierFallback(configFile string) (map[string]time.Duration, error) {
	if configFile == "" {
		return nil, nil
	}
	c, err := config.Load(configFile)
	if err != nil {
		return nil, err
	}
	fallback := map[string]time.Duration{}
	for name, t := range c.Tiers {
		fallback[name] = t.MaxTTL.Std()
	}
	return fallback, nil
}

// evidenceOptions are the flags of ca report evidence that shape the
// figures.
type evidenceOptions struct {
	start, end time.Time
	// fallback is the tiers' policy of --config, for logs that recorded
	// none.
	fallback map[string]time.Duration
	// control is --control (nil: the first start's tiers).
	control map[string]time.Duration
	// since are the --since checkpoint files.
	since []string
	// vkey is the --verifier-key text, "" when not given.
	vkey string
}

// errUnverified is returned, after the report is written, when a log
// failed verification and --allow-unverified was not given.
var errUnverified = errors.New("a log failed verification")

func reportEvidence(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca report evidence", stderr)
	from := fs.String("from", "", "start of the period, inclusive (RFC 3339 or a duration from now such as -720h; required)")
	to := fs.String("to", "now", "end of the period, exclusive (RFC 3339, \"now\" or a duration from now)")
	configFile := fs.String("config", "", "the CA's configuration: its tiers apply where the log records no policy (a log written before start entries did); with --sign, it names the checkpoint key")
	control := fs.String("control", "", "the stated lifetime control, tier=duration,… (for example service=720h,privileged=168h); default: the tiers in force when the period began")
	var since []string
	fs.Func("since", "a signed checkpoint kept from an earlier audit (\"ca log checkpoint\"): the log must extend it; repeat for several logs", func(v string) error {
		since = append(since, v)
		return nil
	})
	allowUnverified := fs.Bool("allow-unverified", false, "write the report and exit 0 even when a log fails verification (every page is stamped)")
	sign := fs.Bool("sign", false, "sign the report (--out) with the log's checkpoint key, reached through the CA's configuration (--config, with VAULT_ADDR and VAULT_TOKEN; or --dev --data-dir of a dev CA), into <out>.sig")
	var caFlags commonFlags
	fs.BoolVar(&caFlags.dev, "dev", false, "with --sign: the CA is a dev CA whose keys are in --data-dir")
	fs.StringVar(&caFlags.dataDir, "data-dir", "", "with --sign: the CA's data directory (overrides data_dir)")
	output := fs.String("o", "html", "output: html or json")
	outFile := fs.String("out", "", "write the report to this file instead of standard output")
	opts := evidenceOptions{}
	shards, ctx, done, err := lf.connectShards(ctx, fs, args, func() (err error) {
		if *output != "html" && *output != "json" {
			return fmt.Errorf("-o %q: want html or json", *output)
		}
		if opts.start, opts.end, err = evidencePeriod(*from, *to); err != nil {
			return err
		}
		if lf.db != "" && lf.verifierKey == "" {
			return fmt.Errorf("with --db, --verifier-key is required: the report checks the log's checkpoints against the CA's key")
		}
		if opts.control, err = parseControl(*control); err != nil {
			return err
		}
		if opts.vkey, err = lf.verifierKeyText(); err != nil {
			return err
		}
		if *sign && *outFile == "" {
			return errors.New("--sign needs --out: the signature is of the report file")
		}
		if *sign && *configFile == "" && !caFlags.dev {
			return errors.New("--sign needs the CA's configuration: --config FILE (Vault through VAULT_ADDR and VAULT_TOKEN), or --dev --data-dir DIR")
		}
		caFlags.config = *configFile
		opts.since = since
		opts.fallback, err = tierFallback(*configFile)
		return err
	})
	if err != nil {
		return err
	}
	defer done()
	r, err := buildEvidence(ctx, shards, lf, opts)
	if err != nil {
		return err
	}
	r.Source = lf.describe(shards)
	r.CommandLine = commandLine("ca report evidence", args)
	r.Commands = evidenceCommands(r, lf, shards)

	write := func(w io.Writer) error {
		if *output == "html" {
			return writeEvidenceHTML(w, r)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(r)
	}
	if *outFile == "" {
		err = write(stdout)
	} else {
		// A file that appears only when the report is complete.
		_, err = atomicfile.WriteFrom(*outFile, 0o644, write)
	}
	if err != nil {
		return err
	}
	if *sign {
		sig, err := signReport(ctx, caFlags, *outFile, r.Logs)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "signed: %s (check it with: ca report verify --verifier-key KEY %s)\n", sig, *outFile)
	}
	if r.Verification == logFailed && !*allowUnverified {
		var why []string
		for _, lg := range r.Logs {
			if lg.State == logFailed {
				why = append(why, lg.Shard+": "+lg.Failure())
			}
		}
		return fmt.Errorf("%w, so no figure is shown as verified (the report was written with every figure greyed; --allow-unverified exits 0):\n%s",
			errUnverified, strings.Join(why, "\n"))
	}
	return nil
}

// commandLine is the command that was run, quoted for sh.
func commandLine(name string, args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.TrimSpace(name + " " + strings.Join(q, " "))
}

// parseControl reads --control: tier=duration pairs separated by commas.
// A tier name may hold "=" (the duration is after the last one).
func parseControl(s string) (map[string]time.Duration, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]time.Duration{}
	for _, part := range strings.Split(s, ",") {
		i := strings.LastIndexByte(part, '=')
		if i <= 0 {
			return nil, fmt.Errorf("--control %q: %q is not tier=duration", s, part)
		}
		name := strings.TrimSpace(part[:i])
		d, err := time.ParseDuration(strings.TrimSpace(part[i+1:]))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("--control %q: %q: the lifetime of tier %q is not a positive duration", s, part, name)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("--control %q: tier %q is named twice", s, name)
		}
		out[name] = d
	}
	return out, nil
}

// describe names where the logs were read, for the report's header.
func (f *logFlags) describe(shards []shard) string {
	names := make([]string, len(shards))
	for i, s := range shards {
		names[i] = s.name
	}
	what := "admin API"
	if len(f.dbs) > 0 {
		what = "log file"
	}
	if len(shards) > 1 {
		what += "s"
	}
	return what + " " + strings.Join(names, ", ")
}

// eachEntry calls fn with every entry that req selects, page by page: the
// query of "ca log query".
func eachEntry(ctx context.Context, api logAPI, req *adminv1.QueryLogRequest, fn func(*adminv1.Entry)) error {
	req.Limit = 10000
	for {
		resp, err := api.QueryLog(ctx, req)
		if err != nil {
			return err
		}
		for _, e := range resp.GetEntries() {
			fn(e)
		}
		if resp.GetNextPageToken() == "" {
			return nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// buildEvidence computes the report's figures for [start, end) over every
// shard.
func buildEvidence(ctx context.Context, shards []shard, lf *logFlags, o evidenceOptions) (*evidenceReport, error) {
	start, end := o.start, o.end
	r := &evidenceReport{
		From: start.Format(time.RFC3339), To: end.Format(time.RFC3339),
		GeneratedAt: time.Now().UTC().Format(time.RFC3339),
		Issued: evidenceIssued{
			ByTier: map[string]int{}, ByNamespace: map[string]int{}, ByCluster: map[string]int{},
		},
		Denials:       evidenceDenials{ByReason: map[string]int{}},
		Events:        []evidenceEvent{},
		Live:          []*liveNamespace{},
		PolicyChanges: []policyChange{},
		Custody:       []custodySeen{},
		Service:       evidenceService{Events: []serviceEvent{}, Gaps: []serviceGap{}},
	}
	histories := make([]*history, len(shards))
	for i, s := range shards {
		h, err := readHistory(ctx, s, end)
		if err != nil {
			return nil, fmt.Errorf("%s: issuance log: %w", s.name, err)
		}
		histories[i] = h
	}
	r.Control = statedControl(histories, o)
	f := newEvidenceFold(r, start, end)
	live := map[string]*liveNamespace{}
	for i, s := range shards {
		h := histories[i]
		lg := &evidenceLog{Shard: s.name, LastSeqInPeriod: -1, FailedAt: -1}
		r.Logs = append(r.Logs, lg)
		err := eachEntry(ctx, s.api, &adminv1.QueryLogRequest{From: timestamppb.New(start), To: timestamppb.New(end)}, func(e *adminv1.Entry) {
			lg.LastSeqInPeriod = max(lg.LastSeqInPeriod, int64(e.GetSeq()))
			f.add(e, h.at(e.GetSeq(), o.fallback))
		})
		if err != nil {
			return nil, fmt.Errorf("%s: issuance log: %w", s.name, err)
		}
		if err := liveAt(ctx, s.api, end, live); err != nil {
			return nil, fmt.Errorf("%s: issuance log: %w", s.name, err)
		}
		if err := h.serviceHistory(ctx, s, start, end, &r.Service); err != nil {
			return nil, fmt.Errorf("%s: issuance log: %w", s.name, err)
		}
		r.PolicyChanges = append(r.PolicyChanges, h.policyChanges(start, end)...)
		r.Custody = append(r.Custody, h.custodyIn(start, end)...)
		r.Dev = r.Dev || h.devIn(start, end)
		f.privilegedRules(h, start, end)
		logProof(ctx, s, lf, o, lg)
	}
	if err := unmatchedSince(o.since, r.Logs); err != nil {
		return nil, err
	}
	f.finish()
	slices.SortFunc(r.Events, func(a, b evidenceEvent) int {
		return cmp.Or(strings.Compare(a.Time, b.Time), cmp.Compare(a.Seq, b.Seq))
	})
	slices.SortFunc(r.PolicyChanges, func(a, b policyChange) int { return strings.Compare(a.Time, b.Time) })
	slices.SortFunc(r.Custody, func(a, b custodySeen) int { return strings.Compare(a.Time, b.Time) })
	r.Service.sort()
	for _, ns := range slices.Sorted(maps.Keys(live)) {
		r.Live = append(r.Live, live[ns])
	}
	r.Verification = logVerified
	for _, lg := range r.Logs {
		switch {
		case lg.State == logFailed:
			r.Verification = logFailed
		case lg.State == logPartial && r.Verification == logVerified:
			r.Verification = logPartial
		}
	}
	r.CannotShow = cannotShow(r)
	return r, nil
}

// evidenceFold adds up the entries of the period into the report.
type evidenceFold struct {
	r        *evidenceReport
	buckets  *buckets
	validity map[string]*tierValidity
	maxTTLs  map[string]map[time.Duration]bool
	// privileged are the identities issued in a privileged tier.
	privileged map[string]*privilegedIdentity
}

func newEvidenceFold(r *evidenceReport, start, end time.Time) *evidenceFold {
	r.Privileged = evidencePrivileged{Limit: "", Rules: []privilegedRules{}, Identities: []privilegedIdentity{}, Flagged: []flaggedCertificate{}, AdminIdentities: []string{}}
	if d, ok := privilegedLimit(r.Control); ok {
		r.Privileged.Limit = d.String()
	}
	return &evidenceFold{r: r, buckets: newBuckets(start, end), validity: map[string]*tierValidity{},
		maxTTLs: map[string]map[time.Duration]bool{}, privileged: map[string]*privilegedIdentity{}}
}

// add counts one entry of the period, issued under the policy p.
func (f *evidenceFold) add(e *adminv1.Entry, p *policyInForce) {
	r := f.r
	switch e.GetKind() {
	case adminv1.Kind_KIND_ISSUANCE:
		r.Issued.Total++
		r.Issued.ByTier[e.GetTier()]++
		r.Issued.ByNamespace[e.GetNamespace()]++
		r.Issued.ByCluster[e.GetClusterId()]++
		f.buckets.add(e.GetTime().AsTime(), e.GetTier())
		v := f.validity[e.GetTier()]
		if v == nil {
			v = &tierValidity{Tier: e.GetTier(), Over: []overCertificate{}, OverControl: []overCertificate{}, MaxTTL: []string{}}
			if d, ok := r.Control.limit(e.GetTier()); ok {
				v.Control = d.String()
			}
			f.validity[e.GetTier()] = v
			f.maxTTLs[e.GetTier()] = map[time.Duration]bool{}
		}
		checkValidity(v, e, p.maxTTL, f.maxTTLs[e.GetTier()])
		if d, ok := r.Control.limit(e.GetTier()); ok {
			if validity := e.GetNotAfter().AsTime().Sub(e.GetNotBefore().AsTime()); validity > d {
				v.OverControl = append(v.OverControl, overEntry(e, validity, d))
			}
		}
		f.checkPrivileged(e, p)
	case adminv1.Kind_KIND_DENIAL:
		reason, n := denialClass(e)
		r.Denials.Total += n
		r.Denials.ByReason[reason] += n
	case adminv1.Kind_KIND_ADMIN:
		if !eventActions.MatchString(e.GetAction()) {
			return
		}
		r.Events = append(r.Events, evidenceEvent{
			Seq: e.GetSeq(), Time: e.GetTime().AsTime().UTC().Format(time.RFC3339Nano),
			Action: e.GetAction(), Actor: e.GetActor(), Detail: e.GetDetail(),
		})
		if e.GetAction() == "drill" {
			r.Drills.Total++
			switch drillOutcome(e.GetDetail()) {
			case drillPassed:
				r.Drills.Passed++
			case drillNotChecked:
				r.Drills.NotChecked++
			default:
				r.Drills.Failed++
			}
		}
	}
}

// finish sorts what add gathered into the report.
func (f *evidenceFold) finish() {
	r := f.r
	r.Issued.Bucket, r.Issued.ByBucket = f.buckets.unit, f.buckets.list
	for _, tier := range slices.Sorted(maps.Keys(f.validity)) {
		v := f.validity[tier]
		for _, d := range slices.Sorted(maps.Keys(f.maxTTLs[tier])) {
			v.MaxTTL = append(v.MaxTTL, d.String())
		}
		v.Longest = (time.Duration(v.LongestSeconds) * time.Second).String()
		r.Validity = append(r.Validity, v)
	}
	for _, id := range slices.Sorted(maps.Keys(f.privileged)) {
		r.Privileged.Identities = append(r.Privileged.Identities, *f.privileged[id])
	}
	slices.SortFunc(r.Privileged.Flagged, func(a, b flaggedCertificate) int { return strings.Compare(a.Time, b.Time) })
}

// Outcomes of a drill entry.
const (
	drillPassed     = "passed"
	drillNotChecked = "not checked"
	drillFailed     = "failed"
)

// drillOutcome reads a drill entry's detail: passed only when every step
// passed and checked what it is for. A step marked not checked (or, in
// logs written before steps were, the dev-mode Vault step that said it had
// no Vault to check) makes the drill not checked.
func drillOutcome(detail string) string {
	if !strings.HasPrefix(detail, "passed=true") {
		return drillFailed
	}
	if strings.Contains(detail, " not_checked=") || strings.Contains(detail, "no Vault to check") {
		return drillNotChecked
	}
	return drillPassed
}

// overEntry is e as a certificate over the lifetime limit.
func overEntry(e *adminv1.Entry, validity, limit time.Duration) overCertificate {
	return overCertificate{
		Serial: e.GetSerial(), SPIFFEID: e.GetSpiffeId(), Time: e.GetTime().AsTime().UTC().Format(time.RFC3339Nano),
		Validity: validity.String(), MaxTTL: limit.String(),
	}
}

// checkValidity counts e into its tier's validity figures, against the
// tier's maximum lifetime in policy.
func checkValidity(v *tierValidity, e *adminv1.Entry, policy map[string]time.Duration, seen map[time.Duration]bool) {
	v.Issued++
	validity := e.GetNotAfter().AsTime().Sub(e.GetNotBefore().AsTime())
	if secs := int64(validity / time.Second); secs > v.LongestSeconds || v.LongestSerial == "" {
		v.LongestSeconds, v.LongestSerial = secs, e.GetSerial()
	}
	maxTTL, ok := policy[e.GetTier()]
	if !ok {
		v.Unchecked++
		return
	}
	seen[maxTTL] = true
	if validity > maxTTL {
		v.Over = append(v.Over, overEntry(e, validity, maxTTL))
	}
}

// denialClass returns the reason a denial entry stands for (the class in
// its detail, else its gRPC code) and how many requests (count= of an
// aggregated entry, else 1).
func denialClass(e *adminv1.Entry) (string, int) {
	reason, n := e.GetCode(), 1
	for _, f := range strings.Fields(e.GetDetail()) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "class":
			reason = v
		case "count":
			if c, err := strconv.Atoi(v); err == nil && c > 0 {
				n = c
			}
		}
	}
	return reason, n
}

// liveAt adds to live, per namespace, the service accounts holding a
// certificate of the log issued before end and valid at end.
func liveAt(ctx context.Context, api logAPI, end time.Time, live map[string]*liveNamespace) error {
	return liveCertificates(ctx, api, "", end, func(e *adminv1.Entry) {
		if !e.GetTime().AsTime().Before(end) {
			return // issued after the period, though back-dated into it
		}
		n := live[e.GetNamespace()]
		if n == nil {
			n = &liveNamespace{Namespace: e.GetNamespace(), ServiceAccounts: map[string]int{}}
			live[e.GetNamespace()] = n
		}
		n.ServiceAccounts[e.GetServiceAccount()]++
	})
}

// buckets counts issuances per day (per month for long periods), every
// bucket of the period present.
type buckets struct {
	unit  string
	list  []evidenceBucket
	index map[string]int
}

func newBuckets(start, end time.Time) *buckets {
	b := &buckets{unit: "day", index: map[string]int{}}
	if end.Sub(start) > 400*24*time.Hour {
		b.unit = "month"
	}
	for t := b.floor(start); t.Before(end); t = b.next(t) {
		b.index[b.key(t)] = len(b.list)
		b.list = append(b.list, evidenceBucket{Start: b.key(t), ByTier: map[string]int{}})
	}
	return b
}

func (b *buckets) floor(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	if b.unit == "month" {
		d = 1
	}
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

func (b *buckets) next(t time.Time) time.Time {
	if b.unit == "month" {
		return t.AddDate(0, 1, 0)
	}
	return t.AddDate(0, 0, 1)
}

func (b *buckets) key(t time.Time) string {
	if b.unit == "month" {
		return t.UTC().Format("2006-01")
	}
	return t.UTC().Format("2006-01-02")
}

func (b *buckets) add(t time.Time, tier string) {
	if i, ok := b.index[b.key(t)]; ok {
		b.list[i].Total++
		b.list[i].ByTier[tier]++
	}
}
