package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"
)

// Op performs one request for simulated agent worker; seq numbers the
// requests of a run from 0. It returns nil when the request succeeded.
type Op func(ctx context.Context, worker, seq int) error

// Result is what one run measured. Only requests that completed (closed
// loop) or were due (open loop) inside the measured window count; the
// warm-up before it and the requests cut off after it do not.
type Result struct {
	Name string
	// Mode is "closed" (fixed concurrency) or "open" (fixed rate).
	Mode string
	// Workers is the concurrency of a closed loop, the number of
	// connections of an open loop.
	Workers int
	// TargetRate is the open loop's request rate per second.
	TargetRate float64
	// Window is the length of the measured window.
	Window time.Duration
	// OK counts the requests that succeeded.
	OK int
	// Errors counts failed requests by gRPC code (or HTTP status, or
	// "other").
	Errors map[string]int
	// Latency summarizes the latencies of successful requests: in a closed
	// loop from send to answer, in an open loop from the intended send time
	// to the answer, so that a server that falls behind is charged for the
	// wait it causes (no coordinated omission).
	Latency Summary
	// Procs is the cost of each watched process during the window.
	Procs []ProcCost
}

// Throughput is successful requests per second over the window.
func (r *Result) Throughput() float64 { return Rate(r.OK, r.Window) }

// ErrorCount is the number of failed requests.
func (r *Result) ErrorCount() int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// ErrorString lists the errors as "Code=n, …" in a stable order, or "0".
func (r *Result) ErrorString() string {
	if len(r.Errors) == 0 {
		return "0"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.Errors[k]))
	}
	return strings.Join(parts, ", ")
}

// Proc returns the cost of the watched process called name.
func (r *Result) Proc(name string) (ProcCost, bool) {
	for _, p := range r.Procs {
		if p.Name == name {
			return p, true
		}
	}
	return ProcCost{}, false
}

// CodedError is an error that names its own category for the error counts,
// such as an HTTP status.
type CodedError interface {
	error
	Code() string
}

// ErrorCode is the category an error is counted under: the gRPC status code
// name, the code of a CodedError, DeadlineExceeded or Canceled for context
// errors, or "other".
func ErrorCode(err error) string {
	var ce CodedError
	switch {
	case errors.As(err, &ce):
		return ce.Code()
	case errors.Is(err, context.DeadlineExceeded):
		return "DeadlineExceeded"
	case errors.Is(err, context.Canceled):
		return "Canceled"
	}
	if st, ok := status.FromError(err); ok {
		return st.Code().String()
	}
	var gs interface{ GRPCStatus() *status.Status }
	if errors.As(err, &gs) {
		return gs.GRPCStatus().Code().String()
	}
	return "other"
}

// recorder collects the outcomes of one worker (or one open-loop request
// stream) without locking; recorders are merged at the end.
type recorder struct {
	lat    []time.Duration
	errs   map[string]int
	sample error // first error seen, for the log
}

func (r *recorder) ok(d time.Duration) { r.lat = append(r.lat, d) }

func (r *recorder) fail(err error) {
	if r.errs == nil {
		r.errs = map[string]int{}
	}
	r.errs[ErrorCode(err)]++
	if r.sample == nil {
		r.sample = err
	}
}

func merge(rs []*recorder) (lat []time.Duration, errs map[string]int, sample error) {
	errs = map[string]int{}
	for _, r := range rs {
		lat = append(lat, r.lat...)
		for k, v := range r.errs {
			errs[k] += v
		}
		if sample == nil {
			sample = r.sample
		}
	}
	return lat, errs, sample
}

// Options are common to both loops.
type Options struct {
	// Name labels the run in progress lines and the result.
	Name string
	// Warmup runs the load before the measured window starts.
	Warmup time.Duration
	// Duration is the measured window.
	Duration time.Duration
	// MaxRequests ends the measured window early once this many requests
	// have completed in it (closed loop). Zero means no limit.
	MaxRequests int
	// RequestTimeout bounds each request. Zero means 30 s.
	RequestTimeout time.Duration
	// Watch lists the processes whose CPU time and peak memory the window
	// measures.
	Watch []Proc
	// Progress receives a progress line about once a second; nil is silent.
	Progress io.Writer
	// FirstError, if set, is called once with the first failed request's
	// error, for the log.
	FirstError func(error)
}

func (o *Options) timeout() time.Duration {
	if o.RequestTimeout <= 0 {
		return 30 * time.Second
	}
	return o.RequestTimeout
}

// phase values of a run.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseDone
)

