package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/transitca/transitca/ca"
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

	Issued   evidenceIssued   `json:"issued"`
	Validity []*tierValidity  `json:"validity"`
	Denials  evidenceDenials  `json:"denials"`
	Events   []evidenceEvent  `json:"events"`
	Drills   evidenceDrills   `json:"drills"`
	Live     []*liveNamespace `json:"live_at_to"`
	// Logs are the logs the figures come from: one per replica (shard).
	Logs     []*evidenceLog    `json:"logs"`
	Commands []evidenceCommand `json:"commands"`
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
// certificate was issued.
type tierValidity struct {
	Tier   string `json:"tier"`
	Issued int    `json:"issued"`
	// MaxTTL lists the distinct maximum lifetimes in force for the tier
	// during the period (one, unless the configuration changed).
	MaxTTL []string `json:"max_ttl"`
	// LongestSeconds is the longest validity (NotAfter - NotBefore)
	// granted; LongestSerial names that certificate.
	LongestSeconds int64  `json:"longest_seconds"`
	Longest        string `json:"longest"`
	LongestSerial  string `json:"longest_serial"`
	// Over lists every certificate whose validity exceeds the tier's
	// maximum lifetime in force when it was issued: there should be none.
	Over []overCertificate `json:"over"`
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

// evidenceEvent is a rotation, an intermediate change or a drill.
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
}

// liveNamespace is, at the end of the period, the service accounts of a
// namespace that hold a live certificate.
type liveNamespace struct {
	Namespace       string         `json:"namespace"`
	ServiceAccounts map[string]int `json:"service_accounts"`
}

// evidenceLog is what proves a log the figures come from: its
// verification and the signed checkpoint that covers the period.
type evidenceLog struct {
	// Shard is the address or file the log was read from.
	Shard          string `json:"shard"`
	Verified       bool   `json:"verified"`
	VerifyError    string `json:"verify_error,omitempty"`
	Entries        uint64 `json:"entries"`
	Root           string `json:"root"`
	Checkpoint     string `json:"checkpoint"`
	CheckpointSize uint64 `json:"checkpoint_size"`
	VerifierKey    string `json:"verifier_key"`
	// LastSeqInPeriod is the sequence number of the period's last entry
	// (-1: no entry); CoversPeriod is whether the checkpoint's tree holds it.
	LastSeqInPeriod int64  `json:"last_seq_in_period"`
	CoversPeriod    bool   `json:"covers_period"`
	CheckpointError string `json:"checkpoint_error,omitempty"`
}

// evidenceCommand is a command an auditor runs to re-check the report;
// Check, when set, names the figure of the report its output equals.
type evidenceCommand struct {
	What    string `json:"what"`
	Command string `json:"command"`
	Check   string `json:"check,omitempty"`
}

// eventActions are the admin actions the report lists as key events.
var eventActions = regexp.MustCompile(`^(root-|intermediate-|drill$)`)

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

func reportEvidence(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca report evidence", stderr)
	from := fs.String("from", "", "start of the period, inclusive (RFC 3339 or a duration from now such as -720h; required)")
	to := fs.String("to", "now", "end of the period, exclusive (RFC 3339, \"now\" or a duration from now)")
	configFile := fs.String("config", "", "configuration whose tiers apply where the log records no policy (a log written before start entries did)")
	output := fs.String("o", "html", "output: html or json")
	outFile := fs.String("out", "", "write the report to this file instead of standard output")
	var (
		start, end time.Time
		fallback   map[string]time.Duration
	)
	shards, ctx, done, err := lf.connectShards(ctx, fs, args, func() (err error) {
		if *output != "html" && *output != "json" {
			return fmt.Errorf("-o %q: want html or json", *output)
		}
		if start, end, err = evidencePeriod(*from, *to); err != nil {
			return err
		}
		if lf.db != "" && lf.verifierKey == "" {
			return fmt.Errorf("with --db, --verifier-key is required: the report checks the log's checkpoints against the CA's key")
		}
		fallback, err = tierFallback(*configFile)
		return err
	})
	if err != nil {
		return err
	}
	defer done()
	r, err := buildEvidence(ctx, shards, start, end, fallback)
	if err != nil {
		return err
	}
	r.Source = lf.describe(shards)
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
		return write(stdout)
	}
	// A file that appears only when the report is complete.
	_, err = atomicfile.WriteFrom(*outFile, 0o644, write)
	return err
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

// tierPolicy is the tier policy a start entry recorded.
type tierPolicy struct {
	at     time.Time
	maxTTL map[string]time.Duration
}

// tierPolicies are the tier policies of the start entries, in time order.
type tierPolicies []tierPolicy

// at returns the policy in force at t: the last recorded before it, else
// fallback.
func (p tierPolicies) at(t time.Time, fallback map[string]time.Duration) map[string]time.Duration {
	i, _ := slices.BinarySearchFunc(p, t, func(e tierPolicy, t time.Time) int { return e.at.Compare(t) })
	if i == 0 {
		return fallback
	}
	return p[i-1].maxTTL
}

