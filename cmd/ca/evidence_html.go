package main

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"io"
	"maps"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// writeEvidenceHTML writes the report as one self-contained HTML file: the
// style and the chart (SVG) inline, no script, nothing fetched.
func writeEvidenceHTML(w io.Writer, r *evidenceReport) error {
	chart, err := issuanceChart(r)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	over, unchecked := 0, 0
	for _, v := range r.Validity {
		over += len(v.Over)
		unchecked += v.Unchecked
	}
	verified, entries := len(r.Logs) > 0, uint64(0)
	for _, lg := range r.Logs {
		verified = verified && lg.Verified && lg.CoversPeriod
		entries += lg.Entries
	}
	return evidenceTemplate.Execute(w, struct {
		*evidenceReport
		Chart           template.HTML
		Over, Unchecked int
		Verified        bool
		Entries         uint64
	}{r, chart, over, unchecked, verified, entries})
}

// issuanceChart draws the issuances per bucket, stacked by tier, as an
// inline SVG element.
func issuanceChart(r *evidenceReport) (template.HTML, error) {
	p := plot.New()
	p.Title.Text = "Certificates issued per " + r.Issued.Bucket + " (UTC), by tier"
	p.Y.Label.Text = "certificates"
	p.Y.Min = 0
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(40)
	labels := make([]string, len(r.Issued.ByBucket))
	every := max(1, len(labels)/15) // at most about 15 labels under the axis
	for i, b := range r.Issued.ByBucket {
		if i%every == 0 {
			labels[i] = b.Start
		}
	}
	width := vg.Points(min(40, max(2, 500/float64(max(1, len(labels))))))
	var below *plotter.BarChart
	for i, tier := range slices.Sorted(maps.Keys(r.Issued.ByTier)) {
		values := make(plotter.Values, len(r.Issued.ByBucket))
		for j, b := range r.Issued.ByBucket {
			values[j] = float64(b.ByTier[tier])
		}
		bars, err := plotter.NewBarChart(values, width)
		if err != nil {
			return "", err
		}
		bars.Color = chartColors[i%len(chartColors)]
		bars.LineStyle.Width = 0
		if below != nil {
			bars.StackOn(below)
		}
		below = bars
		p.Add(bars)
		p.Legend.Add(tier, bars)
	}
	p.NominalX(labels...)
	p.X.Tick.Label.Rotation = 0.8
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YCenter

	c := vgsvg.New(8*vg.Inch, 3.5*vg.Inch)
	p.Draw(draw.New(c))
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return "", err
	}
	svg := buf.String()
	if i := strings.Index(svg, "<svg"); i > 0 {
		svg = svg[i:] // the XML declaration has no place inside HTML
	}
	return template.HTML(svg), nil //nolint:gosec // G203: gonum/plot's SVG canvas escapes every string it draws (the tier names: vgsvg FillString uses html.EscapeString)
}

var chartColors = []color.Color{
	color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xff, 0x7f, 0x0e, 0xff}, color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
	color.RGBA{0xd6, 0x27, 0x28, 0xff}, color.RGBA{0x94, 0x67, 0xbd, 0xff}, color.RGBA{0x8c, 0x56, 0x4b, 0xff},
}

// keyCount is one row of a count table.
type keyCount struct {
	Key   string
	Count int
}

// sortedCounts is a map's entries by key, for tables.
func sortedCounts(m map[string]int) []keyCount {
	out := make([]keyCount, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, keyCount{cmpOrNone(k), m[k]})
	}
	return out
}

func cmpOrNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

