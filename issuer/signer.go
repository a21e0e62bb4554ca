package issuer

import (
	"context"
	"crypto"
	"crypto/x509"
)

// KeySigner is a crypto.Signer for one pinned version of a named key.
type KeySigner interface {
	crypto.Signer
	KeyName() string
	KeyVersion() int
}

// contextSigner is implemented by signers that can bind a request's context
// to their calls (the Transit signer does).
type contextSigner interface {
	WithContext(ctx context.Context) *TransitSigner
}

// bind returns s bound to ctx where s supports it.
func bind(ctx context.Context, s crypto.Signer) crypto.Signer {
	if cs, ok := s.(contextSigner); ok {
		return cs.WithContext(ctx)
	}
	return s
}

// Keys is where the CA's signing keys live: Vault Transit in production, a
// local software store in development.
type Keys interface {
	// EnsureKey creates a non-exportable key unless one of that name exists,
	// and reports whether it created one.
	EnsureKey(ctx context.Context, name string, typ KeyType) (created bool, err error)
	// Signer returns a signer for a key version; version 0 is the latest,
	// resolved now and pinned.
	Signer(ctx context.Context, name string, version int) (KeySigner, error)
	// Describe says where the keys live, for logs and status output.
	Describe() string
}

// Certs stores the CA's own certificates (root and intermediates) where
// every replica finds them. Certificates are public; keys are never stored
// here.
type Certs interface {
	// Load returns the certificate stored under name and its revision. It
	// returns an error wrapping ErrCertNotFound when there is none.
	Load(ctx context.Context, name string) (cert *x509.Certificate, rev int, err error)
	// Store writes cert under name only if the stored revision is still rev
	// (0: nothing stored yet). When another writer got there first, it
	// returns their certificate and stored=false.
	Store(ctx context.Context, name string, cert *x509.Certificate, rev int) (current *x509.Certificate, stored bool, err error)
}
