package kubestorm

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/test/bench/internal/peers"
	"github.com/transitca/transitca/test/bench/loadgen"
)

// storm runs the storm against the daemon, with the TokenReview counters
// read before and after, and checks every certificate issued.
func (r *run) storm(ctx context.Context, srv *kubetest.Server, d *daemon, ws []*workload) (*Round, error) {
	api, own := apiServerScraper(srv, "/metrics"), daemonScraper(d.metricsAddr)
	watch, err := r.procs(d)
	if err != nil {
		return nil, err
	}
	before, err := readCounters(ctx, api, own)
	if err != nil {
		return nil, err
	}
	leaves := make([]*x509.Certificate, len(ws))
	var mu sync.Mutex
	o := loadgen.Options{
		Name: "kubernetes storm", RequestTimeout: r.opts.RequestTimeout, Watch: watch, Progress: r.opts.Progress,
		FirstError: func(err error) { r.logf("  first error: %v", err) },
	}
	r.logf("storm: %d workloads over %v", len(ws), r.opts.Spread)
	waitProfile := func() error { return nil }
	if r.opts.CPUProfile != "" && !r.profiled {
		r.profiled = true
		waitProfile = cpuProfile(ctx, d.metricsAddr, r.opts.CPUProfile, r.opts.ProfileDuration)
	}
	st := loadgen.Storm(ctx, len(ws), r.opts.Spread, o, func(ctx context.Context, i int) (io.Closer, error) {
		conn, leaf, err := d.request(ctx, ws[i])
		mu.Lock()
		leaves[i] = leaf
		mu.Unlock()
		return conn, err
	})
	after, err := readCounters(ctx, api, own)
	if err != nil {
		return nil, err
	}
	if err := waitProfile(); err != nil {
		return nil, err
	}
	res := &Round{
		Storm: st, APIServerReviews: after.apiReviews - before.apiReviews, APIServerThrottled: after.apiThrottled - before.apiThrottled,
		DaemonReviews: -1, Overload: after.overload - before.overload,
	}
	if before.ownReviews >= 0 && after.ownReviews >= 0 {
		res.DaemonReviews = after.ownReviews - before.ownReviews
	}
	var bad []error
	for i, leaf := range leaves {
		if leaf == nil {
			continue
		}
		res.Checked++
		if err := checkLeaf(leaf, ws[i]); err != nil && len(bad) < 5 {
			bad = append(bad, err)
		}
	}
	if len(bad) > 0 {
		return res, fmt.Errorf("storm: %w", errors.Join(bad...))
	}
	return res, ctx.Err()
}

// procs are the processes whose cost the storm measures: the daemon, the
// API server, etcd and the load generator (this process).
func (r *run) procs(d *daemon) ([]loadgen.Proc, error) {
	out := []loadgen.Proc{{Name: "transitca", PID: d.proc.PID()}}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		pid, err := peers.ChildPID(name)
		if err != nil {
			return nil, err
		}
		out = append(out, loadgen.Proc{Name: name, PID: pid})
	}
	return append(out, loadgen.Proc{Name: "loadgen", PID: os.Getpid()}), nil
}

func distinctTokens(ws []*workload) int {
	seen := make(map[string]struct{}, len(ws))
	for _, w := range ws {
		seen[w.token] = struct{}{}
	}
	return len(seen)
}

// counters are the counters a storm reads before and after.
type counters struct {
	apiReviews, apiThrottled float64
	ownReviews               float64 // -1: not exported
	overload                 float64
}

func readCounters(ctx context.Context, api, own *scraper) (counters, error) {
	var c counters
	var err error
	if c.apiReviews, _, err = api.sum(ctx, apiRequests, `resource="tokenreviews"`, `verb="POST"`); err != nil {
		return c, err
	}
	if c.apiThrottled, _, err = api.sum(ctx, apiRequests, `resource="tokenreviews"`, `verb="POST"`, `code="429"`); err != nil {
		return c, err
	}
	ownMetrics, err := own.get(ctx)
	if err != nil {
		return c, err
	}
	var found bool
	if c.ownReviews, found = sumSamples(ownMetrics, daemonReviews, nil); !found {
		c.ownReviews = -1
	}
	c.overload, _ = sumSamples(ownMetrics, daemonRejections, []string{`reason="overload_in_flight"`})
	return c, nil
}
