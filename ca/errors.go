package ca

import "errors"

// Kinds of request failure. Code in this package wraps one of them with %w
// and a lowercase message that says exactly what was wrong; toStatus turns
// the kind into a gRPC status code in one place.
var (
	// ErrUnauthenticated means the caller's credentials are missing, malformed,
	// expired or not signed by a trusted key. It becomes codes.Unauthenticated.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied means an authenticated caller asked for something
	// beyond its rights, such as another identity's name. It becomes
	// codes.PermissionDenied.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrInvalidRequest means the request itself is malformed: a broken CSR,
	// a forbidden extension, a weak key. It becomes codes.InvalidArgument.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrUnavailable means a dependency (Vault, the Kubernetes API) could
	// not be reached, so the request could not be decided; it is not the
	// caller's fault and the caller should retry. It becomes
	// codes.Unavailable.
	ErrUnavailable = errors.New("unavailable")
	// ErrRateLimited means the caller asked more often than its identity
	// may (IdentityLimits); it should retry later. It becomes
	// codes.ResourceExhausted.
	ErrRateLimited = errors.New("rate limited")
	// ErrOverloaded means the CA is handling as many requests as it may
	// (limits.max_in_flight) and the request found no place in, or within
	// the wait of, the admission queue; it should retry later. It becomes
	// codes.ResourceExhausted.
	ErrOverloaded = errors.New("overloaded")
)
