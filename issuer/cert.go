package issuer

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
)

// Issued is a signed leaf and what it was signed with.
type Issued struct {
	Cert   *x509.Certificate
	Issuer *Intermediate
	// RootKeyVersion is the root key version that certified Issuer.
	RootKeyVersion int
}

// SignLeaf signs a leaf certificate for pub with the current intermediate.
// It sets a fresh 128-bit random serial, the subject key identifier of pub
// and the authority key identifier of the intermediate, and caps NotAfter
// at the intermediate's NotAfter: an intermediate outlives every leaf it
// signs. The signature is checked under the intermediate's public key
// before the leaf is returned, so a signer that misbehaves (or a Transit
// key version other than the intermediate's) yields an error, never a
// certificate. Build tmpl with LeafTemplate or ServingTemplate.
func (a *Authority) SignLeaf(ctx context.Context, tmpl *x509.Certificate, pub crypto.PublicKey) (*Issued, error) {
	in := a.Intermediate()
	t := *tmpl
	t.SubjectKeyId = keyID(pub)
	if t.NotAfter.After(in.Cert.NotAfter) {
		t.NotAfter = in.Cert.NotAfter
	}
	if t.IsCA {
		return nil, errors.New("refusing to sign a CA certificate as a leaf")
	}
	cert, err := createCert(ctx, &t, in.Cert, pub, in.Signer)
	if err != nil {
		return nil, fmt.Errorf("sign leaf with %s: %w", in.Cert.Subject.CommonName, err)
	}
	return &Issued{Cert: cert, Issuer: in, RootKeyVersion: in.RootKeyVersion}, nil
}

// createCert signs tmpl with a fresh serial, binding signer to ctx.
func createCert(ctx context.Context, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	t := *tmpl
	t.SerialNumber = serial
	var der []byte
	if alg, ok := sigAlgFor(parent.PublicKey); ok && isWorkloadLeaf(&t) {
		der, err = signLeaf(&t, parent, alg, pub, bind(ctx, signer))
	} else {
		der, err = x509.CreateCertificate(rand.Reader, &t, parent, pub, bind(ctx, signer))
	}
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// NewSerial returns a positive serial number with 128 random bits.
func NewSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

// Fingerprint returns the hex SHA-256 of a certificate's DER.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// KeyFingerprint returns the hex SHA-256 of a public key's DER
// SubjectPublicKeyInfo, "" for a key that cannot be marshaled. It names
// the key whatever certificate carries it.
func KeyFingerprint(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// keyID is the subject key identifier for pub: the SHA-256 of its DER
// SubjectPublicKeyInfo, truncated to 160 bits.
func keyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(der)
	return sum[:20]
}

// matchesKey reports an error unless cert certifies pub.
func matchesKey(cert *x509.Certificate, pub crypto.PublicKey) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := cert.PublicKey.(equaler)
	if !ok || !e.Equal(pub) {
		return errors.New("certificate public key does not match the key")
	}
	return nil
}
