package driver

import (
	"fmt"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"time"

	"github.com/transitca/transitca/test/bench/loadgen"
)

// The report replaces what lies between these markers in the output file
// and leaves the rest (the hand-written method and analysis) alone.
const (
	beginMarker = "<!-- results:begin (written by test/bench/cmd/benchdriver; do not edit by hand) -->"
	endMarker   = "<!-- results:end -->"
)

func (e *env) report(r *results) error {
	text := e.render(r)
	if e.cfg.Log != nil {
		fmt.Fprintln(e.cfg.Log)
		fmt.Fprint(e.cfg.Log, text)
	}
	if e.cfg.Out == "" {
		return nil
	}
	old, err := os.ReadFile(e.cfg.Out)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	out := spliceResults(string(old), text)
	if err := os.WriteFile(e.cfg.Out, []byte(out), 0o644); err != nil {
		return err
	}
	e.logf("results written to %s", e.cfg.Out)
	return nil
}

// spliceResults puts the results text between the markers of doc,
// keeping everything around them; a doc without both markers (or none)
// becomes a new document holding only the results.
func spliceResults(doc, results string) string {
	block := beginMarker + "\n" + results + endMarker + "\n"
	i, j := strings.Index(doc, beginMarker), strings.Index(doc, endMarker)
	if i < 0 || j < i {
		return "# Benchmarks\n\n" + block
	}
	j += len(endMarker)
	if j < len(doc) && doc[j] == '\n' {
		j++
	}
	return doc[:i] + block + doc[j:]
}

// row is one system's closed-loop figures, medians over rounds.
type row struct {
	s                        *system
	tput                     float64
	p50, p90, p99, p999      time.Duration
	errs                     string
	serverCPU, loadgenCPU    float64 // seconds per 1,000
	mem                      memPeak // server process, max over rounds
	vsCrypto, vsIstio, vsPKI float64 // medians of per-round ratios
	vsPKINoStore             float64
	rounds                   []float64
}

func (e *env) rows(r *results) []row {
	var rows []row
	for _, s := range e.systems {
		rs := r.closed[s.id]
		if len(rs) == 0 {
			continue
		}
		w := row{s: s}
		var tp, scpu, lcpu []float64
		var p50, p90, p99, p999 []time.Duration
		errs := map[string]int{}
		for _, x := range rs {
			tp = append(tp, x.Throughput())
			p50, p90, p99, p999 = append(p50, x.Latency.P50), append(p90, x.Latency.P90), append(p99, x.Latency.P99), append(p999, x.Latency.P999)
			scpu = append(scpu, serverCPUPer1000(x))
			if l, ok := x.Proc("loadgen"); ok {
				lcpu = append(lcpu, l.CPUPer1000(x.OK).Seconds())
			}
			if p, ok := x.Proc("server"); ok && s.id != sysCrypto {
				w.mem.see(p)
			}
			for k, v := range x.Errors {
				errs[k] += v
			}
		}
		w.rounds = tp
		w.tput = loadgen.Median(tp)
		w.p50, w.p90, w.p99, w.p999 = loadgen.MedianDuration(p50), loadgen.MedianDuration(p90), loadgen.MedianDuration(p99), loadgen.MedianDuration(p999)
		w.serverCPU, w.loadgenCPU = loadgen.Median(scpu), loadgen.Median(lcpu)
		w.errs = (&loadgen.Result{Errors: errs}).ErrorString()
		w.vsCrypto, w.vsIstio, w.vsPKI, w.vsPKINoStore = ratioOf(r, s.id, sysCrypto), ratioOf(r, s.id, sysIstioECDSA), ratioOf(r, s.id, sysPKI), ratioOf(r, s.id, sysPKINoStore)
		rows = append(rows, w)
	}
	return rows
}

func (e *env) render(r *results) string {
	var b strings.Builder
	e.renderSetup(&b, r)
	rows := e.rows(r)
	e.renderSteady(&b, rows)
	renderProfiles(&b, r.profiles)
	e.renderOtherRuns(&b, r)
	renderKubeStorm(&b, r.kube)
	renderLogScale(&b, r.log)
	e.renderPerfTargets(&b, r, rows)
	e.renderTargets(&b, r, rows)
	return b.String()
}

