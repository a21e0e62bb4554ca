package mesh

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// The metric families of Istio's standard metrics the traffic is read
// from, and their labels (Envoy's stats plugin and ztunnel set them).
const (
	MetricRequests    = "istio_requests_total"
	MetricConnections = "istio_tcp_connections_opened_total"

	LabelReporter                 = "reporter"
	LabelConnectionSecurityPolicy = "connection_security_policy"
	LabelDestinationNamespace     = "destination_workload_namespace"
	LabelDestinationWorkload      = "destination_workload"
	LabelDestinationPrincipal     = "destination_principal"
	LabelDestinationService       = "destination_service"
	LabelSourceNamespace          = "source_workload_namespace"
	LabelSourceWorkload           = "source_workload"
	LabelSourcePrincipal          = "source_principal"

	// PolicyMutualTLS and PolicyNone are the connection_security_policy
	// values a destination reports: the connection was mTLS, or
	// plaintext.
	PolicyMutualTLS = "mutual_tls"
	PolicyNone      = "none"
	// Unknown is what Istio puts in a label it could not fill, such as a
	// plaintext client's workload when it has no proxy.
	Unknown = "unknown"
)

// ErrPrometheus wraps every failure to read traffic from Prometheus.
var ErrPrometheus = errors.New("prometheus")

// TrafficOptions say what traffic to read.
type TrafficOptions struct {
	// From and To bound the period.
	From, To time.Time
	// Namespace, when set, is the only destination namespace read.
	Namespace string
	// Step is the resolution: counters are read at every step, and a gap
	// shorter than a step may go unseen. Zero picks a thousandth of the
	// period, at least 15 seconds.
	Step time.Duration
}

// Traffic is what the destinations' proxies reported in a period.
type Traffic struct {
	// Prometheus is the address the traffic was read from.
	Prometheus string `json:"prometheus"`
	From       string `json:"from"`
	To         string `json:"to"`
	Step       string `json:"step"`
	// Retention is Prometheus' storage retention, as it reports it.
	Retention string             `json:"retention,omitempty"`
	Workloads []*WorkloadTraffic `json:"workloads"`
	// Plaintext are the source→destination pairs that carried plaintext,
	// most requests first.
	Plaintext []*Pair `json:"plaintext_pairs"`
	// Gaps are the stretches of the period with no samples.
	Gaps []Gap `json:"gaps"`
}

// Counts are requests or connections by connection_security_policy.
type Counts struct {
	MutualTLS int64 `json:"mutual_tls"`
	Plaintext int64 `json:"plaintext"`
	// Other counts any other value (a destination reports only
	// mutual_tls or none).
	Other int64 `json:"other,omitempty"`
}

// Total is every request or connection counted.
func (c Counts) Total() int64 { return c.MutualTLS + c.Plaintext + c.Other }

func (c *Counts) add(policy string, n int64) {
	switch policy {
	case PolicyMutualTLS:
		c.MutualTLS += n
	case PolicyNone:
		c.Plaintext += n
	default:
		c.Other += n
	}
}

func (c *Counts) plus(o Counts) {
	c.MutualTLS += o.MutualTLS
	c.Plaintext += o.Plaintext
	c.Other += o.Other
}

// WorkloadTraffic is what one destination workload received.
type WorkloadTraffic struct {
	Namespace string `json:"namespace"`
	Workload  string `json:"workload"`
	// Principals are the SPIFFE IDs it served mTLS with.
	Principals  []string `json:"principals"`
	Requests    Counts   `json:"requests"`
	Connections Counts   `json:"connections"`
}

// Pair is one source→destination pair that carried plaintext. A client
// without a proxy is reported as "unknown".
type Pair struct {
	SourceNamespace      string `json:"source_namespace"`
	SourceWorkload       string `json:"source_workload"`
	SourcePrincipal      string `json:"source_principal"`
	DestinationNamespace string `json:"destination_namespace"`
	DestinationWorkload  string `json:"destination_workload"`
	DestinationService   string `json:"destination_service"`
	Requests             int64  `json:"requests"`
	Connections          int64  `json:"connections"`
	// First and Last are the first and last step at which its plaintext
	// counters grew.
	First string `json:"first"`
	Last  string `json:"last"`
}

// Source names the pair's client for a person.
func (p *Pair) Source() string {
	if p.SourceWorkload == Unknown && p.SourceNamespace == Unknown {
		return "unknown (a client without a proxy)"
	}
	return p.SourceNamespace + "/" + p.SourceWorkload
}

