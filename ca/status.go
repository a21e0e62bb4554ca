package ca

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

// toStatus is the one place where an error becomes a gRPC status. The
// caller's mistakes (Unauthenticated, PermissionDenied, InvalidArgument) say
// exactly what was wrong; Unavailable says a dependency is down and the
// caller should retry (istio-agent does); anything else is Internal, opaque
// to the caller and logged in full under a reference the operator can grep.
func (s *Service) toStatus(ctx context.Context, err error) *status.Status {
	return statusOf(ctx, s.log, err)
}

// statusOf maps err to a status, logging what the caller is not told.
func statusOf(ctx context.Context, log *slog.Logger, err error) *status.Status {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st
	}
	switch {
	case errors.Is(err, ErrUnauthenticated):
		return status.New(codes.Unauthenticated, boundMessage(err.Error()))
	case errors.Is(err, ErrPermissionDenied):
		return status.New(codes.PermissionDenied, boundMessage(err.Error()))
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, store.ErrInvalidQuery), errors.Is(err, store.ErrInvalidProof):
		return status.New(codes.InvalidArgument, boundMessage(err.Error()))
	case errors.Is(err, ErrRateLimited), errors.Is(err, ErrOverloaded):
		return status.New(codes.ResourceExhausted, boundMessage(err.Error()))
	case errors.Is(err, store.ErrNotFound):
		return status.New(codes.NotFound, boundMessage(err.Error()))
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return status.New(codes.DeadlineExceeded, "request deadline exceeded")
	case errors.Is(err, ErrUnavailable), errors.Is(err, issuer.ErrUnavailable),
		errors.Is(err, store.ErrFailed), errors.Is(err, store.ErrClosed):
		// The issuance log cannot record (its disk failed, it is being
		// closed at shutdown): another replica, or this one soon, can.
		log.WarnContext(ctx, "dependency unavailable", slog.String("error", boundMessage(err.Error())))
		return status.New(codes.Unavailable, "certificate authority temporarily unavailable; retry")
	}
	ref := newRef()
	log.ErrorContext(ctx, "internal error", slog.String("ref", ref), slog.String("error", boundMessage(err.Error())))
	return status.New(codes.Internal, "internal error (ref "+ref+")")
}

// adminStatusOf is statusOf for the admin API, where the log's own
// integrity findings (a damaged or rolled-back file) are what the operator
// asked about: they become DataLoss with the finding, not an opaque
// Internal.
func adminStatusOf(ctx context.Context, log *slog.Logger, err error) *status.Status {
	if errors.Is(err, store.ErrCorrupt) || errors.Is(err, store.ErrRolledBack) {
		log.ErrorContext(ctx, "issuance log integrity", slog.String("error", boundMessage(err.Error())))
		return status.New(codes.DataLoss, boundMessage(err.Error()))
	}
	switch {
	case errors.Is(err, issuer.ErrRotationRefused), errors.Is(err, issuer.ErrNoPreparedRoot),
		errors.Is(err, issuer.ErrNoStateStore), errors.Is(err, ErrRotationDisabled),
		errors.Is(err, store.ErrNoSpace), errors.Is(err, issuer.ErrTooManyRevoked):
		// The step is not allowed now; the message says why and when.
		return status.New(codes.FailedPrecondition, boundMessage(err.Error()))
	case errors.Is(err, issuer.ErrStateConflict):
		return status.New(codes.Aborted, boundMessage(err.Error()+"; retry"))
	case errors.Is(err, issuer.ErrBadFingerprint), errors.Is(err, issuer.ErrNotAnIntermediate):
		return status.New(codes.InvalidArgument, boundMessage(err.Error()))
	case errors.Is(err, issuer.ErrUnknownIntermediate):
		return status.New(codes.NotFound, boundMessage(err.Error()))
	}
	return statusOf(ctx, log, err)
}

func newRef() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