// renderSetup writes the heading and what was measured, how and where.
func (e *env) renderSetup(b *strings.Builder, r *results) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	m := machine()
	p("## Results\n\n")
	p("Measured %s, %s in all.\n\n", r.started.UTC().Format("2006-01-02 15:04 MST"), r.finished.Sub(r.started).Round(time.Second))
	if strings.HasSuffix(e.cfg.Command, e.cfg.Args) {
		p("Command: `%s`\n\n", e.cfg.Command)
	} else {
		p("Command: `%s` (in test/bench: `%s`)\n\n", e.cfg.Command, e.cfg.Args)
	}
	p("| | |\n| --- | --- |\n")
	p("| machine | %s cores (nproc %s), %s, %s memory, Linux %s |\n", m["cores"], m["nproc"], m["cpu"], m["memory"], m["kernel"])
	p("| Go | %s |\n", m["go"])
	p("| transitca | %s |\n", e.meta["transitca"])
	p("| Istio | istio.io/istio %s (CA server, client options, GenCSR) |\n", moduleVersion("istio.io/istio"))
	p("| Vault | %s dev server (in-memory storage, plain HTTP on loopback) |\n", e.meta["vault"])
	p("| load | %d simulated agents, one gRPC/TLS connection each (HTTP keep-alive connections for Vault); %d ECDSA P-256 CSRs from Istio's `util.GenCSR` for %d service accounts, generated before timing and cycled; 24h requested |\n",
		e.cfg.Clients, e.cfg.Pool, e.cfg.Identities)
	p("| windows | %v warm-up, then %v measured, per run; %d interleaved rounds, order rotated; figures are medians over rounds |\n\n", e.cfg.Warmup, e.cfg.Duration, e.cfg.Rounds)
}

// renderSteady writes the closed-loop results: the table and the
// throughput of each round.
func (e *env) renderSteady(b *strings.Builder, rows []row) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("### Steady state: closed loop, %d clients\n\n", e.cfg.Clients)
	p("| system | issued/s | p50 | p90 | p99 | p99.9 | errors | server CPU s / 1k | load gen CPU s / 1k | server peak RSS (anon) | × crypto bound | × Istio (ECDSA) | × Vault PKI | × Vault PKI no_store |\n")
	p("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, w := range rows {
		rss := w.mem.String()
		lg := fmt.Sprintf("%.3f", w.loadgenCPU)
		if w.s.id == sysCrypto {
			lg = "—"
		}
		p("| %s | %.0f | %s | %s | %s | %s | %s | %.3f | %s | %s | %s | %s | %s | %s |\n",
			w.s.label, w.tput, fmtDur(w.p50), fmtDur(w.p90), fmtDur(w.p99), fmtDur(w.p999), w.errs,
			w.serverCPU, lg, rss, fmtRatio(w.vsCrypto), fmtRatio(w.vsIstio), fmtRatio(w.vsPKI), fmtRatio(w.vsPKINoStore))
	}
	p("\nServer CPU counts every server process: for transitca the daemon plus Vault (checkpoint signatures in memory mode, every leaf in vault mode); for the crypto bound the whole process. Peak RSS is the server process's resident high-water mark (VmHWM, reset before each run); `anon` is the highest anonymous part (heap, stacks) sampled every 100 ms, the rest being file-backed pages such as transitca's memory-mapped issuance log and Vault's binary. Ratios are medians of the per-round ratios (each round runs all systems back to back).\n\n")
	p("Throughput per round (issued/s):\n\n| system |")
	for i := range e.cfg.Rounds {
		p(" round %d |", i+1)
	}
	p("\n| --- |%s\n", strings.Repeat(" ---: |", e.cfg.Rounds))
	for _, w := range rows {
		p("| %s |", w.s.id)
		for _, t := range w.rounds {
			p(" %.0f |", t)
		}
		p("\n")
	}
	p("\n")
}