// Gap is a stretch of the period Prometheus holds no samples for.
type Gap struct {
	// Namespace and Target (the scraped pod or instance) say whose
	// samples are missing; both "" when none of the mesh's are there.
	Namespace string `json:"namespace,omitempty"`
	Target    string `json:"target,omitempty"`
	// From is the last time samples were there (the period's start when
	// there were none before), To the first time they were again (the
	// period's end when they did not come back).
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason"`
}

// Prometheus reads Istio's telemetry through the Prometheus HTTP API.
type Prometheus struct {
	addr string
	api  promv1.API
}

// NewPrometheus returns a reader of the Prometheus at addr (its base URL,
// as for the HTTP API: http://prometheus.istio-system:9090). rt may be
// nil.
func NewPrometheus(addr string, rt http.RoundTripper) (*Prometheus, error) {
	if addr == "" {
		return nil, fmt.Errorf("%w: no address", ErrPrometheus)
	}
	c, err := api.NewClient(api.Config{Address: addr, RoundTripper: rt})
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrPrometheus, addr, err)
	}
	return &Prometheus{addr: addr, api: promv1.NewAPI(c)}, nil
}

// DefaultStep is the resolution for a period: a thousandth of it, at
// least 15 seconds, in whole seconds.
func DefaultStep(period time.Duration) time.Duration {
	return max(15*time.Second, (period / 1000).Round(time.Second))
}

// Traffic reads the period's requests and connections as the
// destinations reported them.
func (p *Prometheus) Traffic(ctx context.Context, o TrafficOptions) (*Traffic, error) {
	// Prometheus keeps milliseconds; whole seconds make the step times
	// exact and the period readable.
	o.From, o.To = o.From.Truncate(time.Second), o.To.Truncate(time.Millisecond)
	if !o.From.Before(o.To) {
		return nil, fmt.Errorf("%w: empty period %s to %s", ErrPrometheus, o.From.Format(time.RFC3339), o.To.Format(time.RFC3339))
	}
	step := o.Step
	if step <= 0 {
		step = DefaultStep(o.To.Sub(o.From))
	}
	t := &Traffic{
		Prometheus: p.addr, From: o.From.UTC().Format(time.RFC3339), To: o.To.UTC().Format(time.RFC3339),
		Step: step.String(), Workloads: []*WorkloadTraffic{}, Plaintext: []*Pair{}, Gaps: []Gap{},
	}
	if info, err := p.api.Runtimeinfo(ctx); err == nil {
		t.Retention = info.StorageRetention
	}
	r := promv1.Range{Start: o.From, End: o.To, Step: step}
	a := newAggregate(o.From, step, int(o.To.Sub(o.From)/step)+1)
	for _, m := range []string{MetricRequests, MetricConnections} {
		sel := fmt.Sprintf(`%s{%s="destination"`, m, LabelReporter)
		if o.Namespace != "" {
			sel += fmt.Sprintf(`,%s=%q`, LabelDestinationNamespace, o.Namespace)
		}
		sel += "}"
		v, _, _, err := p.api.QueryRange(ctx, sel, r)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %s: %w", ErrPrometheus, p.addr, sel, err)
		}
		mat, ok := v.(model.Matrix)
		if !ok {
			return nil, fmt.Errorf("%w %s: %s: a %s, not a range vector", ErrPrometheus, p.addr, sel, v.Type())
		}
		for _, s := range mat {
			a.series(m == MetricRequests, s)
		}
	}
	a.finish(t)
	var up model.Matrix
	if jobs := a.scrapeJobs(); len(jobs) > 0 {
		quoted := make([]string, len(jobs))
		for i, j := range jobs {
			quoted[i] = regexp.QuoteMeta(j)
		}
		sel := fmt.Sprintf(`up{job=~%q}`, strings.Join(quoted, "|"))
		v, _, _, err := p.api.QueryRange(ctx, sel, r)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %s: %w", ErrPrometheus, p.addr, sel, err)
		}
		if up, _ = v.(model.Matrix); up == nil {
			return nil, fmt.Errorf("%w %s: %s: a %s, not a range vector", ErrPrometheus, p.addr, sel, v.Type())
		}
	}
	t.Gaps = a.gaps(up, t.Retention)
	return t, nil
}

// aggregate adds up the series' increases and tracks where samples are.
type aggregate struct {
	from  time.Time
	step  time.Duration
	steps int

	workloads map[[2]string]*WorkloadTraffic
	pairs     map[[6]string]*pairGrowth
	// jobs are the scrape jobs of the series seen.
	jobs map[string]bool
}

