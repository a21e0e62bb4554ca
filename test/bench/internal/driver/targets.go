package driver

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/transitca/transitca/test/bench/internal/kubestorm"
	"github.com/transitca/transitca/test/bench/internal/logscale"
	"github.com/transitca/transitca/test/bench/loadgen"
)

// verdict writes one target row.
func verdict(b *strings.Builder, name, measured string, ok bool) {
	v := "**no**"
	if ok {
		v = "yes"
	}
	fmt.Fprintf(b, "| %s | %s | %s |\n", name, measured, v)
}

// rowOf returns the row of system id, or nil.
func rowOf(rows []row, id string) *row {
	for i := range rows {
		if rows[i].s.id == id {
			return &rows[i]
		}
	}
	return nil
}

// renderPerfTargets writes the targets of the performance work, each with
// what this run measured and whether it was met.
func (e *env) renderPerfTargets(b *strings.Builder, r *results, rows []row) {
	mem, istio := rowOf(rows, sysTransitcaMem), rowOf(rows, sysIstioECDSA)
	vlt, transit := rowOf(rows, sysTransitcaVlt), rowOf(rows, sysTransit)
	fmt.Fprintf(b, "### Targets\n\n| target | measured | met |\n| --- | --- | --- |\n")
	if mem != nil && istio != nil {
		verdict(b, "in-memory mode ≥ 1.1× Istio's CA server's issued/s (ECDSA), durable log on",
			fmt.Sprintf("%.2f× (%.0f/s vs %.0f/s; median of per-round ratios)", mem.vsIstio, mem.tput, istio.tput), mem.vsIstio >= 1.1)
		x := cpuRatioOf(r, sysTransitcaMem, sysIstioECDSA)
		verdict(b, "in-memory mode ≤ 0.9× Istio's server CPU per 1,000",
			fmt.Sprintf("%.2f× (%.3f vs %.3f CPU-s per 1,000)", x, mem.serverCPU, istio.serverCPU), x <= 0.9)
	}
	if runs := r.open[sysTransitcaMem]; len(runs) > 0 && r.disk != nil {
		o := summarizeOpen(runs)
		x := float64(o.p99) / float64(r.disk.commit.P99)
		verdict(b, "p99 at half the peak ≤ 3× the disk's raw commit latency (memory mode, open loop)",
			fmt.Sprintf("p99 %s at %.0f/s = %.1f× the raw commit's p99 %s (p50 %s = %.1f× its p50 %s)",
				fmtDur(o.p99), o.offered, x, fmtDur(r.disk.commit.P99),
				fmtDur(o.p50), float64(o.p50)/float64(r.disk.commit.P50), fmtDur(r.disk.commit.P50)),
			x <= 3)
	}
	if vlt != nil && transit != nil {
		x := ratioOf(r, sysTransitcaVlt, sysTransit)
		verdict(b, "in-Vault mode ≥ 60% of raw Transit's sign rate",
			fmt.Sprintf("%.0f%% (%.0f/s vs %.0f/s)", 100*x, vlt.tput, transit.tput), x >= 0.6)
	}
	if k := r.kube; k != nil && len(k.Rounds) > 0 {
		med := k.Median()
		n := med.Storm.Workloads
		var errs int
		worst := 0.0
		for _, rd := range k.Rounds {
			errs += rd.Storm.ErrorCount()
			worst = max(worst, rd.APIServerReviews, rd.DaemonReviews)
		}
		verdict(b, "Kubernetes restart storm (TokenReview): < 5 s per 10,000 workloads, zero errors",
			fmt.Sprintf("%s per 10,000 (median of %d rounds of %d workloads; per round %s), errors %d in all rounds",
				fmtDur(med.Per10000()), len(k.Rounds), n, kubeRounds(k), errs),
			med.Per10000() < 5*time.Second && errs == 0)
		verdict(b, "at most one TokenReview per distinct token",
			fmt.Sprintf("at most %.0f reviews for %d tokens in a round (counted by the API server and by the daemon)", worst, k.Tokens),
			worst <= float64(k.Tokens))
	}
	if l := r.log; l != nil {
		verdict(b, "append rate into a 10M-entry log within 20% of a new log's",
			fmt.Sprintf("%.2f× (%.0f/s into %d entries vs %.0f/s into a new log)", l.Ratio, l.Large.Rate, l.Large.Before, l.New.Rate), l.Ratio >= 0.8)
		verdict(b, "bytes per entry ≤ 900", fmt.Sprintf("%.0f in the large log, %.0f in the new one", l.Large.BytesPerEntry, l.New.BytesPerEntry),
			max(l.Large.BytesPerEntry, l.New.BytesPerEntry) <= 900)
		verdict(b, "`ca log verify` of the large log < 30 s", fmt.Sprintf("%s for %d entries (%s)", fmtDur(l.VerifyTime), l.Large.Before+uint64(l.Large.Appends), l.VerifiedBy),
			l.VerifyTime < 30*time.Second)
	}
	fmt.Fprintf(b, "\n")
}

