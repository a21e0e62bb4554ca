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
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/transitca/transitca/ca"
)

// writeEvidenceHTML writes the report as one self-contained HTML file: the
// style and the chart (SVG) inline, no script, nothing fetched.
func writeEvidenceHTML(w io.Writer, r *evidenceReport) error {
	chart, err := issuanceChart(r)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	return evidenceTemplate.Execute(w, newEvidenceView(r, chart))
}

// evidenceView is the report as the page shows it: the headline cards
// judged, and every colour greyed when a log failed verification.
type evidenceView struct {
	*evidenceReport
	Chart  template.HTML
	Cards  []evidenceCard
	Failed bool
	// FailedLogs are the logs that failed verification, PartialLogs those
	// with entries after their latest checkpoint.
	FailedLogs, PartialLogs []*evidenceLog
	// CheckpointKey is the sentence on where the checkpoint key was.
	CheckpointKey string
	// AnyOver is whether a certificate is over the control or the policy.
	AnyOver bool
}

// evidenceCard is one headline figure: Class is ok (green), warn (amber),
// bad (red), grey (a log failed verification) or "" (no judgement).
type evidenceCard struct {
	ID, Value, Label, Note, Class string
}

// C is class, or grey when a log failed verification: nothing of such a
// report is shown as good or bad.
func (v *evidenceView) C(class string) string {
	if v.Failed {
		return "grey"
	}
	return class
}

func newEvidenceView(r *evidenceReport, chart template.HTML) *evidenceView {
	v := &evidenceView{evidenceReport: r, Chart: chart, Failed: r.Verification == logFailed, CheckpointKey: checkpointKeyCustody(r.Custody)}
	for _, lg := range r.Logs {
		switch lg.State {
		case logFailed:
			v.FailedLogs = append(v.FailedLogs, lg)
		case logPartial:
			v.PartialLogs = append(v.PartialLogs, lg)
		}
	}
	judge := func(bad, warn bool) string {
		switch {
		case bad:
			return "bad"
		case warn:
			return "warn"
		}
		return "ok"
	}
	over, overControl, unchecked := 0, 0, 0
	for _, t := range r.Validity {
		over += len(t.Over)
		overControl += len(t.OverControl)
		unchecked += t.Unchecked
	}
	v.AnyOver = over+overControl > 0
	var notes []string
	if over > 0 {
		notes = append(notes, fmt.Sprintf("%d over the policy in force when issued", over))
	}
	if unchecked > 0 {
		notes = append(notes, fmt.Sprintf("%d not checked against a policy: none recorded", unchecked))
	}
	controlLabel := "over the stated control"
	if len(r.Control.d) == 0 {
		controlLabel, notes = "over the stated control: NO CONTROL (give --control)", append(notes, r.Control.Source)
	}
	v.Cards = append(v.Cards,
		evidenceCard{ID: "issued-total", Value: fmt.Sprint(r.Issued.Total), Label: "certificates issued"},
		evidenceCard{ID: "over-total", Value: fmt.Sprint(overControl), Label: controlLabel, Note: strings.Join(notes, "; "),
			Class: judge(overControl > 0 || over > 0, unchecked > 0 || len(r.Control.d) == 0)},
	)
	red, amber := 0, 0
	for _, f := range r.Privileged.Flagged {
		if f.Over {
			red++
		} else {
			amber++
		}
	}
	pc := evidenceCard{ID: "privileged-flagged", Value: fmt.Sprint(red), Label: "known privileged workloads (istiod, gateways, the CA's admin) over the privileged limit " + r.Privileged.Limit,
		Class: judge(red > 0, amber > 0 || r.Privileged.Limit == "")}
	switch {
	case r.Privileged.Limit == "":
		pc.Value, pc.Label = "?", "known privileged workloads not checked: the control names no tier \"privileged\""
	case red == 0 && amber > 0:
		pc.Value, pc.Label = fmt.Sprint(amber), "known privileged workloads (istiod, gateways, the CA's admin) issued in a tier longer than "+r.Privileged.Limit
	case amber > 0:
		pc.Note = fmt.Sprintf("%d more in a longer tier, within the limit", amber)
	}
	v.Cards = append(v.Cards, pc,
		evidenceCard{ID: "denials-total", Value: fmt.Sprint(r.Denials.Total), Label: "requests denied"},
		evidenceCard{ID: "events-total", Value: fmt.Sprint(len(r.Events)), Label: "rotations, intermediate changes, drills, log events"},
	)
	d := r.Drills
	dc := evidenceCard{ID: "drills-passed", Value: fmt.Sprintf("%d/%d", d.Passed, d.Total), Label: "drills passed",
		Class: judge(d.Failed > 0 || d.Total == 0, d.NotChecked > 0)}
	var dn []string
	if d.NotChecked > 0 {
		dn = append(dn, fmt.Sprintf("%d not checked: a step could not check (no Vault)", d.NotChecked))
	}
	if d.Failed > 0 {
		dn = append(dn, fmt.Sprintf("%d failed", d.Failed))
	}
	dc.Note = strings.Join(dn, "; ")
	starts := 0
	for _, e := range r.Service.Events {
		if e.Action == "start" {
			starts++
		}
	}
	sc := evidenceCard{ID: "service-starts", Value: fmt.Sprint(starts), Label: "daemon starts in the period",
		Class: judge(r.Service.RollbackUnchecked > 0, r.Service.UncleanStops > 0)}
	var sn []string
	if r.Service.UncleanStops > 0 {
		sn = append(sn, fmt.Sprintf("%d after an unclean stop", r.Service.UncleanStops))
	}
	if r.Service.RollbackUnchecked > 0 {
		sn = append(sn, fmt.Sprintf("%d on a log its witness could not check for a rollback", r.Service.RollbackUnchecked))
	}
	if g := longestGap(r.Service.Gaps); g != "" {
		sn = append(sn, "longest gap "+g)
	}
	sc.Note = strings.Join(sn, "; ")
	v.Cards = append(v.Cards, dc, sc, v.custodyCard(), v.verificationCard())
	if v.Failed {
		for i := range v.Cards {
			v.Cards[i].Class = "grey"
		}
	}
	return v
}

