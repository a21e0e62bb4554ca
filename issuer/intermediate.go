package issuer

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"
)

// intermediateCertName is the name under which Certs keeps the certificate
// of an intermediate key version.
func intermediateCertName(key string, version int) string {
	return "intermediate/" + key + "/v" + strconv.Itoa(version)
}

// Intermediate is an issuing CA certificate and the signer for its key.
type Intermediate struct {
	Cert   *x509.Certificate
	Signer crypto.Signer
	Mode   Mode
	// KeyVersion is the Transit key version in ModeVault, 0 in ModeMemory.
	KeyVersion int
	// RootKeyVersion is the root key version that certified Cert.
	RootKeyVersion int
	// Fingerprint is the hex SHA-256 of Cert.Raw.
	Fingerprint string
	// RenewAt is when the intermediate is past half its life.
	RenewAt time.Time
}

// Intermediate returns the current issuing intermediate.
func (a *Authority) Intermediate() *Intermediate {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.cur
}

// Renew replaces the issuing intermediate with a fresh one under the active
// root. In ModeMemory it generates a new key; in ModeVault it reuses a
// certificate another replica stored for the key's latest version while
// that is under the active root, not compromised and not past half its
// life, and otherwise certifies the key anew.
func (a *Authority) Renew(ctx context.Context) error {
	a.op.Lock()
	defer a.op.Unlock()
	return a.renew(ctx, 0)
}

// renew makes and installs a new intermediate. In ModeVault, rotateFrom > 0
// asks for a key version newer than rotateFrom as well. a.op is held.
func (a *Authority) renew(ctx context.Context, rotateFrom int) error {
	rs := a.rootsNow()
	var (
		next *Intermediate
		err  error
	)
	if a.o.Mode == ModeVault {
		next, err = a.vaultIntermediate(ctx, rs, rotateFrom)
	} else {
		next, err = a.memoryIntermediate(ctx, rs)
	}
	if err != nil {
		return err
	}
	return a.install(ctx, next)
}

// install puts next to use once OnIntermediate has recorded it. Requests
// in flight keep the *Intermediate they read.
func (a *Authority) install(ctx context.Context, next *Intermediate) error {
	if a.o.OnIntermediate != nil {
		if err := a.o.OnIntermediate(ctx, next); err != nil {
			return fmt.Errorf("record intermediate: %w", err)
		}
	}
	a.mu.Lock()
	a.cur = next
	a.mu.Unlock()
	a.o.Logger.InfoContext(ctx, "issuing intermediate ready",
		slog.String("mode", string(next.Mode)),
		slog.String("subject", next.Cert.Subject.String()),
		slog.String("fingerprint", next.Fingerprint),
		slog.Int("root_key_version", next.RootKeyVersion),
		slog.Time("not_after", next.Cert.NotAfter),
		slog.Time("renew_at", next.RenewAt))
	return nil
}

func (a *Authority) memoryIntermediate(ctx context.Context, rs *rootSet) (*Intermediate, error) {
	key, err := GenerateKey(KeyECDSAP256)
	if err != nil {
		return nil, err
	}
	cert, err := a.certify(ctx, rs, key.Public())
	if err != nil {
		return nil, err
	}
	return newIntermediate(cert, key, ModeMemory, 0, rs.st.ActiveRoot), nil
}

