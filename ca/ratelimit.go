package ca

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	pb "istio.io/api/security/v1alpha1"
)

// tokenBuckets are token buckets keyed by a string (a peer address, an
// identity): each holds up to burst tokens and refills at rate per second.
// At most max keys are tracked; beyond, new keys share the bucket of
// otherPeers. The caller serializes access.
type tokenBuckets struct {
	rate  float64
	burst int
	max   int
	m     map[string]*peerBucket
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
	// MaxIdentities caps the identities tracked at once; beyond it, new
	// identities share one bucket.
	MaxIdentities int
}

func (l IdentityLimits) enabled() bool { return l.PerSecond > 0 }

// identityLimiter applies IdentityLimits.
type identityLimiter struct {
	mu      sync.Mutex
	buckets *tokenBuckets
	swept   time.Time
}

func newIdentityLimiter(l IdentityLimits) *identityLimiter {
	return &identityLimiter{buckets: newTokenBuckets(l.PerSecond, l.Burst, l.MaxIdentities)}
}

// allow reports whether id may make a request now.
func (l *identityLimiter) allow(id string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		l.buckets.forgetFull(now)
		l.swept = now
	}
	return l.buckets.allow(id, now)
}

// admit bounds the CreateCertificate calls in flight, counted from the
// moment their headers arrive (before gRPC starts a goroutine for the
// call and allocates the message it announces) to the end of the stream:
// beyond limit (if limit > 0) a call is refused at once with
// ResourceExhausted, instead of queueing without bound (istio-agent
// retries with backoff). Every admitted call must be done within
// RequestTimeout, its message read included, so that a client trickling
// its request cannot hold a place forever. Other methods (the health
// service) are not limited, so that readiness is answered under load.
// Refused calls are counted, not recorded in the log: recording them would
// let a flood decide the log's growth.
func admit(limit int, refused func()) tap.ServerInHandle {
	sem := make(chan struct{}, max(limit, 1))
	method := "/" + pb.IstioCertificateService_ServiceDesc.ServiceName + "/CreateCertificate"
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if info.FullMethodName != method {
			return ctx, nil
		}
		if limit > 0 {
			select {
			case sem <- struct{}{}:
			default:
				refused()
				return nil, status.Errorf(codes.ResourceExhausted, "the certificate authority is handling %d requests; retry later", limit)
			}
		}
		ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
		context.AfterFunc(ctx, func() {
			cancel()
			if limit > 0 {
				<-sem
			}
		})
		return ctx, nil
	}
}
