package mesh

import (
	"slices"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/transitca/transitca/internal/meshtest"
	"github.com/transitca/transitca/internal/promtest"
)

// A counter's increase over the period is read from its samples, never
// extrapolated: what was there at the start is the baseline, a series that
// appears later counts in full, a fall is a reset, a hole changes nothing.
func TestCounterIncrease(t *testing.T) {
	from := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	step := 10 * time.Second
	series := func(policy string, values ...float64) *model.SampleStream {
		s := &model.SampleStream{Metric: model.Metric{
			LabelDestinationNamespace: "shop", LabelDestinationWorkload: "api", LabelConnectionSecurityPolicy: model.LabelValue(policy),
			LabelSourceNamespace: "unknown", LabelSourceWorkload: "unknown", LabelSourcePrincipal: "unknown", "pod": "api-0",
		}}
		for i, v := range values {
			if v < 0 { // no sample at this step
				continue
			}
			s.Values = append(s.Values, model.SamplePair{Timestamp: model.TimeFromUnixNano(from.Add(time.Duration(i) * step).UnixNano()), Value: model.SampleValue(v)})
		}
		return s
	}
	for _, tc := range []struct {
		name        string
		values      []float64
		want        int64
		first, last int
	}{
		{"baseline at the start", []float64{100, 110, 130}, 30, 1, 2},
		{"appears in the period", []float64{-1, -1, 5, 8}, 8, 2, 3},
		{"reset", []float64{100, 120, 3, 10}, 30, 1, 3},
		{"hole", []float64{10, 15, -1, -1, 25}, 15, 1, 4},
		{"no growth", []float64{7, 7, 7}, 0, -1, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAggregate(from, step, len(tc.values))
			a.series(true, series(PolicyNone, tc.values...))
			tr := &Traffic{}
			a.finish(tr)
			if got := tr.Workloads[0].Requests.Plaintext; got != tc.want {
				t.Errorf("plaintext requests %d, want %d", got, tc.want)
			}
			if tc.want == 0 {
				if len(tr.Plaintext) != 0 {
					t.Errorf("pairs %+v for a counter that did not grow", tr.Plaintext)
				}
				return
			}
			p := tr.Plaintext[0]
			if p.First != a.at(tc.first).Format(time.RFC3339) || p.Last != a.at(tc.last).Format(time.RFC3339) {
				t.Errorf("pair grew from %s to %s, want steps %d to %d", p.First, p.Last, tc.first, tc.last)
			}
		})
	}
}