var evidenceTemplate = template.Must(template.New("evidence").Funcs(template.FuncMap{
	"counts": sortedCounts,
	"none":   cmpOrNone,
	"join":   strings.Join,
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>transitca evidence {{.From}} to {{.To}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; }
.card b { display: block; font-size: 1.6em; }
.ok { color: #1a7f37; } .bad { color: #cf222e; }
pre { background: #f6f8fa; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; word-break: break-all; font-size: 0.85em; }
.detail { font-size: 0.85em; word-break: break-word; }
svg { max-width: 100%; height: auto; }
</style>
</head>
<body>
<h1>Certificate issuance evidence</h1>
<p>Period <b>{{.From}}</b> to <b>{{.To}}</b> (start included, end excluded, UTC). Generated {{.GeneratedAt}} from the {{.Source}}.
Every figure below is computed from the issuance log; the last section gives the commands that recompute each one from a backup of the log.</p>

<div class="cards">
<div class="card"><b id="issued-total">{{.Issued.Total}}</b>certificates issued</div>
<div class="card"><b id="over-total" class="{{if .Over}}bad{{else}}ok{{end}}">{{.Over}}</b>over their tier's maximum lifetime{{if .Unchecked}}<br><span class="bad">{{.Unchecked}} not checked: no policy recorded</span>{{end}}</div>
<div class="card"><b id="denials-total">{{.Denials.Total}}</b>requests denied</div>
<div class="card"><b id="events-total">{{len .Events}}</b>rotations, intermediate changes, drills</div>
<div class="card"><b id="drills-passed" class="{{if or .Drills.Failed (not .Drills.Total)}}bad{{else}}ok{{end}}">{{.Drills.Passed}}/{{.Drills.Total}}</b>drills passed</div>
<div class="card"><b id="log-verified" class="{{if .Verified}}ok{{else}}bad{{end}}">{{if .Verified}}verified{{else}}NOT verified{{end}}</b>{{len .Logs}} issuance log{{if gt (len .Logs) 1}}s{{end}}, {{.Entries}} entries</div>
</div>

<h2>Certificates issued</h2>
{{.Chart}}
<table id="by-tier"><tr><th>tier</th><th>certificates</th></tr>
{{range counts .Issued.ByTier}}<tr><td>{{.Key}}</td><td class="n">{{.Count}}</td></tr>
{{end}}</table>
<table id="by-namespace"><tr><th>namespace</th><th>certificates</th></tr>
{{range counts .Issued.ByNamespace}}<tr><td>{{.Key}}</td><td class="n">{{.Count}}</td></tr>
{{end}}</table>
<table id="by-cluster"><tr><th>cluster</th><th>certificates</th></tr>
{{range counts .Issued.ByCluster}}<tr><td>{{.Key}}</td><td class="n">{{.Count}}</td></tr>
{{end}}</table>

<h2>Lifetimes against each tier's policy</h2>
<p>Validity is NotAfter − NotBefore, the whole lifetime granted. The maximum is the tier's <code>max_ttl</code> recorded by the daemon's last start before each issuance.</p>
<table id="validity"><tr><th>tier</th><th>certificates</th><th>maximum lifetime</th><th>longest granted</th><th>certificate</th><th>over the maximum</th></tr>
{{range .Validity}}<tr><td>{{.Tier}}</td><td class="n">{{.Issued}}</td><td>{{if .MaxTTL}}{{join .MaxTTL ", "}}{{else}}not recorded{{end}}{{if .Unchecked}} ({{.Unchecked}} unchecked){{end}}</td><td>{{.Longest}}</td><td><code>{{.LongestSerial}}</code></td><td class="n {{if .Over}}bad{{else}}ok{{end}}">{{len .Over}}</td></tr>
{{end}}</table>
{{if .Over}}<table id="over"><tr><th>serial</th><th>identity</th><th>issued</th><th>validity</th><th>maximum</th></tr>
{{range .Validity}}{{range .Over}}<tr><td><code>{{.Serial}}</code></td><td>{{.SPIFFEID}}</td><td>{{.Time}}</td><td>{{.Validity}}</td><td>{{.MaxTTL}}</td></tr>
{{end}}{{end}}</table>{{else}}<p class="ok" id="over-none">No certificate was issued with a lifetime over its tier's maximum.</p>{{end}}

<h2>Denied requests</h2>
<p>By the reason recorded with each denial (the <code>reason</code> label of <code>transitca_rejections_total</code>); an aggregated entry counts the requests it stands for.</p>
<table id="denials"><tr><th>reason</th><th>requests</th></tr>
{{range counts .Denials.ByReason}}<tr><td>{{.Key}}</td><td class="n">{{.Count}}</td></tr>
{{end}}</table>

<h2>Rotations, intermediate changes and drills</h2>
<table id="events"><tr><th>time</th><th>action</th><th>by</th><th>detail</th></tr>
{{range .Events}}<tr><td>{{.Time}}</td><td>{{.Action}}</td><td>{{.Actor}}</td><td class="detail">{{.Detail}}</td></tr>
{{end}}</table>

<h2>Service accounts holding a live certificate at {{.To}}</h2>
<p>Issued before the end of the period and valid at that instant: the rollout-readiness view (<code>ca report rollout</code> adds the pods that run without one).</p>
<table id="live"><tr><th>namespace</th><th>service accounts (live certificates)</th></tr>
{{range .Live}}<tr><td>{{none .Namespace}}</td><td>{{range $sa, $n := .ServiceAccounts}}{{$sa}} ({{$n}}) {{end}}</td></tr>
{{end}}</table>

<h2>The logs behind these figures</h2>
{{range .Logs}}<h3>{{.Shard}}</h3>
{{if .Verified}}<p class="ok">The log verified end to end: {{.Entries}} entries, every entry re-hashed into the Merkle tree of root <code>{{.Root}}</code>, every stored checkpoint's signature and root checked.</p>
{{else}}<p class="bad">The log did NOT verify: {{.VerifyError}}</p>{{end}}
{{if .Checkpoint}}<p>The latest signed checkpoint covers the first {{.CheckpointSize}} entries{{if .CoversPeriod}}, <span class="ok">including every entry of the period</span>{{else}}, <span class="bad">not every entry of the period (the last is number {{.LastSeqInPeriod}})</span>{{end}}:</p>
<pre class="checkpoint">{{.Checkpoint}}</pre>
<p>Verifier key (Ed25519; the private key never leaves Vault Transit):</p>
<pre class="verifier-key">{{.VerifierKey}}</pre>
{{else}}<p class="bad">No signed checkpoint: {{.CheckpointError}}</p>{{end}}
{{end}}
<h2>Re-check every figure yourself</h2>
<p>With the <code>ca</code> binary built from source and <code>jq</code>, in an empty directory. Each jq command prints the figure named.</p>
{{range .Commands}}<p>{{.What}}{{if .Check}} <small>(<code>{{.Check}}</code>)</small>{{end}}:</p>
<pre>{{.Command}}</pre>
{{end}}
</body>
</html>
`))
