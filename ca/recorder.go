package ca

import (
	"context"
	"crypto/x509"
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
	// ClusterID is, for a caller that could not be authenticated, the
	// served cluster its clusterid header named; empty otherwise.
	ClusterID string
	Code      codes.Code
	Reason    string
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
