package peers

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// CryptoBound is the issuance work with nothing around it: parse the CSR,
// check its signature, and sign a leaf for its key and SPIFFE ID with an
// ECDSA P-256 CA key, in process. No network, no authentication, no log.
// Run on every core it is the ceiling a CA on this machine is held against.
type CryptoBound struct {
	ca  *x509.Certificate
	key *ecdsa.PrivateKey
}

// NewCryptoBound makes a P-256 CA to sign with.
func NewCryptoBound() (*CryptoBound, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "crypto bound CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(60 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CryptoBound{ca: cert, key: key}, nil
}

// Issue signs one leaf for csrPEM and returns its DER.
func (c *CryptoBound) Issue(csrPEM []byte) ([]byte, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, errors.New("csr is not pem")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, err
	}
	if len(csr.URIs) != 1 {
		return nil, fmt.Errorf("csr has %d URI SANs, want 1", len(csr.URIs))
	}
	var serial [16]byte
	if _, err := rand.Read(serial[:]); err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).SetBytes(serial[:]),
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(24 * time.Hour),
		URIs:         csr.URIs,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	return x509.CreateCertificate(rand.Reader, tmpl, c.ca, csr.PublicKey, c.key)
}