type pairGrowth struct {
	*Pair
	first, last int
}

func newAggregate(from time.Time, step time.Duration, steps int) *aggregate {
	return &aggregate{
		from: from, step: step, steps: steps,
		workloads: map[[2]string]*WorkloadTraffic{}, pairs: map[[6]string]*pairGrowth{}, jobs: map[string]bool{},
	}
}

func (a *aggregate) index(ts model.Time) int {
	i := int(ts.Time().Sub(a.from) / a.step)
	return min(max(i, 0), a.steps-1)
}

// series adds one counter series: its increase over the period is the
// sum of the rises between consecutive samples, a fall being a reset
// (the counter restarted from zero: its new value is all increase), plus
// its first value when it first appears after the period's start (Envoy
// creates a series at its first request, so that value was counted in
// the period).
func (a *aggregate) series(requests bool, s *model.SampleStream) {
	if len(s.Values) == 0 {
		return
	}
	l := s.Metric
	if j := string(l["job"]); j != "" {
		a.jobs[j] = true
	}
	var inc int64
	firstGrowth, lastGrowth := -1, -1
	grow := func(n float64, at int) {
		if n <= 0 {
			return
		}
		inc += int64(math.Round(n))
		if firstGrowth < 0 {
			firstGrowth = at
		}
		lastGrowth = at
	}
	for i, p := range s.Values {
		at := a.index(p.Timestamp)
		v := float64(p.Value)
		switch {
		case i == 0:
			if p.Timestamp > model.TimeFromUnixNano(a.from.UnixNano()) {
				grow(v, at)
			}
		case v >= float64(s.Values[i-1].Value):
			grow(v-float64(s.Values[i-1].Value), at)
		default:
			grow(v, at)
		}
	}

	ns, wl := string(l[LabelDestinationNamespace]), string(l[LabelDestinationWorkload])
	w := a.workloads[[2]string{ns, wl}]
	if w == nil {
		w = &WorkloadTraffic{Namespace: ns, Workload: wl, Principals: []string{}}
		a.workloads[[2]string{ns, wl}] = w
	}
	policy := string(l[LabelConnectionSecurityPolicy])
	if requests {
		w.Requests.add(policy, inc)
	} else {
		w.Connections.add(policy, inc)
	}
	if pr := string(l[LabelDestinationPrincipal]); strings.HasPrefix(pr, "spiffe://") && !slices.Contains(w.Principals, pr) {
		w.Principals = append(w.Principals, pr)
	}
	if policy != PolicyNone || inc == 0 {
		return
	}
	key := [6]string{
		string(l[LabelSourceNamespace]), string(l[LabelSourceWorkload]), string(l[LabelSourcePrincipal]),
		ns, wl, string(l[LabelDestinationService]),
	}
	pg := a.pairs[key]
	if pg == nil {
		pg = &pairGrowth{Pair: &Pair{
			SourceNamespace: key[0], SourceWorkload: key[1], SourcePrincipal: key[2],
			DestinationNamespace: key[3], DestinationWorkload: key[4], DestinationService: key[5],
		}, first: firstGrowth, last: lastGrowth}
		a.pairs[key] = pg
	}
	if requests {
		pg.Requests += inc
	} else {
		pg.Connections += inc
	}
	pg.first, pg.last = min(pg.first, firstGrowth), max(pg.last, lastGrowth)
}

func (a *aggregate) at(i int) time.Time { return a.from.Add(time.Duration(i) * a.step).UTC() }

func (a *aggregate) finish(t *Traffic) {
	for _, w := range a.workloads {
		slices.Sort(w.Principals)
		t.Workloads = append(t.Workloads, w)
	}
	slices.SortFunc(t.Workloads, func(x, y *WorkloadTraffic) int {
		return cmp.Or(strings.Compare(x.Namespace, y.Namespace), strings.Compare(x.Workload, y.Workload))
	})
	for _, pg := range a.pairs {
		pg.First, pg.Last = a.at(pg.first).Format(time.RFC3339), a.at(pg.last).Format(time.RFC3339)
		t.Plaintext = append(t.Plaintext, pg.Pair)
	}
	slices.SortFunc(t.Plaintext, func(x, y *Pair) int {
		return cmp.Or(cmp.Compare(y.Requests+y.Connections, x.Requests+x.Connections),
			strings.Compare(x.DestinationNamespace, y.DestinationNamespace), strings.Compare(x.DestinationWorkload, y.DestinationWorkload),
			strings.Compare(x.SourceNamespace, y.SourceNamespace), strings.Compare(x.SourceWorkload, y.SourceWorkload))
	})
}

