package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/transitca/transitca/ca"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// What a log says about the daemons that wrote it: their starts (each with
// the policy it ran), stops and what Vault said about the keys.

// policyInForce is the policy of one start, as recorded.
type policyInForce struct {
	// maxTTL is each tier's maximum lifetime; nil when not recorded.
	maxTTL map[string]time.Duration
	// rules, defaultTier and admins are known when the start recorded
	// its StartRecord (rulesKnown).
	rulesKnown  bool
	rules       []ca.RuleRecord
	defaultTier string
	admins      []string
}

// startEntry is one start of a daemon on a log.
type startEntry struct {
	seq    uint64
	at     time.Time
	actor  string
	record *ca.StartRecord // nil in logs written before starts recorded one
	policy *policyInForce
	dev    bool
	// problem says what of the start's detail did not read.
	problem string
}

// history is what one shard's admin entries say up to the end of the
// period.
type history struct {
	shard   string
	starts  []startEntry
	stops   map[uint64]time.Time // by seq
	custody []custodySeen        // key-custody entries of drills
}

// readHistory reads the starts, stops and key-custody entries of a log up
// to end.
func readHistory(ctx context.Context, s shard, end time.Time) (*history, error) {
	h := &history{shard: s.name, stops: map[uint64]time.Time{}}
	err := eachEntry(ctx, s.api, &adminv1.QueryLogRequest{Kind: adminv1.Kind_KIND_ADMIN, To: timestamppb.New(end)}, func(e *adminv1.Entry) {
		at := e.GetTime().AsTime().UTC()
		switch e.GetAction() {
		case ca.StartAction:
			h.starts = append(h.starts, readStart(e))
		case ca.StopAction:
			h.stops[e.GetSeq()] = at
		case ca.KeyCustodyAction:
			rec, err := ca.ParseKeyCustodyRecord(e.GetDetail())
			if err != nil {
				return
			}
			h.custody = append(h.custody, custodySeen{Shard: s.name, Seq: e.GetSeq(), Time: at.Format(time.RFC3339Nano), At: rec.At, Keys: rec.Keys})
		}
	})
	slices.SortFunc(h.starts, func(a, b startEntry) int { return compareSeq(a.seq, b.seq) })
	return h, err
}

