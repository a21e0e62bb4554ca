package ca

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/tap"
	pb "istio.io/api/security/v1alpha1"
)

// DefaultQueueWait is how long a CreateCertificate call waits in the
// admission queue when ServiceOptions.QueueWait is zero.
const DefaultQueueWait = 10 * time.Second

// admission bounds the CreateCertificate calls in flight, counted from
// the moment their headers arrive (before gRPC starts a goroutine for the
// call and allocates the message it announces) to the end of the stream.
// Beyond limit (if limit > 0) a call waits in a FIFO queue of at most
// maxQueued calls for at most wait; a call beyond the queue is refused at
// once with ResourceExhausted, and so is one that waited in vain
// (istio-agent retries both with backoff). A restart storm so costs its
// callers time rather than failures, while what the daemon holds stays
// bounded: limit calls in progress, and maxQueued calls that hold a
// stream and their message but do nothing else.
//
// The place is taken in the tap handle, which runs on the connection's
// reader and must not block; the wait happens in the call's own goroutine
// (see Service.CreateCertificate). A freed place goes straight to the
// call at the head of the queue.
type admission struct {
	limit     int
	maxQueued int
	wait      time.Duration
	queued    prometheus.Gauge

	mu      sync.Mutex
	running int        // calls holding a place
	queue   *list.List // of *ticket, first arrived at the front
}

// ticket is one call's claim on a place.
type ticket struct {
	ready   chan struct{} // closed when a queued ticket is granted; nil if granted on arrival
	el      *list.Element // in the queue while waiting; guarded by admission.mu
	granted bool          // holds a place; guarded by admission.mu
}

// ticketKey is the context key of a call's ticket.
type ticketKey struct{}

func newAdmission(limit, maxQueued int, wait time.Duration, queued prometheus.Gauge) *admission {
	if wait <= 0 {
		wait = DefaultQueueWait
	}
	return &admission{limit: max(limit, 0), maxQueued: max(maxQueued, 0), wait: wait, queued: queued, queue: list.New()}
}

// tap returns the server's tap handle: it claims a place (or one in the
// queue) for every CreateCertificate call, calling refused for a call
// refused at once, and bounds every call by RequestTimeout, its message
// read included, so that a client trickling its request cannot hold a
// place forever. Other methods (the health service) are not limited, so
// that readiness is answered under load. Refused calls are counted, not
// recorded in the log: recording them would let a flood decide the log's
// growth.
func (a *admission) tap(refused func()) tap.ServerInHandle {
	method := "/" + pb.IstioCertificateService_ServiceDesc.ServiceName + "/CreateCertificate"
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if info.FullMethodName != method {
			return ctx, nil
		}
		var t *ticket
		if a.limit > 0 {
			var err error
			if t, err = a.enter(); err != nil {
				refused()
				return nil, statusOf(ctx, slog.Default(), err).Err()
			}
		}
		ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
		if t != nil {
			ctx = context.WithValue(ctx, ticketKey{}, t)
		}
		context.AfterFunc(ctx, func() {
			cancel()
			if t != nil {
				a.leave(t)
			}
		})
		return ctx, nil
	}
}

// enter takes a free place, or a place in the queue, or refuses.
func (a *admission) enter() (*ticket, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running < a.limit && a.queue.Len() == 0 {
		a.running++
		return &ticket{granted: true}, nil
	}
	if a.queue.Len() >= a.maxQueued {
		return nil, fmt.Errorf("%w: the certificate authority is handling %d requests and %d more wait; retry later",
			ErrOverloaded, a.limit, a.queue.Len())
	}
	t := &ticket{ready: make(chan struct{})}
	t.el = a.queue.PushBack(t)
	a.queued.Set(float64(a.queue.Len()))
	return t, nil
}

// leave gives up t at the end of its call: its place goes to the call
// that has waited longest, or it leaves the queue.
func (a *admission) leave(t *ticket) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case t.granted:
		t.granted = false
		if front := a.queue.Front(); front != nil {
			next := a.queue.Remove(front).(*ticket)
			next.el, next.granted = nil, true
			close(next.ready)
			a.queued.Set(float64(a.queue.Len()))
			return
		}
		a.running--
	case t.el != nil:
		a.queue.Remove(t.el)
		t.el = nil
		a.queued.Set(float64(a.queue.Len()))
	}
}

// await waits until the call of ctx holds a place. A call that was
// queued and gets none within the wait leaves the queue with
// ErrOverloaded; one whose context ends first gets the context's error.
func (a *admission) await(ctx context.Context) error {
	t, _ := ctx.Value(ticketKey{}).(*ticket)
	if t == nil || t.ready == nil {
		return nil
	}
	timer := time.NewTimer(a.wait)
	defer timer.Stop()
	select {
	case <-t.ready:
		return nil
	case <-timer.C:
	case <-ctx.Done():
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if t.granted {
		return ctx.Err()
	}
	if t.el != nil {
		a.queue.Remove(t.el)
		t.el = nil
		a.queued.Set(float64(a.queue.Len()))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: waited %v for one of the %d places of the certificate authority; retry later", ErrOverloaded, a.wait, a.limit)
}
