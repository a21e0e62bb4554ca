package observability

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/transitca/transitca/internal/promtest"
)

var (
	alertsFile    = filepath.Join("..", "..", "deploy", "observability", "alerts.yaml")
	dashboardFile = filepath.Join("..", "..", "deploy", "observability", "grafana-dashboard.json")
	promql        = parser.NewParser(parser.Options{})
)

// loadRules loads the alert rules as Prometheus does, strictly: unknown
// keys, a bad expression, a bad for: or label, or an annotation template
// that does not parse are errors.
func loadRules(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	rgs, errs := rulefmt.ParseFile(alertsFile, false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return rgs
}

// metricNames returns the metric names expr selects, or an error if expr
// does not parse.
func metricNames(expr string) ([]string, error) {
	e, err := promql.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		names = append(names, name)
		return nil
	})
	return names, nil
}

// The alerts an operator of the chart relies on are there, each with a
// severity, a summary and a description that says what to do.
func TestAlertRules(t *testing.T) {
	rgs := loadRules(t)
	want := []string{
		"TransitcaIssuanceErrors", "TransitcaRejectionSpike",
		"TransitcaRootExpiring", "TransitcaIntermediateExpiring", "TransitcaServingCertificateExpiring",
		"TransitcaVaultUnreachable", "TransitcaLogFailed", "TransitcaCheckpointStale",
		"TransitcaDrillFailed", "TransitcaDrillOverdue", "TransitcaLeaderMissing",
		"TransitcaPlaintextFallback", "TransitcaPlaintextShareHigh", "TransitcaWorkloadWithoutCertificate",
		"TransitcaMeshPolicyStale",
	}
	seen := map[string]bool{}
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: recording rule %q: this file holds alerts only", g.Name, r.Record)
				continue
			}
			if seen[r.Alert] {
				t.Errorf("alert %s is defined twice", r.Alert)
			}
			seen[r.Alert] = true
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("alert %s: severity %q, want critical or warning", r.Alert, s)
			}
			if len(strings.Fields(r.Annotations["summary"])) < 3 {
				t.Errorf("alert %s: summary %q says nothing", r.Alert, r.Annotations["summary"])
			}
			if len(strings.Fields(r.Annotations["description"])) < 15 {
				t.Errorf("alert %s: description %q is too short to say what to do", r.Alert, r.Annotations["description"])
			}
			if time.Duration(r.For) < 0 || time.Duration(r.For) > 6*time.Hour {
				t.Errorf("alert %s: for: %v", r.Alert, r.For)
			}
		}
	}
	for _, a := range want {
		if !seen[a] {
			t.Errorf("no alert %s", a)
		}
	}
}

// grafanaVars are what Grafana substitutes into a query before sending it.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "${__rate_interval}", "5m", "$__interval", "1m", "$__range", "1h",
	"$job", ".*", "${job}", ".*",
)

// dashboardQueries returns every expr in the dashboard's panels (rows'
// panels included), named by panel title, and the metrics its templating
// queries (label_values(metric, label)) read.
func dashboardQueries(t *testing.T) (exprs map[string][]string, templated []string, d map[string]any) {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	exprs = map[string][]string{}
	var walk func(panels []any)
	walk = func(panels []any) {
		for _, p := range panels {
			p, _ := p.(map[string]any)
			title, _ := p["title"].(string)
			targets, _ := p["targets"].([]any)
			for _, tg := range targets {
				if e, _ := tg.(map[string]any)["expr"].(string); e != "" {
					exprs[title] = append(exprs[title], grafanaVars.Replace(e))
				}
			}
			sub, _ := p["panels"].([]any)
			walk(sub)
		}
	}
	panels, _ := d["panels"].([]any)
	walk(panels)
	lv := regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	tmpl, _ := d["templating"].(map[string]any)
	vars, _ := tmpl["list"].([]any)
	for _, v := range vars {
		v, _ := v.(map[string]any)
		def, _ := v["definition"].(string)
		for _, m := range lv.FindAllStringSubmatch(def, -1) {
			templated = append(templated, m[1])
		}
	}
	return exprs, templated, d
}

