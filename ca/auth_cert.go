package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/transitca/transitca/internal/spiffeid"
)

// CertAuthenticator authenticates a caller by its client certificate, such as
// a VM's istio-agent renewing with the certificate this CA issued it
// (PROV_CERT). The certificate is verified again here, against the current
// roots, whatever the TLS layer already did.
type CertAuthenticator struct {
	roots       func() *x509.CertPool
	trustDomain string
	clusters    []string // nil: no clusterid is read (NewAdminCertAuthenticator)
	now         func() time.Time
}

// NewCertAuthenticator returns a CertAuthenticator. roots returns the current
// trust bundle and is called on every request, so a root rotation applies at
// once. Empty clusters means [DefaultCluster].
func NewCertAuthenticator(roots func() *x509.CertPool, trustDomain string, clusters []string) (*CertAuthenticator, error) {
	if roots == nil {
		return nil, errors.New("certificate authenticator: no roots")
	}
	if err := spiffeid.ValidTrustDomain(trustDomain); err != nil {
		return nil, fmt.Errorf("certificate authenticator: %w", err)
	}
	cl, err := clustersOrDefault(clusters)
	if err != nil {
		return nil, fmt.Errorf("certificate authenticator: %w", err)
	}
	return &CertAuthenticator{roots: roots, trustDomain: trustDomain, clusters: cl, now: time.Now}, nil
}

// NewAdminCertAuthenticator returns a CertAuthenticator for the admin
// API, which serves no cluster's workloads: the client certificate alone
// says who calls, no clusterid is needed or read, and the caller's
// ClusterID is left empty.
func NewAdminCertAuthenticator(roots func() *x509.CertPool, trustDomain string) (*CertAuthenticator, error) {
	a, err := NewCertAuthenticator(roots, trustDomain, nil)
	if err != nil {
		return nil, err
	}
	a.clusters = nil
	return a, nil
}

// Authenticate implements Authenticator. The leaf is cred.PeerChains[0][0];
// the rest of that chain serves as intermediates. The leaf must not be a CA,
// must chain to the current roots for client authentication at the current
// time, and must carry exactly one URI SAN, a workload SPIFFE ID in this
// CA's trust domain. Every refusal wraps ErrUnauthenticated.
func (a *CertAuthenticator) Authenticate(_ context.Context, cred Credentials) (*Caller, error) {
	var cluster string
	if a.clusters != nil {
		var err error
		if cluster, err = checkCluster(cred.ClusterID, a.clusters); err != nil {
			return nil, err
		}
	}
	if len(cred.PeerChains) == 0 || len(cred.PeerChains[0]) == 0 || cred.PeerChains[0][0] == nil {
		return nil, fmt.Errorf("%w: no client certificate", ErrUnauthenticated)
	}
	leaf := cred.PeerChains[0][0]
	for _, chain := range cred.PeerChains[1:] {
		if len(chain) == 0 || chain[0] == nil || !chain[0].Equal(leaf) {
			return nil, fmt.Errorf("%w: client certificate chains do not share one leaf", ErrUnauthenticated)
		}
	}
	serial := leaf.SerialNumber.Text(16)
	if leaf.IsCA {
		return nil, fmt.Errorf("%w: client certificate %s is a ca certificate", ErrUnauthenticated, serial)
	}
	roots := a.roots()
	if roots == nil {
		// Verify would fall back to the system roots: never.
		return nil, errors.New("certificate authenticator: trust bundle is not loaded")
	}
	intermediates := x509.NewCertPool()
	for _, c := range cred.PeerChains[0][1:] {
		if c != nil {
			intermediates.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		CurrentTime:   a.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("%w: client certificate %s does not verify: %w", ErrUnauthenticated, serial, err)
	}
	if len(leaf.URIs) != 1 {
		return nil, fmt.Errorf("%w: client certificate %s has %d uri sans, expected exactly one spiffe id", ErrUnauthenticated, serial, len(leaf.URIs))
	}
	id := leaf.URIs[0].String()
	td, ns, sa, err := ParseSPIFFEID(id)
	if err != nil {
		return nil, fmt.Errorf("%w: client certificate %s: %w", ErrUnauthenticated, serial, err)
	}
	if td != a.trustDomain {
		return nil, fmt.Errorf("%w: client certificate %s is for trust domain %s, not %q", ErrUnauthenticated, serial, quote(td), a.trustDomain)
	}
	return newCaller(a.trustDomain, ns, sa, cluster, AuthClientCert, serial), nil
}
