package issuer

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	vault "github.com/hashicorp/vault/api"
)

// ErrTokenRefused means Vault refuses the daemon's token: it was revoked,
// or it expired before it could be renewed.
var ErrTokenRefused = errors.New("vault refuses the token (revoked or expired)")

// Check asks Vault whether the daemon can use it now: Vault answers, is
// unsealed, and accepts the session's token. A refused token makes Run log
// in again at once (Check returns ErrTokenRefused meanwhile); with token
// auth, which cannot get a new token, Run logs why and keeps trying the
// configured one. Errors that a retry may cure wrap ErrUnavailable. Without
// a deadline on ctx, Check gives Vault DefaultVaultTimeout.
func (s *VaultSession) Check(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultVaultTimeout)
		defer cancel()
	}
	h, err := s.Client.Sys().HealthWithContext(ctx)
	if err != nil {
		return vaultErr("health of", s.Client.Address(), 0, err)
	}
	if h.Sealed {
		return fmt.Errorf("vault at %s is sealed: %w", s.Client.Address(), ErrUnavailable)
	}
	if _, err := s.Client.Auth().Token().LookupSelfWithContext(ctx); err != nil {
		if refused(err) {
			s.relogin()
			return fmt.Errorf("vault at %s: %w; logging in again with %s auth: %w", s.Client.Address(), ErrTokenRefused, methodName(s.auth.Method), ErrUnavailable)
		}
		return vaultErr("look up the token at", s.Client.Address(), 0, err)
	}
	return nil
}

// relogin makes Run log in again now.
func (s *VaultSession) relogin() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// refused reports whether Vault answered 403: a token it does not accept.
func refused(err error) bool {
	var re *vault.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusForbidden
}