// scrapeJobs returns the scrape jobs the Istio series came from.
func (a *aggregate) scrapeJobs() []string {
	return slices.Sorted(maps.Keys(a.jobs))
}

// gaps finds, from the up series of the proxies' scrape jobs, the
// stretches of the period Prometheus holds nothing for: for the whole
// mesh, where no proxy scrape is recorded at all (before its oldest data:
// retention, or Prometheus was not running; after it: it stopped); and
// for each scrape target (a pod's proxy, a ztunnel), where its scrapes
// failed (up == 0) or were missing inside the stretch it was scraped in (a
// target that appears late or leaves early is a pod that started or
// ended, not a gap). Without any Istio series there is nothing to look
// up: the whole period is one gap.
func (a *aggregate) gaps(up model.Matrix, retention string) []Gap {
	out := []Gap{}
	past := "older samples are past Prometheus' retention or were never scraped"
	if retention != "" {
		past = "older samples are past Prometheus' retention (" + retention + ") or were never scraped"
	}
	if len(a.jobs) == 0 {
		return append(out, Gap{From: a.at(0).Format(time.RFC3339), To: a.at(a.steps - 1).Format(time.RFC3339),
			Reason: "Prometheus holds no Istio traffic series reported by a destination for the period: " + past})
	}
	mesh := make([]bool, a.steps)
	type target struct {
		key     [2]string
		present []bool // up was recorded
		ok      []bool // up == 1
	}
	targets := map[[2]string]*target{}
	for _, s := range up {
		key := [2]string{string(s.Metric["namespace"]), cmp.Or(string(s.Metric["pod"]), string(s.Metric["instance"]))}
		tg := targets[key]
		if tg == nil {
			tg = &target{key: key, present: make([]bool, a.steps), ok: make([]bool, a.steps)}
			targets[key] = tg
		}
		for _, p := range s.Values {
			i := a.index(p.Timestamp)
			mesh[i], tg.present[i] = true, true
			tg.ok[i] = tg.ok[i] || p.Value == 1
		}
	}
	first, last := slices.Index(mesh, true), lastTrue(mesh)
	if first < 0 {
		return append(out, Gap{From: a.at(0).Format(time.RFC3339), To: a.at(a.steps - 1).Format(time.RFC3339),
			Reason: "Prometheus holds no scrape of Istio's proxies for the period: " + past})
	}
	if first > 0 {
		out = append(out, Gap{From: a.at(0).Format(time.RFC3339), To: a.at(first).Format(time.RFC3339),
			Reason: "no scrape of Istio's proxies before this: " + past})
	}
	out = append(out, a.holes(mesh, first, last, "", "", "Prometheus recorded no scrape of Istio's proxies")...)
	if last < a.steps-1 {
		out = append(out, Gap{From: a.at(last).Format(time.RFC3339), To: a.at(a.steps - 1).Format(time.RFC3339),
			Reason: "no scrape of Istio's proxies after this: Prometheus stopped recording them"})
	}
	keys := slices.SortedFunc(maps.Keys(targets), func(x, y [2]string) int {
		return cmp.Or(strings.Compare(x[0], y[0]), strings.Compare(x[1], y[1]))
	})
	for _, k := range keys {
		tg := targets[k]
		f, l := slices.Index(tg.present, true), lastTrue(tg.present)
		good := make([]bool, a.steps)
		for i := range good {
			// Where the whole mesh is missing, that gap is said once.
			good[i] = tg.ok[i] || !mesh[i]
		}
		out = append(out, a.holes(good, f-1, l+1, k[0], k[1], "scrapes of this proxy failed or were missing (up == 0 or absent): its traffic there is not counted")...)
	}
	return out
}

func lastTrue(p []bool) int {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] {
			return i
		}
	}
	return -1
}

// holes are the runs of false steps strictly between first and last; a
// hole runs from the last good step before it to the first good one after
// (the period's ends when there is none).
func (a *aggregate) holes(good []bool, first, last int, ns, target, reason string) []Gap {
	var out []Gap
	for i := max(first+1, 0); i < min(last, a.steps); i++ {
		if good[i] {
			continue
		}
		j := i
		for j < min(last, a.steps) && !good[j] {
			j++
		}
		out = append(out, Gap{Namespace: ns, Target: target, From: a.at(max(i-1, 0)).Format(time.RFC3339), To: a.at(min(j, a.steps-1)).Format(time.RFC3339), Reason: reason})
		i = j
	}
	return out
}