// ClosedLoop runs op on workers goroutines (one per simulated agent, each
// waiting for its answer before it sends again) for o.Warmup, then measures
// for o.Duration.
func ClosedLoop(ctx context.Context, workers int, o Options, op Op) *Result {
	if workers < 1 {
		workers = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		phase    atomic.Int32
		seq      atomic.Int64
		measured atomic.Int64
		failed   atomic.Int64
		limitHit = make(chan struct{})
		hitOnce  sync.Once
	)
	recs := make([]*recorder, workers)
	var wg sync.WaitGroup
	for w := range workers {
		recs[w] = &recorder{}
		wg.Go(func() {
			rec := recs[w]
			for ctx.Err() == nil {
				i := int(seq.Add(1) - 1)
				rctx, rcancel := context.WithTimeout(ctx, o.timeout())
				start := time.Now()
				err := op(rctx, w, i)
				took := time.Since(start)
				rcancel()
				if phase.Load() != phaseMeasure {
					continue
				}
				if err != nil {
					if ctx.Err() != nil {
						return // cut off by the end of the run
					}
					rec.fail(err)
					failed.Add(1)
				} else {
					rec.ok(took)
				}
				if n := measured.Add(1); o.MaxRequests > 0 && n >= int64(o.MaxRequests) {
					hitOnce.Do(func() { close(limitHit) })
				}
			}
		})
	}
	stopProgress := progress(o, workers, 0, &measured, &failed, &phase)
	sleepCtx(ctx, o.Warmup)
	watch := watchProcs(o.Watch)
	start := time.Now()
	phase.Store(phaseMeasure)
	select {
	case <-time.After(o.Duration):
	case <-limitHit:
	case <-ctx.Done():
	}
	phase.Store(phaseDone)
	window := time.Since(start)
	costs := watch.stop()
	stopProgress()
	cancel()
	wg.Wait()
	lat, errs, sample := merge(recs)
	if sample != nil && o.FirstError != nil {
		o.FirstError(sample)
	}
	return &Result{
		Name: o.Name, Mode: "closed", Workers: workers, Window: window,
		OK: len(lat), Errors: errs, Latency: Summarize(lat), Procs: costs,
	}
}

// OpenLoop sends requests at a fixed rate, spread over conns simulated
// agents (request i goes to worker i mod conns), whatever the answers: a
// request is due at start + i/rate and is sent then (or as soon after as
// the load generator can; up to maxInFlight requests wait for answers at
// once). Its latency runs from when it was due, not from when it was sent,
// so a stalled server or a lagging load generator is charged for the whole
// wait. Requests due during o.Warmup are sent but not measured; the run
// ends when every request due in the window has been answered.
func OpenLoop(ctx context.Context, rate float64, conns, maxInFlight int, o Options, op Op) *Result {
	if conns < 1 {
		conns = 1
	}
	if maxInFlight < 1 {
		maxInFlight = 4096
	}
	total := o.Warmup + o.Duration
	n := int(rate * total.Seconds())
	warmN := int(rate * o.Warmup.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	var (
		phase    atomic.Int32
		measured atomic.Int64
		failed   atomic.Int64
		mu       sync.Mutex
		rec      recorder
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, maxInFlight)
	stopProgress := progress(o, conns, rate, &measured, &failed, &phase)
	var watch *procWatch
	var windowStart time.Time
	start := time.Now()
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		if i == warmN {
			watch = watchProcs(o.Watch)
			windowStart = time.Now()
			phase.Store(phaseMeasure)
		}
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			sleepCtx(ctx, d)
		}
		sem <- struct{}{}
		inWindow := i >= warmN
		wg.Go(func() {
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, o.timeout())
			err := op(rctx, i%conns, i)
			took := time.Since(due)
			cancel()
			if !inWindow {
				return
			}
			measured.Add(1)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed.Add(1)
				rec.fail(err)
			} else {
				rec.ok(took)
			}
		})
	}
	wg.Wait()
	if watch == nil { // no request fell in the window
		watch = watchProcs(o.Watch)
		windowStart = time.Now()
	}
	costs := watch.stop()
	phase.Store(phaseDone)
	stopProgress()
	if rec.sample != nil && o.FirstError != nil {
		o.FirstError(rec.sample)
	}
	// The window is the span over which measured requests were due: the
	// achieved rate is compared with the offered one over the same span.
	window := o.Duration
	if ctx.Err() != nil {
		window = time.Since(windowStart)
	}
	errs := rec.errs
	if errs == nil {
		errs = map[string]int{}
	}
	return &Result{
		Name: o.Name, Mode: "open", Workers: conns, TargetRate: rate, Window: window,
		OK: len(rec.lat), Errors: errs, Latency: Summarize(rec.lat), Procs: costs,
	}
}

// progress prints a line about once a second until the returned function
// is called. On a terminal the line is rewritten in place.
func progress(o Options, workers int, rate float64, done, failed *atomic.Int64, phase *atomic.Int32) func() {
	if o.Progress == nil {
		return func() {}
	}
	tty := isTerminal(o.Progress)
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		start := time.Now()
		var last int64
		for {
			select {
			case <-stop:
				if tty {
					fmt.Fprint(o.Progress, "\r\033[K")
				}
				return
			case <-t.C:
			}
			cur := done.Load()
			what := "warming up"
			switch phase.Load() {
			case phaseMeasure:
				what = "measuring"
			case phaseDone:
				what = "draining"
			}
			load := fmt.Sprintf("%d workers", workers)
			if rate > 0 {
				load = fmt.Sprintf("%.0f/s offered over %d connections", rate, workers)
			}
			line := fmt.Sprintf("  %-28s %5.0fs %-10s %s: %d done (%d/s), %d errors",
				o.Name, time.Since(start).Seconds(), what, load, cur, cur-last, failed.Load())
			last = cur
			if tty {
				fmt.Fprint(o.Progress, "\r\033[K"+line)
			} else {
				fmt.Fprintln(o.Progress, line)
			}
		}
	}()
	return func() { close(stop); <-finished }
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
