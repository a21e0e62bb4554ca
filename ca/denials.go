package ca

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
)

// DenialLimits bound how many log entries the denials of one peer can
// write. Denials within the rate are recorded one entry each, as they
// happen; beyond it they are counted per (peer, code, class of denial,
// caller identity) and written as one aggregated denial entry per Window,
// so the log still accounts for every request without letting a caller
// decide how much it grows. The zero value disables the limit: every
// denial is recorded individually.
type DenialLimits struct {
	// PerPeerPerSecond is the sustained rate of individually recorded
	// denials per peer address (an IPv4 address or an IPv6 /64).
	PerPeerPerSecond float64
	// Burst is how many denials a peer may have recorded individually at
	// once before the rate applies.
	Burst int
	// Window is how often the counted denials are written, one entry per
	// kind and peer; also the last ones at Close.
	Window time.Duration
	// MaxPeers caps the peers tracked at once; beyond it, new peers share
	// one bucket and are aggregated under the peer name "other".
	MaxPeers int
}

func (l DenialLimits) enabled() bool { return l.PerPeerPerSecond > 0 }

// otherPeers names the shared bucket of peers beyond DenialLimits.MaxPeers.
const otherPeers = "other"

// denialKey is what aggregated denials have in common.
type denialKey struct {
	peer     string
	code     codes.Code
	class    string
	spiffeID string
	callerID string // differs from spiffeID for an impersonation
	cluster  string // claimed by an unauthenticated caller
}

// denialCount is the aggregate of denials of one key.
type denialCount struct {
	n           int
	first, last time.Time
	caller      *Caller
	reason      string // the reason of the first denial counted
}

// peerBucket is a token bucket of individually recorded denials.
type peerBucket struct {
	tokens float64
	last   time.Time
}

// denialLimiter records denials through a Recorder within DenialLimits and
// aggregates the rest.
type denialLimiter struct {
	rec     Recorder
	limits  DenialLimits
	metrics *Metrics
	log     *slog.Logger
	now     func() time.Time

	mu      sync.Mutex
	peers   *tokenBuckets
	pending map[denialKey]*denialCount
	closed  bool
	stop    chan struct{}
	done    chan struct{}
}

// newDenialLimiter starts a limiter that flushes every limits.Window until
// close.
func newDenialLimiter(rec Recorder, limits DenialLimits, metrics *Metrics, log *slog.Logger, now func() time.Time) *denialLimiter {
	l := &denialLimiter{
		rec: rec, limits: limits, metrics: metrics, log: log, now: now,
		peers:   newTokenBuckets(limits.PerPeerPerSecond, limits.Burst, limits.MaxPeers),
		pending: map[denialKey]*denialCount{},
		stop:    make(chan struct{}), done: make(chan struct{}),
	}
	go l.run()
	return l
}

func (l *denialLimiter) run() {
	defer close(l.done)
	t := time.NewTicker(l.limits.Window)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), l.limits.Window)
			_ = l.flush(ctx)
			cancel()
		}
	}
}

// record records d individually if its peer is within the rate, and
// counts it otherwise. class is the kind of denial (the rejection metric's
// reason).
func (l *denialLimiter) record(ctx context.Context, d *Denial, peerAddr, class string) error {
	l.mu.Lock()
	if l.closed || l.peers.allow(peerAddr, d.Time) {
		l.mu.Unlock()
		return l.rec.RecordDenial(ctx, d)
	}
	k := denialKey{peer: peerAddr, code: d.Code, class: class, cluster: d.ClusterID}
	if d.Caller != nil {
		k.spiffeID, k.callerID = d.Caller.SPIFFEID, d.Caller.CallerID()
	}
	if !l.peers.tracked(peerAddr) {
		k.peer = otherPeers
	}
	c, ok := l.pending[k]
	if !ok && len(l.pending) >= 4*l.limits.MaxPeers {
		k = denialKey{peer: otherPeers, code: d.Code, class: class}
		c, ok = l.pending[k]
	}
	if !ok {
		c = &denialCount{first: d.Time, last: d.Time, caller: d.Caller, reason: d.Reason}
		l.pending[k] = c
	}
	c.n++
	c.first, c.last = minTime(c.first, d.Time), maxTime(c.last, d.Time)
	if k.spiffeID == "" {
		c.caller = nil
	}
	l.mu.Unlock()
	l.metrics.denialsAggregated.WithLabelValues(class).Inc()
	return nil
}

// flush writes one aggregated denial entry per key counted since the last
// flush, and forgets peers whose bucket has refilled. Counts whose entry
// could not be written are kept for the next flush.
func (l *denialLimiter) flush(ctx context.Context) error {
	l.mu.Lock()
	pending := l.pending
	l.pending = map[denialKey]*denialCount{}
	l.peers.forgetFull(l.now())
	l.mu.Unlock()
	var errs []error
	for k, c := range pending {
		d := &Denial{
			Time: c.last, Caller: c.caller, ClusterID: k.cluster, Code: k.code,
			Reason: boundMessage(fmt.Sprintf("%d denials (%s) from %s between %s and %s, beyond the rate of %g per second per peer; the first said: %s",
				c.n, k.class, k.peer, c.first.UTC().Format(time.RFC3339Nano), c.last.UTC().Format(time.RFC3339Nano),
				l.limits.PerPeerPerSecond, c.reason)),
			Detail: fmt.Sprintf("count=%d first=%s last=%s peer=%s class=%s", c.n,
				c.first.UTC().Format(time.RFC3339Nano), c.last.UTC().Format(time.RFC3339Nano), k.peer, k.class),
		}
		if err := l.rec.RecordDenial(ctx, d); err != nil {
			errs = append(errs, err)
			l.log.ErrorContext(ctx, "record aggregated denials; kept for the next window",
				slog.Int("count", c.n), slog.String("peer", k.peer), slog.String("class", k.class), slog.Any("error", err))
			l.mu.Lock()
			if cur, ok := l.pending[k]; ok {
				cur.n += c.n
				cur.first, cur.last = minTime(cur.first, c.first), maxTime(cur.last, c.last)
			} else {
				l.pending[k] = c
			}
			l.mu.Unlock()
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("record aggregated denials: %w", errs[0])
	}
	return nil
}

// close stops the flusher and writes what is still counted. After close,
// denials are recorded individually.
func (l *denialLimiter) close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	return l.flush(ctx)
}

// peerKey is the address a caller's denials are counted under: its IP
// address without the port, an IPv6 address as its /64 (one host usually
// holds a whole /64), or the address text as given when it is not IP.
func peerKey(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	s := p.Addr.String()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		host, _, err := net.SplitHostPort(s)
		if err != nil {
			host = s
		}
		return strings.ToValidUTF8(cutUTF8(host, MaxQuotedBytes), "?")
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		return netip.PrefixFrom(a, 64).Masked().String()
	}
	return a.String()
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