// logWriters append concurrently in the log-at-scale measurement.
const logWriters = 256

// renderLogScale writes the issuance log at scale.
func renderLogScale(b *strings.Builder, l *logscale.Result) {
	if l == nil {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("### The issuance log at scale\n\n")
	p("Durable appends (fsync on, group commit, %d writers) of the same kind of entries into a new log and into a log of %d entries (`%s`, generated once and cached outside the clone", logWriters, l.Large.Before, filepath.Base(l.LargeLog))
	if l.Generated {
		p("; this run generated it, in %s", fmtDur(l.GenerateTime))
	}
	p("), in alternating rounds so that both see the same machine. Bytes per entry are the file's size over its entries.\n\n")
	p("| log | entries before | appended | appends/s | p50 | p99 | entries per commit | bytes per entry |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, a := range []struct {
		name string
		x    logscale.Appends
	}{{"new", l.New}, {"large", l.Large}} {
		p("| %s | %d | %d | %.0f | %s | %s | %.0f | %.0f |\n", a.name, a.x.Before, a.x.Appends, a.x.Rate, fmtDur(a.x.P50), fmtDur(a.x.P99), a.x.EntriesPerCommit, a.x.BytesPerEntry)
	}
	p("\nThe large log's full check (`%s`: every record re-hashed, the tree and every checkpoint recomputed, every index checked): %s.\n\n", l.VerifiedBy, fmtDur(l.VerifyTime))
}

func kubeRounds(k *kubestorm.Result) string {
	var parts []string
	for _, rd := range k.Rounds {
		parts = append(parts, fmtDur(rd.Storm.Makespan))
	}
	return strings.Join(parts, ", ")
}

// renderKubeStorm writes the Kubernetes restart storm.
func renderKubeStorm(b *strings.Builder, k *kubestorm.Result) {
	if k == nil || len(k.Rounds) == 0 {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("### Kubernetes restart storm: TokenReview against a real API server (%d rounds)\n\n", len(k.Rounds))
	p("A real kube-apiserver and etcd (`internal/kubetest`); %d pods, each with its own TokenRequest token bound to it (audience `istio-ca`), made before the clock starts. `ca serve` (in-memory mode) checks every token with a TokenReview, as the shipped RBAC lets it; each round runs a fresh daemon, after the API server's own token cache has expired, so that no review is saved by a cache. The workloads start within %v, each on its own connection with its own token and a CSR for a fresh key; nothing is retried. Every certificate issued is checked to name its pod's service account.\n\n",
		k.Tokens, k.Rounds[0].Storm.Spread)
	p("| round | last certificate after | per 10,000 | errors | p50 | p99 | TokenReviews (API server / daemon) | 429s | refused (max_in_flight) | daemon CPU s | API server CPU s |\n| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for i, rd := range k.Rounds {
		s := rd.Storm
		cpu := func(name string) string {
			if pc, ok := s.Proc(name); ok {
				return fmt.Sprintf("%.1f", pc.CPU.Seconds())
			}
			return "—"
		}
		p("| %d | %s | %s | %s | %s | %s | %.0f / %.0f | %.0f | %.0f | %s | %s |\n", i+1, fmtDur(s.Makespan), fmtDur(rd.Per10000()),
			(&loadgen.Result{Errors: s.Errors}).ErrorString(), fmtDur(s.Latency.P50), fmtDur(s.Latency.P99),
			rd.APIServerReviews, rd.DaemonReviews, rd.APIServerThrottled, rd.Overload, cpu("transitca"), cpu("kube-apiserver"))
	}
	p("\n")
}

// renderDisk writes the disk's raw commit latency next to the open-loop
// latencies.
func renderDisk(b *strings.Builder, d *diskLatency) {
	if d == nil {
		return
	}
	fmt.Fprintf(b, "The disk under the logs, measured by the driver in the same run (%d commits to a scratch file in the data directories' file system): a 4 KiB write and `fdatasync` takes p50 %s, p99 %s; a raw commit, two of them as bbolt commits (data pages, then the meta page), p50 %s, p99 %s. That raw commit is the floor under every durable answer.\n\n",
		diskCommits, fmtDur(d.write.P50), fmtDur(d.write.P99), fmtDur(d.commit.P50), fmtDur(d.commit.P99))
}