// vaultIntermediate certifies the intermediate key's latest version, or
// reuses the certificate stored for it. When the latest version is not past
// rotateFrom (> 0), or its stored certificate is compromised, it first adds
// a key version.
func (a *Authority) vaultIntermediate(ctx context.Context, rs *rootSet, rotateFrom int) (*Intermediate, error) {
	signer, err := a.keys.Signer(ctx, a.o.IntermediateKey, 0)
	if errors.Is(err, ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: intermediate key %s does not exist; run \"ca init\" with the vault intermediate mode", ErrNotInitialized, a.o.IntermediateKey)
	}
	if err != nil {
		return nil, fmt.Errorf("intermediate key: %w", err)
	}
	if rotateFrom > 0 && signer.KeyVersion() <= rotateFrom {
		if signer, err = a.rotateFrom(ctx, a.o.IntermediateKey, signer.KeyVersion()); err != nil {
			return nil, err
		}
	}
	name := intermediateCertName(a.o.IntermediateKey, signer.KeyVersion())
	stored, rev, err := a.certs.Load(ctx, name)
	if err != nil && !errors.Is(err, ErrCertNotFound) {
		return nil, err
	}
	if (err == nil && rs.st.CertCompromised(stored)) || rs.st.KeyCompromised(KeyFingerprint(signer.Public())) {
		// A certificate of this key version was declared compromised:
		// never certify this version again.
		a.o.Logger.WarnContext(ctx, "intermediate key version is compromised; rotating its key",
			slog.String("key", KeyFingerprint(signer.Public())), slog.Int("key_version", signer.KeyVersion()))
		if signer, err = a.rotateFrom(ctx, a.o.IntermediateKey, signer.KeyVersion()); err != nil {
			return nil, err
		}
		name = intermediateCertName(a.o.IntermediateKey, signer.KeyVersion())
		if stored, rev, err = a.certs.Load(ctx, name); err != nil && !errors.Is(err, ErrCertNotFound) {
			return nil, err
		}
	}
	now := a.o.Now()
	if err == nil && a.usable(rs, stored, signer.Public(), now) {
		return newIntermediate(stored, signer, ModeVault, signer.KeyVersion(), rs.st.ActiveRoot), nil
	}
	cert, err := a.certify(ctx, rs, signer.Public())
	if err != nil {
		return nil, err
	}
	current, _, err := a.certs.Store(ctx, name, cert, rev)
	if err != nil {
		return nil, fmt.Errorf("store intermediate certificate: %w", err)
	}
	if !a.usable(rs, current, signer.Public(), now) {
		// Another replica stored one this replica cannot use (under
		// another root while the replicas' states differ, or compromised):
		// use our own, unshared. It is recorded like any other.
		current = cert
	}
	return newIntermediate(current, signer, ModeVault, signer.KeyVersion(), rs.st.ActiveRoot), nil
}

// rotateFrom adds a version to key unless its latest version is already
// past from (another replica, or a run cut short, rotated it), and returns
// a signer for the latest version.
func (a *Authority) rotateFrom(ctx context.Context, key string, from int) (KeySigner, error) {
	latest, err := a.keys.Signer(ctx, key, 0)
	if err != nil {
		return nil, err
	}
	if latest.KeyVersion() > from {
		return latest, nil
	}
	r, ok := a.keys.(KeyRotator)
	if !ok {
		return nil, fmt.Errorf("key store %s cannot rotate keys", a.keys.Describe())
	}
	v, err := r.Rotate(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("rotate key %s: %w", key, err)
	}
	return a.keys.Signer(ctx, key, v)
}

// usable reports whether a stored intermediate was issued by the active
// root for pub, is not compromised and is not yet past half its life.
func (a *Authority) usable(rs *rootSet, cert *x509.Certificate, pub crypto.PublicKey, now time.Time) bool {
	if cert == nil || matchesKey(cert, pub) != nil || cert.CheckSignatureFrom(rs.active) != nil {
		return false
	}
	if rs.st.CertCompromised(cert) {
		return false
	}
	return now.Before(HalfLife(cert))
}

// certify signs an intermediate certificate for pub with the active root
// key. Its validity period is the intermediate TTL, cut short at the root's
// NotAfter.
func (a *Authority) certify(ctx context.Context, rs *rootSet, pub crypto.PublicKey) (*x509.Certificate, error) {
	ski := keyID(pub)
	notBefore, notAfter := Validity(a.o.Now(), a.o.IntermediateTTL)
	if notAfter.After(rs.active.NotAfter) {
		notAfter = rs.active.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:               a.o.name("transitca issuing CA " + hex.EncodeToString(ski[:4])),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
	}
	cert, err := createCert(ctx, tmpl, rs.active, pub, rs.signer)
	if err != nil {
		return nil, fmt.Errorf("certify intermediate with root key %s version %d: %w", rs.signer.KeyName(), rs.signer.KeyVersion(), err)
	}
	return cert, nil
}

func newIntermediate(cert *x509.Certificate, signer crypto.Signer, mode Mode, version, rootVersion int) *Intermediate {
	return &Intermediate{
		Cert:           cert,
		Signer:         signer,
		Mode:           mode,
		KeyVersion:     version,
		RootKeyVersion: rootVersion,
		Fingerprint:    Fingerprint(cert),
		RenewAt:        HalfLife(cert),
	}
}

// HalfLife returns the middle of cert's validity period: when transitca
// renews a certificate it issued itself (intermediates, the serving
// certificate).
func HalfLife(cert *x509.Certificate) time.Time {
	return cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 2)
}
