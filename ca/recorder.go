package ca

import (
	"context"
	"crypto/x509"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/transitca/transitca/issuer"
)

// Issuance is one certificate about to be returned to a caller.
type Issuance struct {
	Time         time.Time
	Caller       *Caller
	Tier         string
	RequestedTTL time.Duration
	GrantedTTL   time.Duration
	Cert         *x509.Certificate
	Issuer       *issuer.Intermediate
	// RootKeyVersion is the root key version the issuer chains to.
	RootKeyVersion int
}

// Denial is a request that was refused.
type Denial struct {
	Time time.Time
	// Caller is nil when the caller could not be authenticated.
	Caller *Caller
	Code   codes.Code
	Reason string
	// Detail is machine-readable: "peer=<addr> class=<kind>" for one
	// denial, and "count=<n> first=<t1> last=<t2> peer=<addr> class=<kind>"
	// for denials counted beyond the per-peer rate (see DenialLimits). A
	// denial without count=<n> stands for one request.
	Detail string
}

// Recorder keeps the record of every issuance and denial. RecordIssuance
// MUST NOT return nil before the record is durable: the service returns a
// certificate only after it does, and fails the request when it returns an
// error.
type Recorder interface {
	RecordIssuance(ctx context.Context, is *Issuance) error
	RecordDenial(ctx context.Context, d *Denial) error
}

// SlogRecorder records to a structured logger. It is not durable; it is what
// runs when no issuance log is configured.
type SlogRecorder struct{ Log *slog.Logger }

// RecordIssuance logs the issuance.
func (r SlogRecorder) RecordIssuance(ctx context.Context, is *Issuance) error {
	r.Log.InfoContext(ctx, "certificate issued",
		slog.String("serial", SerialHex(is.Cert.SerialNumber)),
		slog.String("spiffe_id", is.Caller.SPIFFEID),
		slog.String("tier", is.Tier),
		slog.Duration("requested_ttl", is.RequestedTTL),
		slog.Duration("granted_ttl", is.GrantedTTL),
		slog.Time("not_after", is.Cert.NotAfter),
		slog.String("issuer", is.Issuer.Fingerprint),
		slog.Int("root_key_version", is.RootKeyVersion),
		slog.String("auth", string(is.Caller.Method)),
		slog.String("cluster", is.Caller.ClusterID))
	return nil
}

// RecordDenial logs the denial.
func (r SlogRecorder) RecordDenial(ctx context.Context, d *Denial) error {
	attrs := []any{slog.String("code", d.Code.String()), slog.String("reason", d.Reason), slog.String("detail", d.Detail)}
	if d.Caller != nil {
		attrs = append(attrs, slog.String("spiffe_id", d.Caller.SPIFFEID), slog.String("auth", string(d.Caller.Method)))
	}
	r.Log.WarnContext(ctx, "certificate request denied", attrs...)
	return nil
}
