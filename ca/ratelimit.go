package ca

import (
	"container/list"
	"sync"
	"time"
)

// tokenBuckets are token buckets keyed by peer address: each holds up to
// burst tokens and refills at rate per second.
// At most max keys are tracked; beyond, new keys share the bucket of
// otherPeers. The caller serializes access.
type tokenBuckets struct {
	rate  float64
	burst int
	max   int
	m     map[string]*peerBucket
}

// peerBucket is a token bucket.
type peerBucket struct {
	tokens float64
	last   time.Time
}

func newTokenBuckets(rate float64, burst, max int) *tokenBuckets {
	return &tokenBuckets{rate: rate, burst: burst, max: max, m: map[string]*peerBucket{}}
}

// tracked reports whether key has a bucket of its own.
func (t *tokenBuckets) tracked(key string) bool {
	_, ok := t.m[key]
	return ok
}

// allow takes a token from key's bucket, if it has one.
func (t *tokenBuckets) allow(key string, now time.Time) bool {
	b, ok := t.m[key]
	if !ok {
		if len(t.m) >= t.max {
			key = otherPeers
			b = t.m[otherPeers]
		}
		if b == nil {
			b = &peerBucket{tokens: float64(t.burst), last: now}
			t.m[key] = b
		}
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(float64(t.burst), b.tokens+el.Seconds()*t.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// forgetFull drops the buckets that have refilled by now: tracking them
// changes nothing.
func (t *tokenBuckets) forgetFull(now time.Time) {
	full := time.Duration(float64(t.burst) / t.rate * float64(time.Second))
	for k, b := range t.m {
		if now.Sub(b.last) >= full {
			delete(t.m, k)
		}
	}
}

// IdentityLimits bound how often one authenticated identity may ask for a
// certificate. The zero value is no limit.
type IdentityLimits struct {
	// PerSecond is the sustained rate of requests per identity.
	PerSecond float64
	// Burst is how many requests an identity may make at once.
	Burst int
	// MaxIdentities caps the identities tracked at once. Only a request
	// that authenticated and whose CSR passed takes a place; with the
	// table full, a new identity takes the place of the one that asked
	// least recently (whose bucket has usually refilled), so that an
	// identity's first request is never refused for want of room.
	MaxIdentities int
}

func (l IdentityLimits) enabled() bool { return l.PerSecond > 0 }

// identityLimiter applies IdentityLimits: one token bucket per identity,
// at most MaxIdentities of them, the least recently used first out.
type identityLimiter struct {
	rate  float64
	burst int
	max   int

	mu  sync.Mutex
	m   map[string]*list.Element // of *identityBucket
	lru *list.List               // front: least recently used
}

// identityBucket is one identity's token bucket.
type identityBucket struct {
	id string
	peerBucket
}

func newIdentityLimiter(l IdentityLimits) *identityLimiter {
	return &identityLimiter{rate: l.PerSecond, burst: l.Burst, max: l.MaxIdentities, m: map[string]*list.Element{}, lru: list.New()}
}

// allow takes a token from id's bucket and reports whether there was one.
// An identity not tracked gets a full bucket, in the place of the least
// recently used one when the table is full.
func (l *identityLimiter) allow(id string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[id]
	if ok {
		l.lru.MoveToBack(e)
	} else {
		if l.lru.Len() >= l.max {
			old := l.lru.Remove(l.lru.Front()).(*identityBucket)
			delete(l.m, old.id)
		}
		e = l.lru.PushBack(&identityBucket{id: id, peerBucket: peerBucket{tokens: float64(l.burst), last: now}})
		l.m[id] = e
	}
	b := e.Value.(*identityBucket)
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(float64(l.burst), b.tokens+el.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}