// longestGap is the longest service gap, "" when there is none.
func longestGap(gaps []serviceGap) string {
	var longest int64 = -1
	for _, g := range gaps {
		longest = max(longest, g.Seconds)
	}
	if longest < 0 {
		return ""
	}
	return (time.Duration(longest) * time.Second).String()
}

// custodyCard says where the keys were, as the log recorded it.
func (v *evidenceView) custodyCard() evidenceCard {
	c := evidenceCard{ID: "custody", Label: "where the keys were, as recorded"}
	local, vault, unanswered := false, false, false
	var leave []string
	for _, seen := range v.Custody {
		for _, k := range seen.Keys {
			switch {
			case k.Where == ca.KeyInLocalFile:
				local = true
			case k.Where == ca.KeyInVault && k.Error != "":
				unanswered = true
			case k.Where == ca.KeyInVault:
				vault = true
				if settings := k.CanLeave(); len(settings) > 0 {
					what := fmt.Sprintf("%s key %s: %s", k.Role, k.Name, strings.Join(settings, ", "))
					if !slices.Contains(leave, what) {
						leave = append(leave, what)
					}
				}
			}
		}
	}
	switch {
	case local:
		c.Value, c.Label, c.Class = "local files", "DEV MODE: the keys were local software keys, not in Vault", "bad"
	case len(leave) > 0:
		c.Value, c.Label, c.Class = "can leave Vault", "Vault reported a key whose private part can leave Vault", "bad"
		c.Note = strings.Join(leave, "; ")
	case unanswered:
		c.Value, c.Label, c.Class = "Vault?", "Vault did not answer for a key", "warn"
	case vault:
		c.Value, c.Label, c.Class = "Vault", "keys in Vault Transit; Vault answered: none exportable, no plaintext backup", "ok"
	default:
		c.Value, c.Label, c.Class = "?", "key custody not recorded in the log", "warn"
	}
	return c
}

// verificationCard is the state of the weakest log.
func (v *evidenceView) verificationCard() evidenceCard {
	c := evidenceCard{ID: "log-verified"}
	entries := uint64(0)
	for _, lg := range v.Logs {
		entries += lg.Entries
	}
	logs := fmt.Sprintf("%d issuance log", len(v.Logs))
	if len(v.Logs) != 1 {
		logs += "s"
	}
	switch {
	case len(v.FailedLogs) > 0:
		lg := v.FailedLogs[0]
		c.Value, c.Label, c.Class = "FAILED", lg.Failure(), "grey"
		if len(v.Logs) > 1 {
			c.Label = lg.Shard + ": " + c.Label
		}
	case len(v.PartialLogs) > 0:
		var parts []string
		for _, lg := range v.PartialLogs {
			p := fmt.Sprintf("verified up to checkpoint %d, %d entries after it not yet signed", lg.CheckpointSize, lg.AfterCheckpoint)
			if len(v.Logs) > 1 {
				p = lg.Shard + ": " + p
			}
			parts = append(parts, p)
		}
		c.Value, c.Label, c.Class = "partly verified", strings.Join(parts, "; "), "warn"
	case len(v.Logs) == 0:
		c.Value, c.Label, c.Class = "no log", "", "bad"
	default:
		c.Value, c.Label, c.Class = "verified", fmt.Sprintf("%s, %d entries, all under a signed checkpoint", logs, entries), "ok"
	}
	return c
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
	"where":  custodyWhere,
	"yesno":  yesNo,
}).Parse(evidenceHTML))

// custodyWhere says where a key was, for the key custody table.
func custodyWhere(k ca.KeyCustody) string {
	switch k.Where {
	case ca.KeyInVault:
		return "Vault Transit " + k.Mount
	case ca.KeyInLocalFile:
		return "local software key file (dev mode)"
	case ca.KeyInMemory:
		return "in memory only (generated at start, never written)"
	}
	return k.Where
}

func yesNo(b bool) string {
	if b {
		return "YES"
	}
	return "no"
}
