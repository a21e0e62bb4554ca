package issuer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
)

// InitResult says what Init did.
type InitResult struct {
	KeyCreated             bool // the root key was created
	RootCreated            bool // the root certificate was created
	IntermediateKeyCreated bool // ModeVault: the intermediate key was created
	Root                   *x509.Certificate
	RootKeyVersion         int
}

// Init makes the CA ready, idempotently: it creates the non-exportable root
// key unless it exists, builds the self-signed root certificate through the
// key store unless one is stored for the key's latest version, and in
// ModeVault creates the intermediate key. Running it again changes nothing.
func Init(ctx context.Context, keys Keys, certs Certs, o Options) (*InitResult, error) {
	o.defaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	res := &InitResult{}
	var err error
	if res.KeyCreated, err = keys.EnsureKey(ctx, o.RootKey, o.RootKeyType); err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	signer, err := keys.Signer(ctx, o.RootKey, 0)
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	res.RootKeyVersion = signer.KeyVersion()
	name := rootCertName(o.RootKey, signer.KeyVersion())
	root, _, err := certs.Load(ctx, name)
	switch {
	case err == nil:
		if err := matchesKey(root, signer.Public()); err != nil {
			return nil, fmt.Errorf("stored root certificate %s: %w", name, err)
		}
	case errors.Is(err, ErrCertNotFound):
		root, err = selfSign(ctx, signer, &o)
		if err != nil {
			return nil, err
		}
		root, res.RootCreated, err = certs.Store(ctx, name, root, 0)
		if err != nil {
			return nil, fmt.Errorf("store root certificate: %w", err)
		}
	default:
		return nil, err
	}
	res.Root = root
	if o.Mode == ModeVault {
		if res.IntermediateKeyCreated, err = keys.EnsureKey(ctx, o.IntermediateKey, o.IntermediateKeyType); err != nil {
			return nil, fmt.Errorf("intermediate key: %w", err)
		}
	}
	return res, nil
}

func selfSign(ctx context.Context, signer KeySigner, o *Options) (*x509.Certificate, error) {
	notBefore, notAfter := Validity(o.Now(), o.RootTTL)
	tmpl := &x509.Certificate{
		Subject:               o.name("transitca root CA"),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
		SubjectKeyId:          keyID(signer.Public()),
	}
	cert, err := createCert(ctx, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("self-sign root with key %s version %d: %w", signer.KeyName(), signer.KeyVersion(), err)
	}
	return cert, nil
}