func compareSeq(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// readStart reads a start entry: its StartRecord, else (older logs) the
// tier_max_ttl field.
func readStart(e *adminv1.Entry) startEntry {
	s := startEntry{seq: e.GetSeq(), at: e.GetTime().AsTime().UTC(), actor: e.GetActor(), policy: &policyInForce{}}
	rec, ok, err := ca.ParseStartRecord(e.GetDetail())
	switch {
	case err != nil:
		s.problem = err.Error()
	case ok:
		s.record, s.dev = rec, rec.Dev
		maxTTL, err := rec.MaxTTLs()
		if err != nil {
			s.problem = err.Error()
		}
		s.policy = &policyInForce{maxTTL: maxTTL, rulesKnown: true, rules: rec.Rules, defaultTier: rec.DefaultTier, admins: rec.AdminIdentities}
		return s
	}
	maxTTL, ok, err := ca.ParseTierPolicy(e.GetDetail())
	if ok {
		s.policy.maxTTL = maxTTL
	}
	if err != nil {
		s.problem = strings.TrimSpace(s.problem + " " + err.Error())
	}
	s.dev = strings.Contains(ca.DetailFields(e.GetDetail())["keys"], "DEV-ONLY")
	return s
}

// at returns the policy in force for the entry seq: that of the last
// start before it, else one with the tiers of fallback.
func (h *history) at(seq uint64, fallback map[string]time.Duration) *policyInForce {
	if s := h.startBefore(seq); s != nil && s.policy.maxTTL != nil {
		return s.policy
	}
	return &policyInForce{maxTTL: fallback}
}

// startBefore is the last start before the entry seq, nil when none.
func (h *history) startBefore(seq uint64) *startEntry {
	i, _ := slices.BinarySearchFunc(h.starts, seq, func(s startEntry, seq uint64) int { return compareSeq(s.seq, seq) })
	if i == 0 {
		return nil
	}
	return &h.starts[i-1]
}

// inForce are the starts whose policy was in force during [start, end):
// the last before start, and every one within.
func (h *history) inForce(start, end time.Time) []*startEntry {
	var out []*startEntry
	for i := range h.starts {
		s := &h.starts[i]
		switch {
		case !s.at.After(start):
			out = []*startEntry{s}
		case s.at.Before(end):
			out = append(out, s)
		}
	}
	return out
}

// evidenceControl is the lifetime control certificates are held to: the
// one stated with --control, else the tiers in force when the period
// began.
type evidenceControl struct {
	// Source says where the control comes from.
	Source string `json:"source"`
	// Tiers are the lifetimes per tier ({} when there is no control).
	Tiers map[string]string `json:"tiers"`
	// Longest is the limit of a tier the control does not name: the
	// longest it states.
	Longest string `json:"longest"`

	d map[string]time.Duration
}

// limit is the lifetime the control allows tier: its own, or for a tier
// it does not name the longest it states; false when there is no control.
func (c evidenceControl) limit(tier string) (time.Duration, bool) {
	if len(c.d) == 0 {
		return 0, false
	}
	if d, ok := c.d[tier]; ok {
		return d, true
	}
	return slices.Max(slices.Collect(maps.Values(c.d))), true
}

// statedControl is --control, else the tiers of the start in force when
// the period began (the last start before it on any log, else the first
// within it), else those of --config.
func statedControl(histories []*history, o evidenceOptions) evidenceControl {
	c := evidenceControl{Tiers: map[string]string{}}
	set := func(d map[string]time.Duration, source string) evidenceControl {
		c.d, c.Source = d, source
		for name, v := range d {
			c.Tiers[name] = v.String()
		}
		if len(d) > 0 {
			c.Longest = slices.Max(slices.Collect(maps.Values(d))).String()
		}
		return c
	}
	if o.control != nil {
		return set(o.control, "stated with --control")
	}
	var before, within *startEntry
	var beforeShard, withinShard string
	for _, h := range histories {
		for i := range h.starts {
			s := &h.starts[i]
			if s.policy.maxTTL == nil {
				continue
			}
			switch {
			case !s.at.After(o.start):
				if before == nil || s.at.After(before.at) {
					before, beforeShard = s, h.shard
				}
			case s.at.Before(o.end):
				if within == nil || s.at.Before(within.at) {
					within, withinShard = s, h.shard
				}
			}
		}
	}
	switch {
	case before != nil:
		return set(before.policy.maxTTL, fmt.Sprintf("the tiers in force when the period began (start of %s at %s)", beforeShard, before.at.Format(time.RFC3339)))
	case within != nil:
		return set(within.policy.maxTTL, fmt.Sprintf("the tiers of the first start in the period (%s at %s)", withinShard, within.at.Format(time.RFC3339)))
	case o.fallback != nil:
		return set(o.fallback, "the tiers of --config (the log records no policy)")
	}
	c.Source = "none: no start in the log records its tiers; state one with --control"
	return c
}

// policyChange is a start whose policy differs from the start before it
// on the same log.
type policyChange struct {
	Shard   string   `json:"shard"`
	Seq     uint64   `json:"seq"`
	Time    string   `json:"time"`
	Actor   string   `json:"actor"`
	Host    string   `json:"host,omitempty"`
	Changes []string `json:"changes"`
}

// policyChanges lists every start in [start, end) whose policy differs
// from the one before it.
func (h *history) policyChanges(start, end time.Time) []policyChange {
	var out []policyChange
	for i := 1; i < len(h.starts); i++ {
		s, prev := &h.starts[i], &h.starts[i-1]
		if s.at.Before(start) || !s.at.Before(end) {
			continue
		}
		changes := diffPolicies(prev.policy, s.policy)
		if s.problem != "" {
			changes = append(changes, "part of the recorded policy does not read: "+s.problem)
		}
		if len(changes) == 0 {
			continue
		}
		c := policyChange{Shard: h.shard, Seq: s.seq, Time: s.at.Format(time.RFC3339Nano), Actor: s.actor, Changes: changes}
		if s.record != nil {
			c.Host = s.record.Host
		}
		out = append(out, c)
	}
	return out
}

// diffPolicies describes what changed from a to b.
func diffPolicies(a, b *policyInForce) []string {
	var out []string
	switch {
	case a.maxTTL == nil && b.maxTTL == nil:
	case a.maxTTL == nil:
		out = append(out, "the tiers are recorded from this start on")
	case b.maxTTL == nil:
		out = append(out, "this start records no tiers")
	default:
		for _, name := range slices.Sorted(maps.Keys(mergeKeys(a.maxTTL, b.maxTTL))) {
			av, aok := a.maxTTL[name]
			bv, bok := b.maxTTL[name]
			switch {
			case !aok:
				out = append(out, fmt.Sprintf("tier %q added: max_ttl %s", name, bv))
			case !bok:
				out = append(out, fmt.Sprintf("tier %q removed (max_ttl was %s)", name, av))
			case av != bv:
				out = append(out, fmt.Sprintf("tier %q: max_ttl %s → %s", name, av, bv))
			}
		}
	}
	if !a.rulesKnown || !b.rulesKnown {
		if a.rulesKnown != b.rulesKnown && b.rulesKnown {
			out = append(out, "the policy rules are recorded from this start on")
		}
		return out
	}
	if a.defaultTier != b.defaultTier {
		out = append(out, fmt.Sprintf("default tier %q → %q", a.defaultTier, b.defaultTier))
	}
	if ra, rb := rulesText(a.rules), rulesText(b.rules); !slices.Equal(ra, rb) {
		out = append(out, fmt.Sprintf("policy rules [%s] → [%s]", strings.Join(ra, "; "), strings.Join(rb, "; ")))
	}
	if !slices.Equal(a.admins, b.admins) {
		out = append(out, fmt.Sprintf("admin identities [%s] → [%s]", strings.Join(a.admins, ", "), strings.Join(b.admins, ", ")))
	}
	return out
}

func mergeKeys(a, b map[string]time.Duration) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// rulesText describes each rule: its tier and the identities it matches.
func rulesText(rules []ca.RuleRecord) []string {
	out := make([]string, 0, len(rules))
	for _, r := range rules {
		out = append(out, ruleText(r))
	}
	return out
}

func ruleText(r ca.RuleRecord) string {
	var parts []string
	for _, f := range []struct {
		name string
		v    []string
	}{{"namespaces", r.Namespaces}, {"service accounts", r.ServiceAccounts}, {"SPIFFE IDs", r.SPIFFEIDs}, {"clusters", r.Clusters}} {
		if len(f.v) > 0 {
			parts = append(parts, f.name+" "+strings.Join(f.v, ","))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "every identity")
	}
	return fmt.Sprintf("tier %q: %s", r.Tier, strings.Join(parts, ", "))
}

// evidencePrivileged is who was privileged in the period and the known
// privileged workloads issued under a longer tier.
type evidencePrivileged struct {
	// Limit is the privileged tier's lifetime in the control ("" when the
	// control names no tier "privileged": nothing is flagged).
	Limit string `json:"limit"`
	// Rules are, per start in force during the period, the rules that
	// send identities to a tier no longer than Limit.
	Rules []privilegedRules `json:"rules"`
	// Identities are the identities issued a certificate in such a tier.
	Identities []privilegedIdentity `json:"identities"`
	// Flagged are the certificates of known privileged workloads (istiod,
	// gateways, ztunnel, the CA's admin) issued in a longer tier.
	Flagged []flaggedCertificate `json:"flagged"`
	// AdminIdentities are the CA's admin identities recorded by the
	// starts in force during the period.
	AdminIdentities []string `json:"admin_identities"`
}

type privilegedRules struct {
	Shard string `json:"shard"`
	Seq   uint64 `json:"seq"`
	Time  string `json:"time"`
	// Recorded is false for a start that did not record its rules.
	Recorded bool     `json:"recorded"`
	Rules    []string `json:"rules"`
}

type privilegedIdentity struct {
	SPIFFEID     string `json:"spiffe_id"`
	Tier         string `json:"tier"`
	Certificates int    `json:"certificates"`
}

type flaggedCertificate struct {
	Serial   string `json:"serial"`
	SPIFFEID string `json:"spiffe_id"`
	// Workload is what makes the identity known to be privileged.
	Workload string `json:"workload"`
	Time     string `json:"time"`
	Tier     string `json:"tier"`
	TierMax  string `json:"tier_max"`
	Validity string `json:"validity"`
	// Over is whether the validity itself exceeds the privileged limit
	// (red); otherwise only the tier could have granted more (amber).
	Over bool `json:"over"`
}

// privilegedTier is the tier name the control's privileged limit is read
// from.
const privilegedTier = "privileged"

// privilegedLimit is the privileged tier's lifetime in the control.
func privilegedLimit(c evidenceControl) (time.Duration, bool) {
	d, ok := c.d[privilegedTier]
	return d, ok
}

// isPrivilegedTier reports whether tier, with its maximum lifetime max
// (0 when unknown), is a privileged tier: no longer than the privileged
// limit. The CA's own serving and drill certificates are not workloads.
func isPrivilegedTier(c evidenceControl, tier string, maxTTL time.Duration) bool {
	if tier == ca.ServingTier || tier == ca.DrillTier {
		return false
	}
	limit, ok := privilegedLimit(c)
	if !ok || maxTTL == 0 {
		return tier == privilegedTier
	}
	return maxTTL <= limit
}

// privilegedRules adds the rules of every start of h in force during the
// period that send identities to a privileged tier.
func (f *evidenceFold) privilegedRules(h *history, start, end time.Time) {
	for _, s := range h.inForce(start, end) {
		pr := privilegedRules{Shard: h.shard, Seq: s.seq, Time: s.at.Format(time.RFC3339Nano), Recorded: s.policy.rulesKnown, Rules: []string{}}
		for _, r := range s.policy.rules {
			if isPrivilegedTier(f.r.Control, r.Tier, s.policy.maxTTL[r.Tier]) {
				pr.Rules = append(pr.Rules, ruleText(r))
			}
		}
		f.r.Privileged.Rules = append(f.r.Privileged.Rules, pr)
		for _, a := range s.policy.admins {
			if !slices.Contains(f.r.Privileged.AdminIdentities, a) {
				f.r.Privileged.AdminIdentities = append(f.r.Privileged.AdminIdentities, a)
			}
		}
	}
	slices.Sort(f.r.Privileged.AdminIdentities)
}

// knownPrivileged names the privileged workload an issuance is for, ""
// when it is none: istiod (service account istiod or istiod-<revision>),
// a gateway (a service account with "gateway" in its name), ztunnel, or
// one of the CA's admin identities.
func knownPrivileged(e *adminv1.Entry, admins []string) string {
	sa := e.GetServiceAccount()
	switch {
	case sa == "istiod" || strings.HasPrefix(sa, "istiod-"):
		return "istiod"
	case strings.Contains(sa, "gateway"):
		return "gateway"
	case sa == "ztunnel":
		return "ztunnel"
	case slices.Contains(admins, e.GetSpiffeId()):
		return "the CA's admin"
	}
	return ""
}

// checkPrivileged counts an issuance into the privileged identities, and
// flags it when it is for a known privileged workload in a longer tier.
func (f *evidenceFold) checkPrivileged(e *adminv1.Entry, p *policyInForce) {
	tierMax := p.maxTTL[e.GetTier()]
	if isPrivilegedTier(f.r.Control, e.GetTier(), tierMax) {
		id := f.privileged[e.GetSpiffeId()]
		if id == nil {
			id = &privilegedIdentity{SPIFFEID: e.GetSpiffeId(), Tier: e.GetTier()}
			f.privileged[e.GetSpiffeId()] = id
		}
		id.Certificates++
	}
	limit, ok := privilegedLimit(f.r.Control)
	if !ok || e.GetTier() == ca.DrillTier || e.GetTier() == ca.ServingTier {
		return
	}
	workload := knownPrivileged(e, p.admins)
	if workload == "" {
		return
	}
	validity := e.GetNotAfter().AsTime().Sub(e.GetNotBefore().AsTime())
	if validity <= limit && tierMax <= limit {
		return
	}
	maxText := "not recorded"
	if tierMax > 0 {
		maxText = tierMax.String()
	}
	f.r.Privileged.Flagged = append(f.r.Privileged.Flagged, flaggedCertificate{
		Serial: e.GetSerial(), SPIFFEID: e.GetSpiffeId(), Workload: workload, Time: e.GetTime().AsTime().UTC().Format(time.RFC3339Nano),
		Tier: e.GetTier(), TierMax: maxText, Validity: validity.String(), Over: validity > limit,
	})
}

// evidenceService is when the daemons served: their starts and stops in
// the period and the gaps between.
type evidenceService struct {
	Events []serviceEvent `json:"events"`
	Gaps   []serviceGap   `json:"gaps"`
	// UncleanStops counts starts with no stop before them: the daemon
	// before was killed, crashed or lost its machine.
	UncleanStops int `json:"unclean_stops"`
	// RollbackUnchecked counts starts on a log with entries whose witness
	// held no checkpoint: nothing could show the log was not rolled back.
	RollbackUnchecked int `json:"rollback_unchecked"`
}

type serviceEvent struct {
	Shard  string `json:"shard"`
	Seq    uint64 `json:"seq"`
	Time   string `json:"time"`
	Action string `json:"action"`
	Detail string `json:"detail"`
	// Unclean marks a start with no stop before it.
	Unclean bool `json:"unclean,omitempty"`
	// RollbackUnchecked marks a start whose witness held nothing though
	// the log had entries.
	RollbackUnchecked bool `json:"rollback_unchecked,omitempty"`
}

// serviceGap is a time a log's daemon did not run: from its stop (or,
// after an unclean stop, from the last entry before the start, the latest
// it can have stopped) to the next start.
type serviceGap struct {
	Shard   string `json:"shard"`
	From    string `json:"from"`
	To      string `json:"to"`
	Seconds int64  `json:"seconds"`
	Clean   bool   `json:"clean"`
}

func (s *evidenceService) sort() {
	slices.SortFunc(s.Events, func(a, b serviceEvent) int { return strings.Compare(a.Time, b.Time) })
	slices.SortFunc(s.Gaps, func(a, b serviceGap) int { return strings.Compare(a.From, b.From) })
}

// serviceHistory adds the starts and stops of h in [start, end) to svc,
// with the gap before each start.
func (h *history) serviceHistory(ctx context.Context, s shard, start, end time.Time, svc *evidenceService) error {
	in := func(t time.Time) bool { return !t.Before(start) && t.Before(end) }
	for seq, at := range h.stops {
		if in(at) {
			svc.Events = append(svc.Events, serviceEvent{Shard: s.name, Seq: seq, Time: at.Format(time.RFC3339Nano), Action: ca.StopAction, Detail: "clean stop"})
		}
	}
	for i := range h.starts {
		st := &h.starts[i]
		if !in(st.at) {
			continue
		}
		ev := serviceEvent{Shard: s.name, Seq: st.seq, Time: st.at.Format(time.RFC3339Nano), Action: ca.StartAction, Detail: startSummary(st)}
		if r := st.record; r != nil && r.Log.Witness == ca.WitnessEmpty && r.Log.Size > 0 {
			ev.RollbackUnchecked = true
			svc.RollbackUnchecked++
		}
		// The previous run's last entry: just before what this start
		// found in the log (the entries between, such as the
		// intermediate it put to use, are its own).
		last := st.seq - 1
		if st.record != nil && st.record.Log.Size <= st.seq {
			last = st.record.Log.Size - 1
		}
		if last < st.seq && i > 0 {
			prev, err := s.api.GetEntry(ctx, &adminv1.GetEntryRequest{Key: &adminv1.GetEntryRequest_Seq{Seq: last}})
			if err != nil {
				return err
			}
			from := prev.GetEntry().GetTime().AsTime().UTC()
			_, clean := h.stops[last]
			if !clean {
				ev.Unclean = true
				svc.UncleanStops++
			}
			svc.Gaps = append(svc.Gaps, serviceGap{Shard: s.name, From: from.Format(time.RFC3339Nano), To: ev.Time,
				Seconds: int64(st.at.Sub(from) / time.Second), Clean: clean})
		}
		svc.Events = append(svc.Events, ev)
	}
	return nil
}

// startSummary is one line on a start: version, host, mode, witness.
func startSummary(s *startEntry) string {
	r := s.record
	if r == nil {
		return "start (recorded before starts recorded their policy and keys)"
	}
	mode := "Vault"
	if r.Dev {
		mode = "DEV MODE (local software keys)"
	}
	text := fmt.Sprintf("version %s on %s, %s, log of %d entries", r.Version, cmpOrNone(r.Host), mode, r.Log.Size)
	switch r.Log.Witness {
	case ca.WitnessChecked:
		text += fmt.Sprintf(", checked against the witness's checkpoint of size %d", r.Log.WitnessSize)
	case ca.WitnessEmpty:
		if r.Log.Size > 0 {
			text += ", the witness held NO checkpoint: a rollback of the log could not be detected at this start"
		} else {
			text += ", new log"
		}
	case ca.WitnessNone:
		text += ", no witness"
	}
	return text
}

// custodySeen is what a start or a drill recorded about the keys.
type custodySeen struct {
	Shard string          `json:"shard"`
	Seq   uint64          `json:"seq"`
	Time  string          `json:"time"`
	At    string          `json:"at"`
	Keys  []ca.KeyCustody `json:"keys"`
}

// custodyIn is what the starts in force during the period and the drills
// within it recorded about the keys.
func (h *history) custodyIn(start, end time.Time) []custodySeen {
	var out []custodySeen
	for _, s := range h.inForce(start, end) {
		if s.record != nil {
			out = append(out, custodySeen{Shard: h.shard, Seq: s.seq, Time: s.at.Format(time.RFC3339Nano), At: "start", Keys: s.record.Custody})
		}
	}
	for _, c := range h.custody {
		if t, err := time.Parse(time.RFC3339Nano, c.Time); err == nil && !t.Before(start) && t.Before(end) {
			out = append(out, c)
		}
	}
	return out
}

// devIn reports whether a start in force during the period ran in dev
// mode.
func (h *history) devIn(start, end time.Time) bool {
	for _, s := range h.inForce(start, end) {
		if s.dev {
			return true
		}
	}
	return false
}

// checkpointKeyCustody says where the checkpoint key was, from the last
// record of it: for the sentence under the verifier key.
func checkpointKeyCustody(seen []custodySeen) string {
	for i := len(seen) - 1; i >= 0; i-- {
		for _, k := range seen[i].Keys {
			if k.Role != "checkpoint" {
				continue
			}
			switch {
			case k.Where == ca.KeyInLocalFile:
				return "a local software key file of a dev-mode CA: it is NOT protected by Vault"
			case k.Error != "":
				return fmt.Sprintf("a Vault Transit key (%s/%s) that Vault did not answer for at %s: %s", k.Mount, k.Name, seen[i].Time, k.Error)
			case len(k.CanLeave()) > 0:
				return fmt.Sprintf("a Vault Transit key (%s/%s) that Vault reported as %s at %s: its private key CAN leave Vault", k.Mount, k.Name, strings.Join(k.CanLeave(), " and "), seen[i].Time)
			default:
				return fmt.Sprintf("a Vault Transit key (%s/%s); Vault answered exportable=false, allow_plaintext_backup=false at %s", k.Mount, k.Name, seen[i].Time)
			}
		}
	}
	return "not recorded in the log (a log written before starts recorded key custody): see the CA's configuration"
}
