package ca

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// DefaultAdminCallTimeout is how long an admin call may last when
// AdminPort.CallTimeout is not set.
const DefaultAdminCallTimeout = 10 * time.Minute

// Keepalive of the admin port: a connection with nothing received for
// AdminKeepaliveTime is pinged, and closed when the ping is not answered
// within AdminKeepaliveTimeout (a peer that vanished without closing).
const (
	AdminKeepaliveTime    = 30 * time.Second
	AdminKeepaliveTimeout = 10 * time.Second
)

// adminRecordTimeout bounds the recording of one admin call, which runs
// whatever became of the caller's context.
const adminRecordTimeout = 30 * time.Second

// Reasons of MetricAdminRefused.
const (
	adminUnauthenticated   = "unauthenticated"   // no admin client certificate, or one that does not verify
	adminPermissionDenied  = "permission_denied" // an authenticated caller the call is not allowed to
	adminAuthError         = "auth_error"        // authorization failed for another reason
	adminUnknownMethod     = "unknown_method"    // no such service or method, or a malformed method name
	adminMalformed         = "malformed"         // the request message could not be read
	adminOversize          = "oversize"          // the request message is beyond the size limit
	adminDenialClassPrefix = "admin_"            // of the denial class a refusal is recorded under
)

var adminRefusedReasons = []string{adminUnauthenticated, adminPermissionDenied, adminAuthError, adminUnknownMethod, adminMalformed, adminOversize}

func newAdminRefused() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricAdminRefused,
		Help: "Admin API calls refused, by reason: unauthenticated, permission_denied, auth_error (by the authorizer); " +
			"unknown_method, malformed (the request message could not be read), oversize (beyond the message limit), " +
			"refused by gRPC before any handler ran.",
	}, []string{"reason"})
}

// observeAdminRefused counts one refused admin call. A nil Metrics counts
// nothing.
func (m *Metrics) observeAdminRefused(reason string) {
	if m == nil {
		return
	}
	m.adminRefused.WithLabelValues(reason).Inc()
}

// LimitedDenials records denials within per-peer limits, counting those
// beyond into aggregated entries (see DenialLimits). *Service is one.
type LimitedDenials interface {
	RecordLimited(ctx context.Context, d *Denial, class string) error
}

// RecordLimited records d, a denial of class, under the service's
// DenialLimits: the denials of one peer share one budget, whichever port
// they come from.
func (s *Service) RecordLimited(ctx context.Context, d *Denial, class string) error {
	return s.recordDenial(ctx, d, class)
}

// AdminPort sets the limits and the accounting of the admin API's port.
type AdminPort struct {
	// CallTimeout ends every admin call, a Backup stream included, this
	// long after it began, or earlier when the caller asks for less. 0 is
	// DefaultAdminCallTimeout. A connection is also closed at twice this
	// age (GOAWAY at CallTimeout, then as long for the calls in flight),
	// so that what a caller that stopped reading left queued is freed.
	CallTimeout time.Duration
	// Metrics counts refused calls (MetricAdminRefused); nil counts
	// nothing.
	Metrics *Metrics
	// Denials, when set, records the calls the authorizer refuses as
	// denials under its per-peer limits: within them one entry each,
	// beyond them counted into aggregated entries, so that callers
	// without admin authority cannot decide how much the log grows. Nil
	// records each refused call as an admin entry.
	Denials LimitedDenials
}

// adminPort is the admin server's refusal accounting, call deadlines and
// the gRPC hooks that carry them.
type adminPort struct {
	authz   *AdminAuthorizer
	timeout time.Duration
	metrics *Metrics
	denials LimitedDenials
	known   map[string]bool // full method names served
}

func newAdminPort(authz *AdminAuthorizer, o AdminPort) *adminPort {
	p := &adminPort{authz: authz, timeout: o.CallTimeout, metrics: o.Metrics, denials: o.Denials, known: map[string]bool{}}
	if p.timeout <= 0 {
		p.timeout = DefaultAdminCallTimeout
	}
	sd := adminv1.AdminService_ServiceDesc
	for _, m := range sd.Methods {
		p.known["/"+sd.ServiceName+"/"+m.MethodName] = true
	}
	for _, s := range sd.Streams {
		p.known["/"+sd.ServiceName+"/"+s.StreamName] = true
	}
	return p
}

