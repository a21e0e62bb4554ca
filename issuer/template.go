package issuer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// Backdate is how far NotBefore is set in the past, for clock skew between
// the CA and the machines that check its certificates. The back-dating
// counts inside a certificate's lifetime: see Validity.
const Backdate = 5 * time.Minute

// Validity returns the validity period of a certificate issued at now for
// ttl: NotBefore is back-dated by Backdate (by half of ttl when ttl is
// shorter than twice Backdate, so that most of a short lifetime is still
// ahead), and NotAfter is NotBefore plus ttl. The validity period
// NotAfter − NotBefore, which is what an auditor reads off the certificate,
// is therefore exactly ttl, never more.
//
// SignLeaf may end a leaf earlier, at its issuer's NotAfter, and an
// intermediate ends no later than its root.
func Validity(now time.Time, ttl time.Duration) (notBefore, notAfter time.Time) {
	back := min(Backdate, ttl/2)
	notBefore = now.Add(-back)
	return notBefore, notBefore.Add(ttl)
}

// LeafRequest is what goes into a workload certificate.
type LeafRequest struct {
	SPIFFEID  *url.URL
	DNSNames  []string
	PublicKey crypto.PublicKey
	// Now is the issuance time and TTL the granted lifetime: the validity
	// period is Validity(Now, TTL).
	Now time.Time
	TTL time.Duration
	// NotAfter, when set, ends the validity period earlier than TTL would
	// (a renewal never outlives the certificate it was authenticated by).
	NotAfter time.Time
	// Cluster, when set, is the cluster the certificate is issued for,
	// recorded in it as the OIDCluster extension.
	Cluster string
}

// LeafTemplate builds a workload certificate template: the SPIFFE ID as the
// only URI SAN, an empty subject, key usage that follows the key type
// (digitalSignature, plus keyEncipherment for RSA only), extended key
// usage serverAuth and clientAuth, the cluster extension when r.Cluster
// is set, and a validity period of exactly the TTL (see Validity), ended
// at r.NotAfter when that is earlier. SignLeaf adds the serial number and
// the subject and authority key identifiers.
func LeafTemplate(r LeafRequest) (*x509.Certificate, error) {
	if r.SPIFFEID == nil {
		return nil, errors.New("leaf certificate needs a SPIFFE ID")
	}
	ku, err := leafKeyUsage(r.PublicKey)
	if err != nil {
		return nil, err
	}
	notBefore, notAfter := Validity(r.Now, r.TTL)
	if !r.NotAfter.IsZero() && r.NotAfter.Before(notAfter) {
		if !r.NotAfter.After(notBefore) {
			return nil, fmt.Errorf("leaf certificate would end at %s, before it starts", r.NotAfter.UTC().Format(time.RFC3339))
		}
		notAfter = r.NotAfter
	}
	var extra []pkix.Extension
	if r.Cluster != "" {
		ext, err := ClusterExtension(r.Cluster)
		if err != nil {
			return nil, err
		}
		extra = []pkix.Extension{ext}
	}
	return &x509.Certificate{
		ExtraExtensions:       extra,
		URIs:                  []*url.URL{r.SPIFFEID},
		DNSNames:              r.DNSNames,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}, nil
}

// ServingRequest is what goes into the CA's own TLS serving certificate.
type ServingRequest struct {
	DNSNames    []string
	IPAddresses []net.IP
	// SPIFFEID, when set, is the CA's own identity, carried as a URI SAN.
	SPIFFEID  *url.URL
	PublicKey crypto.PublicKey
	// Now is the issuance time and TTL the lifetime: the validity period is
	// Validity(Now, TTL).
	Now time.Time
	TTL time.Duration
}

// ServingTemplate builds the template of the CA's TLS serving certificate:
// the DNS names and IP addresses as SANs (the first DNS name also as the
// subject common name, for old clients), the SPIFFE ID when set, key usage
// as for a leaf, extended key usage serverAuth only, and a validity period
// of exactly the TTL (see Validity).
func ServingTemplate(r ServingRequest) (*x509.Certificate, error) {
	if len(r.DNSNames) == 0 && len(r.IPAddresses) == 0 {
		return nil, errors.New("serving certificate needs at least one DNS name or IP address")
	}
	ku, err := leafKeyUsage(r.PublicKey)
	if err != nil {
		return nil, err
	}
	notBefore, notAfter := Validity(r.Now, r.TTL)
	tmpl := &x509.Certificate{
		DNSNames:              r.DNSNames,
		IPAddresses:           r.IPAddresses,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if len(r.DNSNames) > 0 {
		tmpl.Subject.CommonName = r.DNSNames[0]
	}
	if r.SPIFFEID != nil {
		tmpl.URIs = []*url.URL{r.SPIFFEID}
	}
	return tmpl, nil
}

// leafKeyUsage is digitalSignature, plus keyEncipherment for RSA keys.
func leafKeyUsage(pub crypto.PublicKey) (x509.KeyUsage, error) {
	ku := x509.KeyUsageDigitalSignature
	switch pub.(type) {
	case *rsa.PublicKey:
		ku |= x509.KeyUsageKeyEncipherment
	case *ecdsa.PublicKey, ed25519.PublicKey:
	default:
		return 0, fmt.Errorf("unsupported public key type %T", pub)
	}
	return ku, nil
}