// renderOtherRuns writes the candidate comparison, the RSA runs, the
// open-loop runs and the restart storms, those that were run.
func (e *env) renderOtherRuns(b *strings.Builder, r *results) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	if e.cfg.CandidateCA != "" {
		p("Candidate build against the current one, same rounds (median of per-round ratios): ")
		var parts []string
		for _, id := range []string{sysTransitcaMem, sysTransitcaVlt} {
			if x := ratioOf(r, id+candidateSuffix, id); x > 0 {
				parts = append(parts, fmt.Sprintf("%s mode %.2f×", modeName(id), x))
			}
		}
		p("%s.\n\n", strings.Join(parts, ", "))
	}

	if len(r.extra) > 0 {
		p("### RSA-2048 CSRs (closed loop, %d clients, one run)\n\n", e.cfg.Clients)
		p("%d RSA-2048 CSRs, cycled (RSA key generation is slow, so the pool is small; the CA's work per request does not depend on it).\n\n", e.cfg.RSAPool)
		p("| system | issued/s | p50 | p99 | p99.9 | errors | server CPU s / 1k | server peak RSS |\n| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n")
		for _, x := range r.extra {
			sp, _ := x.res.Proc("server")
			p("| %s | %.0f | %s | %s | %s | %s | %.3f | %s |\n", x.label, x.res.Throughput(), fmtDur(x.res.Latency.P50), fmtDur(x.res.Latency.P99),
				fmtDur(x.res.Latency.P999), x.res.ErrorString(), serverCPUPer1000(x.res), memOf(sp))
		}
		p("\n")
	}

	if len(r.open) > 0 {
		p("### Open loop at half of the peak (%d rounds of %v, %d connections)\n\n", e.cfg.Rounds, e.cfg.OpenDuration, e.cfg.Clients)
		p("Requests are sent at a fixed rate whatever the answers, half of the system's closed-loop median peak; latency runs from each request's intended send time (no coordinated omission). Medians over rounds; the last column lists each round's p99.\n\n")
		p("| system | peak (closed loop) | offered/s | answered/s | p50 | p90 | p99 | p99.9 | max | errors | server CPU s / 1k | server peak RSS | p99 per round |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |\n")
		for _, id := range e.latencySystems() {
			runs := r.open[id]
			if len(runs) == 0 {
				continue
			}
			o := summarizeOpen(runs)
			p("| %s | %.0f | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %.3f | %s | %s |\n", runs[0].sys.label, runs[0].peak, o.offered, o.answered,
				fmtDur(o.p50), fmtDur(o.p90), fmtDur(o.p99), fmtDur(o.p999), fmtDur(o.max), o.errs, o.cpu, o.mem, o.p99s)
		}
		p("\n")
		renderDisk(b, r.disk)
	}

	if len(r.storms) > 0 {
		n := e.cfg.StormServices * e.cfg.StormReplicas
		p("### Restart storm: %d services × %d replicas (%d rounds)\n\n", e.cfg.StormServices, e.cfg.StormReplicas, e.cfg.Rounds)
		p("%d workloads start within %v (evenly spread); each opens its own connection (TCP, TLS handshake), sends its own pod token and a CSR for a fresh P-256 key, and keeps the connection open, as istio-agent does. Nothing is retried. Medians over rounds; the last column lists each round's time.\n\n",
			n, e.cfg.StormSpread)
		p("| system | last certificate after | per 1,000 workloads | errors (all rounds) | p50 (from own start) | p99 | server CPU s | server peak RSS | per round |\n| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |\n")
		for _, id := range e.latencySystems() {
			runs := r.storms[id]
			if len(runs) == 0 {
				continue
			}
			st := summarizeStorm(runs)
			p("| %s | %s | %s | %s | %s | %s | %.2f | %s | %s |\n", runs[0].sys.label, fmtDur(st.makespan), fmtDur(st.per1000), st.errs,
				fmtDur(st.p50), fmtDur(st.p99), st.cpu, st.mem, st.rounds)
		}
		p("\n")
	}
}