// serverOptions are the admin server's call deadline, keepalive and
// refusal accounting. They come after connectionLimits, whose keepalive
// parameters they replace.
func (p *adminPort) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     IdleTimeout,
			MaxConnectionAge:      p.timeout,
			MaxConnectionAgeGrace: p.timeout,
			Time:                  AdminKeepaliveTime,
			Timeout:               AdminKeepaliveTimeout,
		}),
		grpc.InTapHandle(p.tap),
		grpc.StatsHandler(adminStats{p}),
	}
}

// tap sees every stream the admin port accepts, before gRPC looks its
// method up: it counts those for no method served, and gives every call
// its deadline. The deadline is on the stream's own context, the one
// gRPC's transport waits on, so that a send blocked on a caller that
// stopped reading ends with it.
func (p *adminPort) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if !p.known[info.FullMethodName] {
		p.metrics.observeAdminRefused(adminUnknownMethod)
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	// The stream's end cancels ctx, which runs cancel: the timer is
	// released then, not only at the deadline.
	context.AfterFunc(ctx, cancel)
	return ctx, nil
}

// refuse answers a call the authorizer refused, counts it, and records it
// under the per-peer limits (as an admin entry when there are none).
func (p *adminPort) refuse(ctx context.Context, caller *Caller, method string, req any, err error) error {
	a := p.authz
	st := adminStatusOf(ctx, a.Logger, err)
	if r := rpcSeenFrom(ctx); r != nil {
		r.refused.Store(true)
	}
	reason := adminAuthError
	switch st.Code() {
	case codes.Unauthenticated:
		reason = adminUnauthenticated
	case codes.PermissionDenied:
		reason = adminPermissionDenied
	}
	p.metrics.observeAdminRefused(reason)
	rctx, cancel := recordContext(ctx)
	defer cancel()
	if p.denials == nil {
		_ = a.audit(rctx, caller, method, req, st)
		return st.Err()
	}
	d := &Denial{Time: time.Now(), Caller: caller, Code: st.Code(),
		Reason: boundMessage("admin call " + method[strings.LastIndex(method, "/")+1:] + " refused: " + st.Message())}
	if err := p.denials.RecordLimited(rctx, d, adminDenialClassPrefix+reason); err != nil {
		a.Logger.ErrorContext(ctx, "record refused admin call", slog.String("method", method), slog.Any("error", err))
	}
	return st.Err()
}

// recordContext is the context an admin call is recorded under: ctx's
// values (the peer) without its cancellation, so that a call whose caller
// went away or whose deadline passed is recorded all the same, bounded by
// adminRecordTimeout.
func recordContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), adminRecordTimeout)
}

// rpcSeen is what adminStats learns of one call.
type rpcSeen struct {
	received atomic.Bool // a request message was read
	refused  atomic.Bool // the authorizer refused the call
}

type rpcSeenKey struct{}

func rpcSeenFrom(ctx context.Context) *rpcSeen {
	r, _ := ctx.Value(rpcSeenKey{}).(*rpcSeen)
	return r
}

// adminStats watches every call of a method served on the admin port
// to its end: one that fails before any request message was read, and
// not because the authorizer refused it, was refused by gRPC reading the
// message: beyond the size limit (ResourceExhausted), or not a message
// it can read (not protobuf, an unknown compression, no message at all).
type adminStats struct{ p *adminPort }

func (adminStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, rpcSeenKey{}, &rpcSeen{})
}

func (h adminStats) HandleRPC(ctx context.Context, s stats.RPCStats) {
	r := rpcSeenFrom(ctx)
	if r == nil {
		return
	}
	switch s := s.(type) {
	case *stats.InPayload:
		r.received.Store(true)
	case *stats.End:
		if s.Error == nil || r.received.Load() || r.refused.Load() {
			return
		}
		switch status.Code(s.Error) {
		case codes.ResourceExhausted:
			h.p.metrics.observeAdminRefused(adminOversize)
		case codes.Internal, codes.Unimplemented:
			h.p.metrics.observeAdminRefused(adminMalformed)
		}
	}
}

func (adminStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (adminStats) HandleConn(context.Context, stats.ConnStats) {}
