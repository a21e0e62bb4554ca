package ca

import (
	"context"
	"fmt"
	"sync"
)

// reviewFlights lets concurrent requests with one token share one
// TokenReview: the first starts it, the others wait for its answer. A
// review runs detached from any one caller, so that the caller who
// started it giving up does not fail the others; it is canceled when every
// caller waiting for it has given up.
type reviewFlights struct {
	mu      sync.Mutex
	flights map[reviewKey]*flight
}

// flight is one review in progress.
type flight struct {
	done    chan struct{} // closed when id and err are set
	id      *reviewedIdentity
	err     error
	waiters int
	cancel  context.CancelFunc
}

func newReviewFlights() *reviewFlights {
	return &reviewFlights{flights: make(map[reviewKey]*flight)}
}

// do returns the outcome of review for key: of the one in flight, if any
// (shared is then true), or else of a new one. review gets a context
// that keeps ctx's values but not its cancellation. If ctx ends first, do
// returns an error that wraps ErrUnavailable and ctx's error.
func (g *reviewFlights) do(ctx context.Context, key reviewKey, review func(context.Context) (*reviewedIdentity, error)) (id *reviewedIdentity, shared bool, err error) {
	g.mu.Lock()
	f, shared := g.flights[key]
	if !shared {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel}
		g.flights[key] = f
		go g.run(fctx, key, f, review)
	}
	f.waiters++
	g.mu.Unlock()

	select {
	case <-f.done:
		return f.id, shared, f.err
	case <-ctx.Done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if f.waiters--; f.waiters == 0 {
		// No one waits for this review any more: stop it, and let the next
		// request with the token start afresh.
		f.cancel()
		if g.flights[key] == f {
			delete(g.flights, key)
		}
	}
	return nil, shared, fmt.Errorf("%w: tokenreview: %w", ErrUnavailable, ctx.Err())
}

func (g *reviewFlights) run(ctx context.Context, key reviewKey, f *flight, review func(context.Context) (*reviewedIdentity, error)) {
	id, err := review(ctx)
	g.mu.Lock()
	if g.flights[key] == f {
		delete(g.flights, key)
	}
	f.id, f.err = id, err
	g.mu.Unlock()
	close(f.done)
	f.cancel()
}

// reviewSlots bounds the TokenReviews in flight toward one API server. A
// restart storm's distinct tokens queue here rather than on the API
// server, whose priority and fairness would refuse the excess (429).
type reviewSlots chan struct{}

// acquire takes a slot, or fails when ctx ends first.
func (s reviewSlots) acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: tokenreview: waiting for a free review slot: %w", ErrUnavailable, ctx.Err())
	}
}

func (s reviewSlots) release() { <-s }
