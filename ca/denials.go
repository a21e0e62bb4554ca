package ca

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
)

// DenialLimits bound how many log entries the denials of one peer can
// write. Denials within the rate are recorded one entry each, as they
// happen; beyond it they are counted and written as aggregated denial
// entries once per Window, so the log still accounts for every request
// without letting a caller decide how much it grows.
//
// Counted denials are grouped by what the CA established itself: the peer
// (an IPv4 address or an IPv6 /64), the code and class of the denial and,
// for a caller that authenticated, the identity that authenticated
// (Caller.CallerID) and its cluster. Nothing a caller merely asserts
// splits a group: not the identity it asks to impersonate, not the
// cluster an unauthenticated caller claims. Within a group each distinct
// reason is counted apart, up to DenialReasonsKept of them, and written as
// an entry of its own, so that a neighbour behind the same address cannot
// replace a victim's reason with its own; denials with further reasons are
// counted in one more entry. The zero value disables the limit: every
// denial is recorded individually.
type DenialLimits struct {
	// PerPeerPerSecond is the sustained rate of individually recorded
	// denials per peer address (an IPv4 address or an IPv6 /64).
	PerPeerPerSecond float64
	// Burst is how many denials a peer may have recorded individually at
	// once before the rate applies.
	Burst int
	// Window is how often the counted denials are written, one entry per
	// group and reason; also the last ones at Close.
	Window time.Duration
	// MaxPeers caps the peers tracked at once; beyond it, new peers share
	// one bucket and are counted under the peer name "other". It also
	// bounds the memory of counting: at most 4*MaxPeers distinct reasons
	// are held at once. With that many held, an unauthenticated caller's
	// new group joins the peer "other"; an authenticated caller's never
	// does: the oldest groups are written at once, as they would have
	// been at the end of the window, to make room.
	MaxPeers int
}

// DenialReasonsKept is how many distinct reasons the denials counted in
// one group keep, each written with its own count; denials with further
// reasons are counted together.
const DenialReasonsKept = 8

func (l DenialLimits) enabled() bool { return l.PerPeerPerSecond > 0 }

// otherPeers names the shared bucket of peers beyond DenialLimits.MaxPeers.
const otherPeers = "other"

// denialKey is what the denials counted in one group have in common: only
// what the CA established, never a string the caller chose alone.
type denialKey struct {
	peer     string
	code     codes.Code
	class    string
	callerID string // Caller.CallerID(): the identity that authenticated; "" for a caller that did not
	cluster  string // the authenticated caller's cluster
}

// denialTally counts the denials of one group with one reason.
type denialTally struct {
	reason      string
	n           int
	first, last time.Time
	caller      *Caller // of the first denial
	cluster     string  // Denial.ClusterID of the first; "" once two differ
}

func newTally(d *Denial, caller *Caller) *denialTally {
	return &denialTally{reason: d.Reason, n: 1, first: d.Time, last: d.Time, caller: caller, cluster: d.ClusterID}
}

func (t *denialTally) add(d *Denial) {
	t.n++
	t.first, t.last = minTime(t.first, d.Time), maxTime(t.last, d.Time)
	if d.ClusterID != t.cluster {
		t.cluster = ""
	}
}

// merge adds the counts of o, a tally of the same reason.
func (t *denialTally) merge(o *denialTally) {
	t.n += o.n
	t.first, t.last = minTime(t.first, o.first), maxTime(t.last, o.last)
	if o.cluster != t.cluster {
		t.cluster = ""
	}
}

// denialGroup is what is counted of one key: up to DenialReasonsKept
// distinct reasons, first come first kept, and the denials whose reason
// found no room.
type denialGroup struct {
	key     denialKey
	reasons []*denialTally
	rest    *denialTally // nil until a reason finds no room; its reason is unused
	elem    *list.Element
}

// denialLimiter records denials through a Recorder within DenialLimits and
// counts the rest in groups (see DenialLimits). Its memory is bounded
// whatever the flood: peers by MaxPeers, groups and reasons by 4*MaxPeers
// (plus one group per code and class for the peer "other"), each reason
// by MaxReasonBytes.
type denialLimiter struct {
	rec        Recorder
	limits     DenialLimits
	metrics    *Metrics
	log        *slog.Logger
	now        func() time.Time
	maxReasons int

	mu      sync.Mutex
	peers   *tokenBuckets
	pending map[denialKey]*denialGroup
	order   *list.List // of *denialGroup, oldest first
	reasons int        // distinct reasons held in pending
	closed  bool
	stop    chan struct{}
	done    chan struct{}
}