// renderTargets writes the targets, each with what was measured
// and whether it was met.
func (e *env) renderTargets(b *strings.Builder, r *results, rows []row) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	mem, vlt, istio := rowOf(rows, sysTransitcaMem), rowOf(rows, sysTransitcaVlt), rowOf(rows, sysIstioECDSA)
	pki, pkiNS, transit := rowOf(rows, sysPKI), rowOf(rows, sysPKINoStore), rowOf(rows, sysTransit)

	p("### Earlier targets (issue 5)\n\n| target | measured | met |\n| --- | --- | --- |\n")
	target := func(name, measured string, ok bool) { verdict(b, name, measured, ok) }
	if mem != nil && istio != nil {
		target("in-memory mode ≥ 1.5× Istio's CA server (ECDSA)", fmt.Sprintf("%.2f× (%.0f/s vs %.0f/s)", mem.vsIstio, mem.tput, istio.tput), mem.vsIstio >= 1.5)
	}
	if mem != nil && pki != nil {
		worst := mem.vsPKI
		detail := fmt.Sprintf("%.2f× pki/sign (%.0f/s)", mem.vsPKI, pki.tput)
		if pkiNS != nil {
			worst = min(worst, mem.vsPKINoStore)
			detail += fmt.Sprintf(", %.2f× with no_store (%.0f/s)", mem.vsPKINoStore, pkiNS.tput)
		}
		target("in-memory mode ≥ 3× Vault PKI pki/sign", detail, worst >= 3)
	}
	if vlt != nil && transit != nil {
		x := vlt.tput / transit.tput
		if xs := ratioOf(r, sysTransitcaVlt, sysTransit); xs > 0 {
			x = xs
		}
		target("in-Vault mode ≥ 70% of raw Transit sign rate", fmt.Sprintf("%.0f%% (%.0f/s vs %.0f/s)", 100*x, vlt.tput, transit.tput), x >= 0.7)
	}
	for _, id := range e.transitcaIDs() {
		mode := modeName(id)
		if runs := r.open[id]; len(runs) > 0 {
			o := summarizeOpen(runs)
			target(fmt.Sprintf("p99 < 10 ms at half the peak rate (%s mode, open loop)", mode),
				fmt.Sprintf("p99 %s at %.0f/s (median of %d; per round %s), errors %s", fmtDur(o.p99), o.offered, len(runs), o.p99s, o.errs),
				o.p99 < 10*time.Millisecond && o.errCount == 0)
		}
	}
	for _, id := range e.transitcaIDs() {
		mode := modeName(id)
		if runs := r.storms[id]; len(runs) > 0 {
			st := summarizeStorm(runs)
			target(fmt.Sprintf("storm < 2 s per 1,000 workloads, zero errors (%s mode)", mode),
				fmt.Sprintf("%s per 1,000 (median; %s for %d workloads; per round %s), errors %s", fmtDur(st.per1000), fmtDur(st.makespan), runs[0].res.Workloads, st.rounds, st.errs),
				st.per1000 < 2*time.Second && st.errCount == 0)
		}
	}
	for _, id := range e.transitcaIDs() {
		mode := modeName(id)
		var load memPeak
		for _, x := range r.closed[id] {
			if sp, ok := x.Proc("server"); ok {
				load.see(sp)
			}
		}
		if load.rss > 0 {
			target(fmt.Sprintf("daemon memory < 100 MB at peak load (%s mode, closed loop, %d clients)", mode, e.cfg.Clients),
				"peak RSS "+load.String(), load.rss < 100<<20)
		}
		var storm memPeak
		for _, x := range r.storms[id] {
			if sp, ok := x.res.Proc("server"); ok {
				storm.see(sp)
			}
		}
		if storm.rss > 0 {
			n := e.cfg.StormServices * e.cfg.StormReplicas
			target(fmt.Sprintf("daemon memory < 100 MB in the storm (%s mode, %d connections open)", mode, n),
				"peak RSS "+storm.String(), storm.rss < 100<<20)
		}
	}
	p("\n")
}

// ratioOf is the median over rounds of id's throughput over base's.
func ratioOf(r *results, id, base string) float64 {
	return medianRatio(r, id, base, (*loadgen.Result).Throughput)
}

// cpuRatioOf is the median over rounds of id's server CPU per issuance over
// base's.
func cpuRatioOf(r *results, id, base string) float64 {
	return medianRatio(r, id, base, serverCPUPer1000)
}

func medianRatio(r *results, id, base string, metric func(*loadgen.Result) float64) float64 {
	a, b := r.closed[id], r.closed[base]
	var xs []float64
	for i := range min(len(a), len(b)) {
		if t := metric(b[i]); t > 0 {
			xs = append(xs, metric(a[i])/t)
		}
	}
	return loadgen.Median(xs)
}

func mb(n uint64) string {
	if n == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f MB", float64(n)/(1<<20))
}

func fmtRatio(x float64) string {
	if x == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", x)
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "—"
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2f ms", float64(d)/1e6)
}

func moduleVersion(path string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range bi.Deps {
		if d.Path == path {
			return d.Version
		}
	}
	return "unknown"
}

