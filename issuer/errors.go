package issuer

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strconv"

	vault "github.com/hashicorp/vault/api"
)

var (
	// ErrUnavailable means Vault could not be reached or could not answer
	// now: a network error, a timeout, a sealed or overloaded server. The
	// same call may succeed later.
	ErrUnavailable = errors.New("vault unavailable")
	// ErrKeyNotFound means the named Transit key, or the named version of
	// it (trimmed, or never created), does not exist.
	ErrKeyNotFound = errors.New("transit key not found")
	// ErrNotInitialized means the CA has no root certificate yet: run
	// "ca init" first.
	ErrNotInitialized = errors.New("ca not initialized")
	// ErrCertNotFound means no certificate is stored under that name.
	ErrCertNotFound = errors.New("certificate not found")
	// ErrMountNotFound means no secrets engine is mounted at the Vault path
	// the CA uses (vault.transit_mount or vault.kv_mount).
	ErrMountNotFound = errors.New("vault secrets engine not mounted")
	// ErrStateConflict means another replica changed the rotation state
	// between this one's read and write (StateStore.Store's check-and-set
	// failed). Reading the state again and re-running the step converges.
	ErrStateConflict = errors.New("rotation state changed concurrently")
	// ErrRotationRefused means a rotation step is not allowed now: the
	// prepared root has not been in the trust bundle for the minimum
	// overlap (the message says how long is left), or the step would drop
	// the active root. It changes nothing.
	ErrRotationRefused = errors.New("rotation refused")
	// ErrNoPreparedRoot means ActivateRoot found no prepared root: run
	// PrepareRoot first.
	ErrNoPreparedRoot = errors.New("no prepared root")
	// ErrNoStateStore means a step that writes the rotation state was asked
	// of an Authority opened without Options.State: its state would not
	// outlive the process nor reach other replicas.
	ErrNoStateStore = errors.New("no durable rotation state store")
	// ErrClosed means a signature was asked of a Transit engine that was
	// closed (Transit.Close), or was in flight when it was.
	ErrClosed = errors.New("transit engine closed")
	// ErrBadFingerprint means a certificate fingerprint is not a lowercase
	// hex SHA-256.
	ErrBadFingerprint = errors.New("malformed fingerprint")
	// ErrNotAnIntermediate means RevokeIntermediate was given the
	// fingerprint of a root: a root is retired as compromised instead.
	ErrNotAnIntermediate = errors.New("not an intermediate")
	// ErrUnknownIntermediate means RevokeIntermediate was given a
	// fingerprint the CA cannot tell it issued, without force.
	ErrUnknownIntermediate = errors.New("unknown intermediate")
	// ErrTooManyRevoked means the list of compromised intermediates holds
	// MaxCompromisedIntermediates entries that may still matter; the
	// message says when the first of them is dropped.
	ErrTooManyRevoked = errors.New("too many compromised intermediates")
	// ErrCompromised means a certificate chain passes through an
	// intermediate or a root declared compromised, or through another
	// certificate for the key of one.
	ErrCompromised = errors.New("chain passes through a compromised ca certificate")
)

// VaultError is an error answered by, or on the way to, Vault. It names the
// operation, the key and key version concerned, and what Vault said.
type VaultError struct {
	Op      string // e.g. "sign", "read key"
	Key     string // Transit key name, or KV path
	Version int    // key version, 0 when not relevant
	Err     error  // what Vault (or the network) answered
}

func (e *VaultError) Error() string {
	s := "vault " + e.Op + " " + e.Key
	if e.Version > 0 {
		s += " version " + strconv.Itoa(e.Version)
	}
	if mountMissing(e.Err) {
		s += ": no secrets engine is mounted there"
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *VaultError) Unwrap() error { return e.Err }

// Is reports ErrUnavailable for errors that a retry may cure, and
// ErrMountNotFound when Vault answered that nothing is mounted at the path.
func (e *VaultError) Is(target error) bool {
	switch target {
	case ErrUnavailable:
		return transient(e.Err)
	case ErrMountNotFound:
		return mountMissing(e.Err)
	}
	return false
}

func vaultErr(op, key string, version int, err error) error {
	if err == nil {
		return nil
	}
	return &VaultError{Op: op, Key: key, Version: version, Err: err}
}

// transient reports whether err is a network failure, a timeout or a Vault
// answer (5xx, 429: sealed, standby, overloaded) that a later retry may cure.
func transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode >= 500 || re.StatusCode == 429
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var ue *url.Error
	return errors.As(err, &ue)
}