// newDenialLimiter starts a limiter that flushes every limits.Window until
// close.
func newDenialLimiter(rec Recorder, limits DenialLimits, metrics *Metrics, log *slog.Logger, now func() time.Time) *denialLimiter {
	l := &denialLimiter{
		rec: rec, limits: limits, metrics: metrics, log: log, now: now, maxReasons: 4 * limits.MaxPeers,
		peers:   newTokenBuckets(limits.PerPeerPerSecond, limits.Burst, limits.MaxPeers),
		pending: map[denialKey]*denialGroup{}, order: list.New(),
		stop: make(chan struct{}), done: make(chan struct{}),
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

// record records d individually if its peer (peerAddr, from peerKey) is
// within the rate, and counts it otherwise. class is the kind of denial
// (the rejection metric's reason); it must come from a fixed set, never
// from the request. d.Caller must be nil unless the caller authenticated.
// Any caller that refuses requests can record through it: the
// CreateCertificate service, the admin API.
func (l *denialLimiter) record(ctx context.Context, d *Denial, peerAddr, class string) error {
	l.mu.Lock()
	if l.closed || l.peers.allow(peerAddr, d.Time) {
		l.mu.Unlock()
		return l.rec.RecordDenial(ctx, d)
	}
	k := denialKey{peer: peerAddr, code: d.Code, class: class}
	if d.Caller != nil {
		k.callerID, k.cluster = d.Caller.CallerID(), d.Caller.ClusterID
	}
	if !l.peers.tracked(peerAddr) {
		k.peer = otherPeers
	}
	evicted := l.count(k, d)
	l.mu.Unlock()
	l.metrics.denialsAggregated.WithLabelValues(class).Inc()
	if len(evicted) == 0 {
		return nil
	}
	// The denials of other requests are written here: not on this
	// request's deadline.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RequestTimeout)
	defer cancel()
	return l.write(wctx, evicted)
}

// count adds d to the group of k and returns the groups it took out to
// make room, to be written. The caller holds l.mu.
func (l *denialLimiter) count(k denialKey, d *Denial) []*denialGroup {
	g, ok := l.pending[k]
	var evicted []*denialGroup
	if !ok && l.reasons >= l.maxReasons {
		if k.callerID == "" {
			// No identity to keep: the group of the peers beyond the
			// cap, one per code and class, takes it.
			k.peer = otherPeers
			g, ok = l.pending[k]
		} else {
			// An authenticated caller is never folded away: the oldest
			// groups are written now to make room.
			for l.reasons >= l.maxReasons && l.order.Len() > 0 {
				evicted = append(evicted, l.remove(l.order.Front().Value.(*denialGroup)))
			}
		}
	}
	if !ok {
		g = &denialGroup{key: k}
		g.elem = l.order.PushBack(g)
		l.pending[k] = g
	}
	for _, t := range g.reasons {
		if t.reason == d.Reason {
			t.add(d)
			return evicted
		}
	}
	if len(g.reasons) == 0 || len(g.reasons) < DenialReasonsKept && l.reasons < l.maxReasons {
		g.reasons = append(g.reasons, newTally(d, d.Caller))
		l.reasons++
		return evicted
	}
	if g.rest == nil {
		g.rest = newTally(d, authenticatedCaller(d.Caller))
	} else {
		g.rest.add(d)
	}
	return evicted
}

// remove takes g out of the pending groups. The caller holds l.mu.
func (l *denialLimiter) remove(g *denialGroup) *denialGroup {
	l.order.Remove(g.elem)
	delete(l.pending, g.key)
	l.reasons -= len(g.reasons)
	return g
}

// authenticatedCaller is c as it authenticated: for an impersonation, the
// node agent itself rather than the identity it asked for.
func authenticatedCaller(c *Caller) *Caller {
	if c == nil || c.Impersonator == "" {
		return c
	}
	a := *c
	a.SPIFFEID, a.Impersonator = c.Impersonator, ""
	a.Namespace, a.ServiceAccount = "", ""
	if _, ns, sa, err := ParseSPIFFEID(c.Impersonator); err == nil {
		a.Namespace, a.ServiceAccount = ns, sa
	}
	return &a
}

// flush writes the groups counted since the last flush, one aggregated
// denial entry per reason kept and one for the rest, and forgets peers
// whose bucket has refilled. Counts whose entry could not be written are
// kept for the next flush, as far as the bounds allow.
func (l *denialLimiter) flush(ctx context.Context) error {
	l.mu.Lock()
	var groups []*denialGroup
	for e := l.order.Front(); e != nil; e = e.Next() {
		groups = append(groups, e.Value.(*denialGroup))
	}
	l.pending, l.order, l.reasons = map[denialKey]*denialGroup{}, list.New(), 0
	l.peers.forgetFull(l.now())
	l.mu.Unlock()
	return l.write(ctx, groups)
}

// write records the aggregated entries of groups. A tally whose entry
// could not be written is counted again, as far as the bounds allow; what
// does not fit is logged, so that its identity and count are not lost.
func (l *denialLimiter) write(ctx context.Context, groups []*denialGroup) error {
	var errs []error
	for _, g := range groups {
		tallies := g.reasons
		if g.rest != nil {
			tallies = append(slices.Clip(tallies), g.rest)
		}
		for _, t := range tallies {
			if err := l.rec.RecordDenial(ctx, l.entry(g, t)); err != nil {
				errs = append(errs, err)
				l.keep(ctx, g.key, t, t == g.rest, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("record aggregated denials: %w", errs[0])
	}
	return nil
}

// entry is the aggregated denial of tally t of g.
func (l *denialLimiter) entry(g *denialGroup, t *denialTally) *Denial {
	k := g.key
	between := fmt.Sprintf("%d denials (%s) from %s between %s and %s, beyond the rate of %g per second per peer",
		t.n, k.class, k.peer, t.first.UTC().Format(time.RFC3339Nano), t.last.UTC().Format(time.RFC3339Nano), l.limits.PerPeerPerSecond)
	reason := between + "; each said: " + t.reason
	if t == g.rest {
		reason = fmt.Sprintf("%s; their reasons were not kept (the %d kept are in entries of their own)", between, len(g.reasons))
	}
	return &Denial{
		Time: t.last, Caller: t.caller, ClusterID: t.cluster, Code: k.code,
		Reason: boundMessage(reason),
		Detail: fmt.Sprintf("count=%d first=%s last=%s peer=%s class=%s", t.n,
			t.first.UTC().Format(time.RFC3339Nano), t.last.UTC().Format(time.RFC3339Nano), k.peer, k.class),
	}
}

// keep counts a tally whose entry could not be written back into the
// pending groups, for the next flush: into its group if that is pending,
// else into a new group while the bound allows. What does not fit goes to
// the daemon's log.
func (l *denialLimiter) keep(ctx context.Context, k denialKey, t *denialTally, rest bool, err error) {
	l.mu.Lock()
	kept := !l.closed && l.merge(k, t, rest)
	l.mu.Unlock()
	attrs := []any{slog.Int("count", t.n), slog.String("peer", k.peer), slog.String("class", k.class),
		slog.String("code", k.code.String()), slog.String("caller", k.callerID), slog.Any("error", err)}
	if kept {
		l.log.ErrorContext(ctx, "record aggregated denials; kept for the next window", attrs...)
		return
	}
	l.log.ErrorContext(ctx, "record aggregated denials; no room to keep them, counted here only",
		append(attrs, slog.String("reason", t.reason), slog.Time("first", t.first), slog.Time("last", t.last))...)
}

// merge adds t to the pending group of k and reports whether there was
// room. The caller holds l.mu.
func (l *denialLimiter) merge(k denialKey, t *denialTally, rest bool) bool {
	g, ok := l.pending[k]
	if !ok {
		if l.reasons >= l.maxReasons {
			return false
		}
		g = &denialGroup{key: k}
		g.elem = l.order.PushFront(g)
		l.pending[k] = g
	}
	if !rest {
		for _, cur := range g.reasons {
			if cur.reason == t.reason {
				cur.merge(t)
				return true
			}
		}
		if len(g.reasons) == 0 || len(g.reasons) < DenialReasonsKept && l.reasons < l.maxReasons {
			g.reasons = append(g.reasons, t)
			l.reasons++
			return true
		}
		t = &denialTally{n: t.n, first: t.first, last: t.last, caller: authenticatedCaller(t.caller), cluster: t.cluster}
	}
	if g.rest == nil {
		g.rest = t
	} else {
		g.rest.merge(t)
	}
	return true
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
