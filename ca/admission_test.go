package ca_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/transitca/transitca/ca"
)

// heldRecorder holds every workload issuance in RecordIssuance until the
// test releases it, one per value sent on release, announcing the
// identity of each on entered as it arrives.
type heldRecorder struct {
	ca.Recorder
	entered chan string
	release chan struct{}
}

func newHeldRecorder() *heldRecorder {
	return &heldRecorder{entered: make(chan string, 64), release: make(chan struct{}, 64)}
}

func (r *heldRecorder) RecordIssuance(ctx context.Context, is *ca.Issuance) error {
	if is.Tier == ca.ServingTier {
		return r.Recorder.RecordIssuance(ctx, is)
	}
	r.entered <- is.Cert.URIs[0].String()
	<-r.release
	return r.Recorder.RecordIssuance(ctx, is)
}

// metricValue is the value of the gauge or counter name with the label
// pair (if label is not empty), 0 if it is not exported.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					match = true
				}
			}
			if !match {
				continue
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// waitQueued waits until n requests wait in the admission queue, failing
// t if one of the requests sent (whose outcomes arrive on errs) ends
// first.
func waitQueued(t *testing.T, h *harness, n int, errs <-chan error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, h.reg, ca.MetricRequestsQueued, "", "") != float64(n) {
		select {
		case err := <-errs:
			t.Fatalf("a request beyond max_in_flight with room in the queue ended without waiting: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %d", ca.MetricRequestsQueued, metricValue(t, h.reg, ca.MetricRequestsQueued, "", ""), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Beyond limits.max_in_flight, requests wait in the queue instead of being
// refused, and are served in the order they arrived as places free up;
// only a request beyond the queue is refused at once, with
// ResourceExhausted, a message that says so, and the overload_in_flight
// count.
func TestInFlightLimitQueuesBeforeRefusing(t *testing.T) {
	const limit, queued = 2, 3
	hr := newHeldRecorder()
	h := newHarnessWith(t, func(o *ca.ServiceOptions) {
		o.MaxInFlight, o.MaxQueued, o.QueueWait = limit, queued, 20*time.Second
		hr.Recorder = o.Recorder
		o.Recorder = hr
	})
	var wg sync.WaitGroup
	errs := make(chan error, limit+queued)
	ask := func(sa string) {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- h.ask(t, "default", sa) }()
	}
	for i := range limit {
		ask("held" + string(rune('0'+i)))
	}
	for range limit {
		<-hr.entered
	}
	order := []string{"first", "second", "third"}
	for i, sa := range order {
		ask(sa)
		waitQueued(t, h, i+1, errs)
	}

	start := time.Now()
	err := h.ask(t, "default", "beyond")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "wait") {
		t.Fatalf("request beyond max_in_flight and the queue: %v, want ResourceExhausted saying that requests wait", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("request beyond the queue refused after %v, want at once", el)
	}
	if got := metricValue(t, h.reg, ca.MetricRejections, "reason", "overload_in_flight"); got != 1 {
		t.Fatalf("%s{reason=overload_in_flight} = %v, want 1", ca.MetricRejections, got)
	}

	// Each place freed goes to the request that has waited longest.
	// The request whose place was freed ends (nil on errs) while the next
	// is admitted; only a failure is a fault here.
	for _, sa := range order {
		hr.release <- struct{}{}
		timeout := time.After(10 * time.Second)
	admitted:
		for {
			select {
			case got := <-hr.entered:
				if want := spiffe("default", sa); got != want {
					t.Fatalf("place freed went to %s, want %s (first come, first served)", got, want)
				}
				break admitted
			case err := <-errs:
				if err != nil {
					t.Fatalf("a request failed while %s should have been admitted: %v", sa, err)
				}
			case <-timeout:
				t.Fatalf("no queued request admitted after a place freed")
			}
		}
	}
	for range limit {
		hr.release <- struct{}{}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a held or queued request: %v", err)
		}
	}
	if got := metricValue(t, h.reg, ca.MetricRequestsQueued, "", ""); got != 0 {
		t.Fatalf("%s = %v after every request ended, want 0", ca.MetricRequestsQueued, got)
	}
}

// A queued request that does not get a place within limits.queue_wait is
// refused with ResourceExhausted saying how long it waited, counted as
// overload_queue_wait, and leaves the queue; the place it waited for is
// not lost.
func TestQueueWaitIsBounded(t *testing.T) {
	const wait = 300 * time.Millisecond
	hr := newHeldRecorder()
	h := newHarnessWith(t, func(o *ca.ServiceOptions) {
		o.MaxInFlight, o.MaxQueued, o.QueueWait = 1, 4, wait
		hr.Recorder = o.Recorder
		o.Recorder = hr
	})
	held := make(chan error, 1)
	go func() { held <- h.ask(t, "default", "held") }()
	<-hr.entered

	start := time.Now()
	err := h.ask(t, "default", "waiting")
	el := time.Since(start)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "waited") {
		t.Fatalf("request that found no place: %v, want ResourceExhausted saying how long it waited", err)
	}
	if el < wait || el > wait+5*time.Second {
		t.Fatalf("request refused after %v, want after waiting %v", el, wait)
	}
	if got := metricValue(t, h.reg, ca.MetricRejections, "reason", "overload_queue_wait"); got != 1 {
		t.Fatalf("%s{reason=overload_queue_wait} = %v, want 1", ca.MetricRejections, got)
	}
	if got := metricValue(t, h.reg, ca.MetricRequestsQueued, "", ""); got != 0 {
		t.Fatalf("%s = %v after the request gave up, want 0", ca.MetricRequestsQueued, got)
	}
	if _, denied := h.rec.counts(); denied != 0 {
		t.Fatalf("%d denials recorded, want 0: overload refusals are counted, not logged", denied)
	}

	hr.release <- struct{}{}
	if err := <-held; err != nil {
		t.Fatalf("held request: %v", err)
	}
	go func() {
		for range hr.entered {
			hr.release <- struct{}{}
		}
	}()
	if err := h.ask(t, "default", "after"); err != nil {
		t.Fatalf("request after the held one finished: %v", err)
	}
}