// Test workloads of the scraped mesh.
var (
	web    = meshtest.Workload{Namespace: "shop", Name: "web", ServiceAccount: "web", App: "web", Version: "v1", Service: "web"}
	apiW   = meshtest.Workload{Namespace: "shop", Name: "api", ServiceAccount: "api", App: "api", Version: "v1", Service: "api"}
	db     = meshtest.Workload{Namespace: "data", Name: "db", ServiceAccount: "db", App: "db", Version: "v1", Service: "db"}
	ledger = meshtest.Workload{Namespace: "books", Name: "ledger", ServiceAccount: "ledger", App: "ledger", Version: "v1", Service: "ledger"}
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// The traffic read from a real Prometheus that scraped Istio's metric
// families equals what the proxies counted in the period: requests and
// connections by connection_security_policy, the plaintext pairs, and the
// stretch during which one proxy could not be scraped.
func TestTrafficFromPrometheus(t *testing.T) {
	e := meshtest.NewExporter(t)
	apiProxy := e.Sidecar(apiW, "api-0")
	e.Sidecar(web, "web-0")
	e.Sidecar(db, "db-0")
	e.Ztunnel("node-a", ledger)
	// Before the period: counted in the baseline, not in the figures.
	must(t, e.Request(web, apiW, true, 40, 200))
	const interval = time.Second
	prom := promtest.Start(t, promtest.Options{ScrapeConfigs: e.ScrapeConfig("istio-proxies", interval)})
	prom.WaitScraped(t, time.Now(), time.Minute)

	// The period starts after a scrape that saw the earlier requests.
	from := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(from.Add(100 * time.Millisecond)))
	must(t, e.Request(web, apiW, true, 120, 200))
	must(t, e.Request(meshtest.NoProxy, apiW, false, 7, 200))
	must(t, e.Connection(web, db, true, 5))
	must(t, e.Connection(meshtest.NoProxy, db, false, 2))
	must(t, e.Connection(web, ledger, true, 9))
	prom.WaitScraped(t, time.Now(), time.Minute)

	// api's proxy cannot be scraped for a while; its counters go on.
	e.SetDown(apiProxy, true)
	down := time.Now()
	time.Sleep(5 * interval)
	must(t, e.Request(meshtest.NoProxy, apiW, false, 3, 200))
	e.SetDown(apiProxy, false)
	up := time.Now()
	prom.WaitScraped(t, time.Now(), time.Minute)
	time.Sleep(2 * interval)
	to := time.Now()

	p, err := NewPrometheus(prom.URL, nil)
	must(t, err)
	tr, err := p.Traffic(t.Context(), TrafficOptions{From: from, To: to, Step: time.Second})
	must(t, err)

	type counts struct{ reqTLS, reqPlain, connTLS, connPlain int64 }
	got := map[string]counts{}
	for _, w := range tr.Workloads {
		got[w.Namespace+"/"+w.Workload] = counts{w.Requests.MutualTLS, w.Requests.Plaintext, w.Connections.MutualTLS, w.Connections.Plaintext}
	}
	want := map[string]counts{
		"shop/api":     {120, 10, 0, 0},
		"data/db":      {0, 0, 5, 2},
		"books/ledger": {0, 0, 9, 0},
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %+v, want %+v", k, got[k], w)
		}
	}
	var pairs []string
	for _, pr := range tr.Plaintext {
		pairs = append(pairs, pr.Source()+" → "+pr.DestinationNamespace+"/"+pr.DestinationWorkload+" "+pr.DestinationService+
			" requests="+itoa(pr.Requests)+" connections="+itoa(pr.Connections))
	}
	wantPairs := []string{
		"unknown (a client without a proxy) → shop/api api.shop.svc.cluster.local requests=10 connections=0",
		"unknown (a client without a proxy) → data/db db.data.svc.cluster.local requests=0 connections=2",
	}
	if !slices.Equal(pairs, wantPairs) {
		t.Errorf("plaintext pairs\n got %q\nwant %q", pairs, wantPairs)
	}
	for _, w := range tr.Workloads {
		if w.Workload == "api" && !slices.Equal(w.Principals, []string{apiW.Principal()}) {
			t.Errorf("api principals %q, want %q", w.Principals, apiW.Principal())
		}
	}

	// The one gap: api's proxy, while its scrapes failed.
	if len(tr.Gaps) != 1 {
		t.Fatalf("gaps %+v, want api-0's", tr.Gaps)
	}
	g := tr.Gaps[0]
	gFrom, _ := time.Parse(time.RFC3339, g.From)
	gTo, _ := time.Parse(time.RFC3339, g.To)
	// At the resolution of a step (1s) and a scrape interval (1s).
	if g.Namespace != "shop" || g.Target != "api-0" || gFrom.After(down.Add(2*interval)) || gTo.Before(up) || gTo.After(up.Add(4*interval)) {
		t.Errorf("gap %+v, want shop api-0 around %s to %s", g, down.Format(time.RFC3339Nano), up.Format(time.RFC3339Nano))
	}
	t.Logf("api-0 down %s to %s; gap reported %s to %s", down.Format(time.RFC3339Nano), up.Format(time.RFC3339Nano), g.From, g.To)

	// A period that starts before Prometheus held anything says so.
	tr, err = p.Traffic(t.Context(), TrafficOptions{From: from.Add(-time.Hour), To: to, Step: time.Second})
	must(t, err)
	if len(tr.Gaps) == 0 || tr.Gaps[0].Namespace != "" || tr.Gaps[0].From != from.Add(-time.Hour).UTC().Format(time.RFC3339) || tr.Retention == "" {
		t.Errorf("gaps %+v (retention %q), want the hour before Prometheus started first", tr.Gaps, tr.Retention)
	} else {
		t.Logf("first gap: %+v", tr.Gaps[0])
	}
	// The earlier requests are in this longer period.
	for _, w := range tr.Workloads {
		if w.Workload == "api" && w.Requests.MutualTLS != 160 {
			t.Errorf("api over the longer period: %d mTLS requests, want 160", w.Requests.MutualTLS)
		}
	}
}

func itoa(n int64) string { return model.SampleValue(n).String() }
