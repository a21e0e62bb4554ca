package driver

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/transitca/transitca/test/bench/internal/kubestorm"
	"github.com/transitca/transitca/test/bench/internal/logscale"
	"github.com/transitca/transitca/test/bench/loadgen"
)

// results is everything a run measured.
type results struct {
	started, finished time.Time
	// closed holds each system's closed-loop result per round.
	closed map[string][]*loadgen.Result
	// extra are single closed-loop runs with RSA-2048 CSRs.
	extra []labeled
	// open are the open-loop runs at half of each system's peak, per
	// round.
	open map[string][]openRun
	// storms are the restart storms, per round.
	storms map[string][]stormRun
	// profiles split the CPU of a profiled closed-loop run by stage.
	profiles []*stageProfile
	// disk is the raw commit latency of the disk the logs are on.
	disk *diskLatency
	// kube is the Kubernetes restart storm.
	kube *kubestorm.Result
	// log is the issuance log at scale.
	log *logscale.Result
}

type labeled struct {
	sys   *system
	label string
	res   *loadgen.Result
}

type openRun struct {
	sys  *system
	peak float64
	res  *loadgen.Result
}

type stormRun struct {
	sys *system
	res *loadgen.StormResult
}

func (e *env) system(id string) *system {
	for _, s := range e.systems {
		if s.id == id {
			return s
		}
	}
	return nil
}

func (e *env) runAll(ctx context.Context) (*results, error) {
	r := &results{started: time.Now(), closed: map[string][]*loadgen.Result{}, open: map[string][]openRun{}, storms: map[string][]stormRun{}}
	e.meta["systems"] = fmt.Sprint(len(e.systems))

	// Closed loop, interleaved rounds: every system once per round, the
	// order rotated from round to round, so that slow drifts of a shared
	// machine fall on all systems alike.
	for round := range e.cfg.Rounds {
		order := slices.Clone(e.systems)
		k := round % len(order)
		order = append(order[k:], order[:k]...)
		e.logf("closed loop, round %d of %d", round+1, e.cfg.Rounds)
		for _, s := range order {
			res, err := e.closed(ctx, s, e.ecdsa, fmt.Sprintf("%s r%d", s.id, round+1))
			if err != nil {
				return nil, err
			}
			r.closed[s.id] = append(r.closed[s.id], res)
		}
	}
	if !e.skip("profile") {
		e.logf("closed loop with CPU profiles")
		for _, id := range []string{sysTransitcaMem, sysTransitcaMem + candidateSuffix, sysIstioECDSA} {
			if s := e.system(id); s != nil && s.pprof != "" {
				sp, err := e.profiled(ctx, s)
				if err != nil {
					return nil, err
				}
				r.profiles = append(r.profiles, sp)
			}
		}
	}
	if !e.skip("rsa") {
		e.logf("closed loop with RSA-2048 CSRs")
		for _, id := range []string{sysTransitcaMem, sysIstioRSA} {
			s := e.system(id)
			if s == nil {
				continue
			}
			res, err := e.closed(ctx, s, e.rsa, s.id+" rsa-csr")
			if err != nil {
				return nil, err
			}
			r.extra = append(r.extra, labeled{sys: s, label: s.label + ", RSA-2048 CSRs", res: res})
		}
	}
	if !e.skip("open") {
		e.logf("raw commit latency of the disk")
		d, err := measureDisk(e.dir)
		if err != nil {
			return nil, err
		}
		r.disk = d
		e.logf("  4 KiB write + fdatasync: p50 %v p99 %v; two of them (a commit): p50 %v p99 %v",
			ms(d.write.P50), ms(d.write.P99), ms(d.commit.P50), ms(d.commit.P99))
		e.logf("open loop at half of each system's peak, %d rounds", e.cfg.Rounds)
		for round := range e.cfg.Rounds {
			for _, id := range e.latencySystems() {
				s := e.system(id)
				if s == nil {
					continue
				}
				peak := medianThroughput(r.closed[id])
				res, err := e.openLoop(ctx, s, peak/2, round)
				if err != nil {
					return nil, err
				}
				r.open[id] = append(r.open[id], openRun{sys: s, peak: peak, res: res})
			}
		}
	}
	if !e.skip("storm") {
		e.logf("restart storm: %d services × %d replicas, %d rounds", e.cfg.StormServices, e.cfg.StormReplicas, e.cfg.Rounds)
		for round := range e.cfg.Rounds {
			for _, id := range e.latencySystems() {
				s := e.system(id)
				if s == nil || s.target == nil {
					continue
				}
				r.storms[id] = append(r.storms[id], stormRun{sys: s, res: e.storm(ctx, s, round)})
			}
		}
	}
	if !e.skip("kubestorm") && e.want(sysTransitcaMem) {
		n := e.cfg.KubeServices * e.cfg.KubeReplicas
		e.logf("Kubernetes restart storm: %d pods, tokens checked by TokenReview, %d rounds", n, e.cfg.Rounds)
		k, err := kubestorm.Run(ctx, kubestorm.Options{
			CABinary: e.cfg.CABinary, Dir: filepath.Join(e.dir, "kubestorm"),
			Services: e.cfg.KubeServices, Replicas: e.cfg.KubeReplicas, Spread: e.cfg.StormSpread,
			Rounds: e.cfg.Rounds, Log: e.cfg.Log, Progress: e.cfg.Progress,
		})
		if err != nil {
			return nil, fmt.Errorf("kubernetes storm: %w", err)
		}
		r.kube = k
	}
	if !e.skip("logscale") {
		e.logf("issuance log at %d entries against a new log", e.cfg.LogEntries)
		l, err := logscale.Run(ctx, logscale.Options{
			CacheDir: e.cfg.LogCache, Entries: e.cfg.LogEntries, Appends: e.cfg.LogAppends, Writers: logWriters,
			CABinary: e.cfg.CABinary, TempDir: e.dir, Logf: e.logf,
		})
		if err != nil {
			return nil, fmt.Errorf("log at scale: %w", err)
		}
		r.log = l
	}
	r.finished = time.Now()
	return r, ctx.Err()
}

