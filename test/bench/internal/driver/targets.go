package driver

import (
	"fmt"
	"strings"
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
	fmt.Fprintf(b, "\n")
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