// buildEvidence computes the report's figures for [start, end) over every
// shard.
func buildEvidence(ctx context.Context, shards []shard, start, end time.Time, fallback map[string]time.Duration) (*evidenceReport, error) {
	r := &evidenceReport{
		From: start.Format(time.RFC3339), To: end.Format(time.RFC3339),
		GeneratedAt: time.Now().UTC().Format(time.RFC3339),
		Issued: evidenceIssued{
			ByTier: map[string]int{}, ByNamespace: map[string]int{}, ByCluster: map[string]int{},
		},
		Denials: evidenceDenials{ByReason: map[string]int{}},
		Events:  []evidenceEvent{},
		Live:    []*liveNamespace{},
	}
	f := &evidenceFold{r: r, buckets: newBuckets(start, end), validity: map[string]*tierValidity{}, maxTTLs: map[string]map[time.Duration]bool{}}
	live := map[string]*liveNamespace{}
	for _, s := range shards {
		lg := &evidenceLog{Shard: s.name, LastSeqInPeriod: -1}
		r.Logs = append(r.Logs, lg)
		policies, err := startPolicies(ctx, s.api, end)
		if err != nil {
			return nil, fmt.Errorf("%s: issuance log: %w", s.name, err)
		}
		err = eachEntry(ctx, s.api, &adminv1.QueryLogRequest{From: timestamppb.New(start), To: timestamppb.New(end)}, func(e *adminv1.Entry) {
			lg.LastSeqInPeriod = max(lg.LastSeqInPeriod, int64(e.GetSeq()))
			f.add(e, policies.at(e.GetTime().AsTime(), fallback))
		})
		if err != nil {
			return nil, fmt.Errorf("%s: issuance log: %w", s.name, err)
		}
		if err := liveAt(ctx, s.api, end, live); err != nil {
			return nil, fmt.Errorf("%s: issuance log: %w", s.name, err)
		}
		logProof(ctx, s.api, lg)
	}
	slices.SortFunc(r.Events, func(a, b evidenceEvent) int {
		return cmp.Or(strings.Compare(a.Time, b.Time), cmp.Compare(a.Seq, b.Seq))
	})
	r.Issued.Bucket, r.Issued.ByBucket = f.buckets.unit, f.buckets.list
	for _, tier := range slices.Sorted(maps.Keys(f.validity)) {
		v := f.validity[tier]
		for _, d := range slices.Sorted(maps.Keys(f.maxTTLs[tier])) {
			v.MaxTTL = append(v.MaxTTL, d.String())
		}
		v.Longest = (time.Duration(v.LongestSeconds) * time.Second).String()
		r.Validity = append(r.Validity, v)
	}
	for _, ns := range slices.Sorted(maps.Keys(live)) {
		r.Live = append(r.Live, live[ns])
	}
	return r, nil
}

// startPolicies reads the tier policy of every start entry of a log up to
// end.
func startPolicies(ctx context.Context, api logAPI, end time.Time) (tierPolicies, error) {
	var policies tierPolicies
	err := eachEntry(ctx, api, &adminv1.QueryLogRequest{Kind: adminv1.Kind_KIND_ADMIN, To: timestamppb.New(end)}, func(e *adminv1.Entry) {
		if e.GetAction() != "start" {
			return
		}
		if p, ok, perr := ca.ParseTierPolicy(e.GetDetail()); ok && perr == nil {
			policies = append(policies, tierPolicy{e.GetTime().AsTime(), p})
		}
	})
	slices.SortStableFunc(policies, func(a, b tierPolicy) int { return a.at.Compare(b.at) })
	return policies, err
}

// evidenceFold adds up the entries of the period into the report.
type evidenceFold struct {
	r        *evidenceReport
	buckets  *buckets
	validity map[string]*tierValidity
	maxTTLs  map[string]map[time.Duration]bool
}

// add counts one entry of the period, an issuance against policy.
func (f *evidenceFold) add(e *adminv1.Entry, policy map[string]time.Duration) {
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
			v = &tierValidity{Tier: e.GetTier(), Over: []overCertificate{}, MaxTTL: []string{}}
			f.validity[e.GetTier()] = v
			f.maxTTLs[e.GetTier()] = map[time.Duration]bool{}
		}
		checkValidity(v, e, policy, f.maxTTLs[e.GetTier()])
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
			if strings.HasPrefix(e.GetDetail(), "passed=true") {
				r.Drills.Passed++
			} else {
				r.Drills.Failed++
			}
		}
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
		v.Over = append(v.Over, overCertificate{
			Serial: e.GetSerial(), SPIFFEID: e.GetSpiffeId(), Time: e.GetTime().AsTime().UTC().Format(time.RFC3339Nano),
			Validity: validity.String(), MaxTTL: maxTTL.String(),
		})
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

// logProof fills lg: the log verified end to end, and the latest signed
// checkpoint, which must cover the period's last entry. Failures are
// reported in the report, not hidden.
func logProof(ctx context.Context, api logAPI, lg *evidenceLog) {
	if v, err := api.VerifyLog(ctx, &adminv1.VerifyLogRequest{}); err != nil {
		lg.VerifyError = err.Error()
	} else {
		lg.Verified, lg.Entries, lg.Root = true, v.GetTreeSize(), fmt.Sprintf("%x", v.GetRootHash())
	}
	cp, err := api.GetCheckpoint(ctx, &adminv1.GetCheckpointRequest{})
	if err != nil {
		lg.CheckpointError = err.Error()
		return
	}
	lg.Checkpoint, lg.VerifierKey = string(cp.GetCheckpoint()), cp.GetVerifierKey()
	if lines := strings.SplitN(lg.Checkpoint, "\n", 3); len(lines) >= 2 {
		lg.CheckpointSize, _ = strconv.ParseUint(lines[1], 10, 64)
	}
	lg.CoversPeriod = int64(lg.CheckpointSize) > lg.LastSeqInPeriod
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