func (e *env) watch(s *system) []loadgen.Proc {
	procs := s.procs()
	if s.id != sysCrypto {
		procs = append(procs, e.loadgenProc())
	}
	return procs
}

func (e *env) options(s *system, name string) loadgen.Options {
	return loadgen.Options{
		Name: name, Warmup: e.cfg.Warmup, Duration: e.cfg.Duration,
		Watch: e.watch(s), Progress: e.cfg.Progress,
		FirstError: func(err error) { e.logf("  %s: first error: %v", name, err) },
	}
}

func (e *env) closed(ctx context.Context, s *system, items []item, name string) (*loadgen.Result, error) {
	workers := e.cfg.Clients
	if s.workers > 0 {
		workers = s.workers
	}
	op, closeFn, err := s.newOp(workers, items)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer closeFn()
	res := loadgen.ClosedLoop(ctx, workers, e.options(s, name), op)
	e.logf("  %-28s %7.0f/s  p50 %-9v p99 %-9v errors %-6s server CPU %.3fs/1k",
		name, res.Throughput(), ms(res.Latency.P50), ms(res.Latency.P99), res.ErrorString(), serverCPUPer1000(res))
	return res, ctx.Err()
}

func (e *env) openLoop(ctx context.Context, s *system, rate float64, round int) (*loadgen.Result, error) {
	if rate < 1 {
		rate = 1
	}
	op, closeFn, err := s.newOp(e.cfg.Clients, e.ecdsa)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	o := e.options(s, fmt.Sprintf("%s open r%d", s.id, round+1))
	o.Duration = e.cfg.OpenDuration
	res := loadgen.OpenLoop(ctx, rate, e.cfg.Clients, 8192, o, op)
	e.logf("  %-28s offered %.0f/s, got %.0f/s  p50 %v p99 %v p99.9 %v errors %s",
		o.Name, rate, res.Throughput(), ms(res.Latency.P50), ms(res.Latency.P99), ms(res.Latency.P999), res.ErrorString())
	return res, ctx.Err()
}

func (e *env) storm(ctx context.Context, s *system, round int) *loadgen.StormResult {
	o := e.options(s, fmt.Sprintf("%s storm r%d", s.id, round+1))
	o.RequestTimeout = 60 * time.Second
	res := loadgen.Storm(ctx, len(e.stormItems), e.cfg.StormSpread, o, stormOp(*s.target, e.stormItems))
	e.logf("  %-28s %d workloads: last certificate after %v (%v per 1,000), errors %d, p50 %v p99 %v",
		o.Name, res.Workloads, res.Makespan.Round(time.Millisecond), res.Per1000().Round(time.Millisecond),
		res.ErrorCount(), ms(res.Latency.P50), ms(res.Latency.P99))
	return res
}

func medianThroughput(rs []*loadgen.Result) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = r.Throughput()
	}
	return loadgen.Median(xs)
}

// serverCPUPer1000 is the CPU seconds all server processes (not the load
// generator) spent per 1,000 successful requests.
func serverCPUPer1000(r *loadgen.Result) float64 {
	var cpu time.Duration
	for _, p := range r.Procs {
		if p.Name != "loadgen" {
			cpu += p.CPU
		}
	}
	if r.OK == 0 {
		return 0
	}
	return cpu.Seconds() * 1000 / float64(r.OK)
}

// ms rounds a latency for a log line.
func ms(d time.Duration) time.Duration {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