// gitDescribe names the commit of the working tree ("-dirty" if it has
// uncommitted changes).
func gitDescribe() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty", "--abbrev=12").Output()
	if err != nil {
		return "unknown commit"
	}
	return "commit " + strings.TrimSpace(string(out))
}

// openSummary is an open-loop system's figures, medians over rounds.
type openSummary struct {
	offered, answered, cpu   float64
	p50, p90, p99, p999, max time.Duration
	errs, p99s               string
	errCount                 int
	mem                      memPeak
}

func summarizeOpen(runs []openRun) openSummary {
	var o openSummary
	var off, ans, cpu []float64
	var p50, p90, p99, p999, mx []time.Duration
	errs := map[string]int{}
	var per []string
	for _, x := range runs {
		off, ans, cpu = append(off, x.res.TargetRate), append(ans, x.res.Throughput()), append(cpu, serverCPUPer1000(x.res))
		l := x.res.Latency
		p50, p90, p99, p999, mx = append(p50, l.P50), append(p90, l.P90), append(p99, l.P99), append(p999, l.P999), append(mx, l.Max)
		for k, v := range x.res.Errors {
			errs[k] += v
			o.errCount += v
		}
		per = append(per, fmtDur(l.P99))
		if sp, ok := x.res.Proc("server"); ok {
			o.mem.see(sp)
		}
	}
	o.offered, o.answered, o.cpu = loadgen.Median(off), loadgen.Median(ans), loadgen.Median(cpu)
	o.p50, o.p90, o.p99, o.p999, o.max = loadgen.MedianDuration(p50), loadgen.MedianDuration(p90), loadgen.MedianDuration(p99), loadgen.MedianDuration(p999), loadgen.MedianDuration(mx)
	o.errs = (&loadgen.Result{Errors: errs}).ErrorString()
	o.p99s = strings.Join(per, ", ")
	return o
}

// stormSummary is a storm system's figures, medians over rounds.
type stormSummary struct {
	makespan, per1000, p50, p99 time.Duration
	cpu                         float64
	errs, rounds                string
	errCount                    int
	mem                         memPeak
}

func summarizeStorm(runs []stormRun) stormSummary {
	var st stormSummary
	var mk, per, p50, p99 []time.Duration
	var cpu []float64
	errs := map[string]int{}
	var rounds []string
	for _, x := range runs {
		mk, per = append(mk, x.res.Makespan), append(per, x.res.Per1000())
		p50, p99 = append(p50, x.res.Latency.P50), append(p99, x.res.Latency.P99)
		var c time.Duration
		for _, pc := range x.res.Procs {
			if pc.Name != "loadgen" {
				c += pc.CPU
			}
		}
		cpu = append(cpu, c.Seconds())
		for k, v := range x.res.Errors {
			errs[k] += v
			st.errCount += v
		}
		rounds = append(rounds, fmtDur(x.res.Makespan))
		if sp, ok := x.res.Proc("server"); ok {
			st.mem.see(sp)
		}
	}
	st.makespan, st.per1000 = loadgen.MedianDuration(mk), loadgen.MedianDuration(per)
	st.p50, st.p99, st.cpu = loadgen.MedianDuration(p50), loadgen.MedianDuration(p99), loadgen.Median(cpu)
	st.errs = (&loadgen.Result{Errors: errs}).ErrorString()
	st.rounds = strings.Join(rounds, ", ")
	return st
}

// memPeak is a server's peak memory over runs: the resident set's
// high-water mark, and the highest anonymous (heap, stacks) part sampled.
type memPeak struct{ rss, anon uint64 }

func (m *memPeak) see(p loadgen.ProcCost) {
	m.rss = max(m.rss, p.PeakRSS)
	m.anon = max(m.anon, p.PeakAnon)
}

func (m memPeak) String() string {
	if m.rss == 0 {
		return "—"
	}
	return fmt.Sprintf("%s (anon %s)", mb(m.rss), mb(m.anon))
}

func memOf(p loadgen.ProcCost) string {
	var m memPeak
	m.see(p)
	return m.String()
}

// modeName names a transitca system in a target line: "memory",
// "vault candidate".
func modeName(id string) string {
	m := strings.TrimPrefix(id, "transitca-")
	if base, ok := strings.CutSuffix(m, candidateSuffix); ok {
		return base + " candidate"
	}
	return m
}