// The dashboard picks its Prometheus through a datasource variable, and
// every panel and query uses it.
func TestDashboardDatasource(t *testing.T) {
	_, _, d := dashboardQueries(t)
	tmpl, _ := d["templating"].(map[string]any)
	vars, _ := tmpl["list"].([]any)
	hasVar := false
	for _, v := range vars {
		v, _ := v.(map[string]any)
		if v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "datasource" {
			hasVar = true
		}
	}
	if !hasVar {
		t.Fatal("the dashboard has no prometheus datasource variable named datasource")
	}
	var check func(where string, x any)
	check = func(where string, x any) {
		switch x := x.(type) {
		case map[string]any:
			if ds, ok := x["datasource"].(map[string]any); ok && ds["uid"] != "${datasource}" {
				t.Errorf("%s: datasource %v, want uid ${datasource}", where, ds)
			}
			title, _ := x["title"].(string)
			for k, v := range x {
				check(where+"/"+title+"."+k, v)
			}
		case []any:
			for _, v := range x {
				check(where, v)
			}
		}
	}
	check("", d["panels"])
}

// Every metric the alerts and the dashboard query is one a running daemon
// or Istio's proxies export, and every transitca_ metric the daemon
// exports is on the dashboard.
func TestQueriesUseExportedMetrics(t *testing.T) {
	rgs := loadRules(t)
	exprs, templated, _ := dashboardQueries(t)
	if len(exprs) < 20 {
		t.Fatalf("the dashboard has %d panels with queries", len(exprs))
	}
	have := map[string]bool{}
	for n := range exported(t) {
		have[n] = true
	}
	for n := range istioExported(t) {
		have[n] = true
	}
	var list []string
	for n := range have {
		list = append(list, n)
	}
	sort.Strings(list)
	t.Logf("the daemon and Istio's proxies export %d series names", len(list))

	check := func(where, expr string) []string {
		names, err := metricNames(expr)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", where, expr, err)
			return nil
		}
		if len(names) == 0 {
			t.Errorf("%s: %q selects no metric", where, expr)
		}
		for _, n := range names {
			if !have[n] {
				t.Errorf("%s: metric %q is exported neither by the daemon nor by Istio's proxies (exported: %s)", where, n, strings.Join(list, " "))
			}
		}
		return names
	}
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			check("alerts.yaml "+r.Alert, r.Expr)
		}
	}
	onDashboard := map[string]bool{}
	for title, es := range exprs {
		for _, e := range es {
			for _, n := range check("dashboard panel "+title, e) {
				onDashboard[n] = true
			}
		}
	}
	for _, n := range templated {
		if !have[n] {
			t.Errorf("dashboard templating: metric %q is not exported by the daemon", n)
		}
	}
	for _, n := range list {
		if !strings.HasPrefix(n, "transitca_") || !exported(t)[n] {
			continue
		}
		base := n
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(n, s); ok && have[b+"_bucket"] {
				base = b
			}
		}
		if !slices.ContainsFunc([]string{base, base + "_bucket", base + "_count", base + "_sum"}, func(s string) bool { return onDashboard[s] }) {
			t.Errorf("the daemon exports %s but no dashboard panel shows it", n)
		}
	}
}

// The Helm chart ships the same alert rules (a chart cannot include files
// from outside its directory, so it holds a copy).
func TestChartShipsTheseAlerts(t *testing.T) {
	want, err := os.ReadFile(filepath.Join("..", "..", "deploy", "observability", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join("..", "..", "deploy", "charts", "transitca", "files", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("deploy/charts/transitca/files/alerts.yaml differs from deploy/observability/alerts.yaml: copy it again")
	}
}

// The alert rules' unit tests (deploy/observability/alerts_test.yaml, in
// promtool's format) pass when Prometheus's own rule engine evaluates the
// rules over their synthetic series, with the pinned promtool.
func TestAlertRuleUnitTests(t *testing.T) {
	out, err := promtest.TestRules(t, filepath.Join("..", "..", "deploy", "observability", "alerts_test.yaml"))
	t.Logf("promtool test rules:\n%s", out)
	if err != nil {
		t.Fatalf("promtool test rules: %v", err)
	}
	if !strings.Contains(out, "SUCCESS") {
		t.Fatal("promtool did not report SUCCESS")
	}
}
