package loadgen

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// StormResult is what a storm measured.
type StormResult struct {
	Name string
	// Workloads is how many workloads started.
	Workloads int
	// Spread is the window their starts were spread over.
	Spread time.Duration
	// OK counts the workloads that got their certificate.
	OK int
	// Errors counts the failed workloads by code.
	Errors map[string]int
	// Makespan is the time from the first start until the last workload
	// had its certificate (or gave up).
	Makespan time.Duration
	// Latency summarizes each successful workload's time from its own start
	// (connect, TLS handshake, request) to its certificate.
	Latency Summary
	// Procs is the cost of the watched processes over the storm.
	Procs []ProcCost
}

// ErrorCount is the number of failed workloads.
func (r *StormResult) ErrorCount() int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// Per1000 is the makespan per 1,000 workloads.
func (r *StormResult) Per1000() time.Duration {
	if r.Workloads == 0 {
		return 0
	}
	return time.Duration(float64(r.Makespan) * 1000 / float64(r.Workloads))
}

// StormOp is one workload's start: it connects and asks for its
// certificate. It returns what must stay open until the storm ends (the
// workload's connection, as istio-agent keeps its CA connection), or nil.
type StormOp func(ctx context.Context, i int) (io.Closer, error)

// Storm starts n workloads whose start times are spread evenly over spread
// (a rolling restart of a whole mesh at once), each running op once, and
// waits until every one has its certificate or has failed. Connections stay
// open until all are done. Nothing is retried.
func Storm(ctx context.Context, n int, spread time.Duration, o Options, op StormOp) *StormResult {
	var (
		done, failed atomic.Int64
		phase        atomic.Int32
		mu           sync.Mutex
		rec          recorder
		closers      []io.Closer
		wg           sync.WaitGroup
	)
	phase.Store(phaseMeasure)
	stopProgress := progress(o, n, 0, &done, &failed, &phase)
	watch := watchProcs(o.Watch)
	start := time.Now()
	var lastMu sync.Mutex
	var last time.Time
	for i := range n {
		due := start
		if n > 1 {
			due = start.Add(time.Duration(float64(spread) * float64(i) / float64(n-1)))
		}
		wg.Go(func() {
			if d := time.Until(due); d > 0 {
				sleepCtx(ctx, d)
			}
			rctx, cancel := context.WithTimeout(ctx, o.timeout())
			c, err := op(rctx, i)
			cancel()
			end := time.Now()
			lastMu.Lock()
			if end.After(last) {
				last = end
			}
			lastMu.Unlock()
			done.Add(1)
			mu.Lock()
			defer mu.Unlock()
			if c != nil {
				closers = append(closers, c)
			}
			if err != nil {
				failed.Add(1)
				rec.fail(err)
				return
			}
			rec.ok(end.Sub(due))
		})
	}
	wg.Wait()
	costs := watch.stop()
	phase.Store(phaseDone)
	stopProgress()
	for _, c := range closers {
		_ = c.Close()
	}
	if rec.sample != nil && o.FirstError != nil {
		o.FirstError(rec.sample)
	}
	errs := rec.errs
	if errs == nil {
		errs = map[string]int{}
	}
	return &StormResult{
		Name: o.Name, Workloads: n, Spread: spread, OK: len(rec.lat), Errors: errs,
		Makespan: last.Sub(start), Latency: Summarize(rec.lat), Procs: costs,
	}
}

// Proc returns the cost of the watched process called name.
func (r *StormResult) Proc(name string) (ProcCost, bool) {
	for _, p := range r.Procs {
		if p.Name == name {
			return p, true
		}
	}
	return ProcCost{}, false
}
