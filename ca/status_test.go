package ca

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

func TestStatusCodes(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	corrupt := &store.VerifyError{Index: 7, Reason: "leaf hash mismatch"}
	for _, tc := range []struct {
		name      string
		err       error
		admin     bool
		want      codes.Code
		wantInMsg string
	}{
		{"unauthenticated says why", fmt.Errorf("%w: token expired", ErrUnauthenticated), false, codes.Unauthenticated, "token expired"},
		{"permission denied says why", fmt.Errorf("%w: not yours", ErrPermissionDenied), false, codes.PermissionDenied, "not yours"},
		{"invalid says why", fmt.Errorf("%w: bad csr", ErrInvalidRequest), false, codes.InvalidArgument, "bad csr"},
		{"vault down is retried", fmt.Errorf("sign: %w", issuer.ErrUnavailable), false, codes.Unavailable, "retry"},
		{"anything else is opaque", fmt.Errorf("disk: secret detail"), false, codes.Internal, "internal error (ref "},
		{"a corrupt log is opaque to a workload", fmt.Errorf("append: %w", corrupt), false, codes.Internal, "internal error (ref "},
		{"a corrupt log is data loss to an operator", fmt.Errorf("verify: %w", corrupt), true, codes.DataLoss, "index 7"},
		{"a rolled-back log is data loss to an operator", fmt.Errorf("open: %w", store.ErrRolledBack), true, codes.DataLoss, "behind"},
		{"admin denials keep their code", fmt.Errorf("%w: not an admin", ErrPermissionDenied), true, codes.PermissionDenied, "not an admin"},
		{"an intermediate the ca did not issue is not found", fmt.Errorf("%w: abc is not an intermediate this ca issued", issuer.ErrUnknownIntermediate), true, codes.NotFound, "not an intermediate this ca issued"},
		{"a root is not an intermediate", fmt.Errorf("%w: abc is root version 1", issuer.ErrNotAnIntermediate), true, codes.InvalidArgument, "root version 1"},
		{"a full list of compromised intermediates says when it frees", fmt.Errorf("%w: 1000 recorded; the first is dropped at T", issuer.ErrTooManyRevoked), true, codes.FailedPrecondition, "dropped at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := statusOf
			if tc.admin {
				f = adminStatusOf
			}
			st := f(context.Background(), log, tc.err)
			if st.Code() != tc.want || !strings.Contains(st.Message(), tc.wantInMsg) {
				t.Fatalf("status = %s %q, want %s containing %q", st.Code(), st.Message(), tc.want, tc.wantInMsg)
			}
			if tc.want == codes.Internal && strings.Contains(st.Message(), "secret detail") {
				t.Fatalf("Internal leaks the cause: %q", st.Message())
			}
		})
	}
}
