package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/transitca/transitca/internal/spiffeid"
	"github.com/transitca/transitca/issuer"
)

// CertAuthenticator authenticates a caller by its client certificate, such as
// a VM's istio-agent renewing with the certificate this CA issued it
// (PROV_CERT). The certificate is verified again here, against the current
// roots, whatever the TLS layer already did, and every verified chain is
// put to the chain check (WithChainCheck: compromised intermediates and
// roots).
//
// The caller's cluster is the one its certificate was issued for: the
// issuer.OIDCluster extension transitca writes in every workload
// certificate, or, for a certificate without it (issued before transitca
// wrote it), the CA's own cluster (WithOwnCluster). A clusterid header
// that names another cluster is refused, so a certificate of one cluster
// is never judged (tier, DNS names, admin rights) as another's.
type CertAuthenticator struct {
	roots       func() *x509.CertPool
	trustDomain string
	clusters    []string
	ownCluster  string
	checkChain  func(chain []*x509.Certificate) error
	now         func() time.Time
}

// CertOption configures a CertAuthenticator.
type CertOption func(*CertAuthenticator)

// WithChainCheck makes every verified chain (leaf first, root last) pass
// check before the certificate authenticates; its error is the reason of
// the refusal. The daemon passes issuer.Authority.CheckChain.
func WithChainCheck(check func(chain []*x509.Certificate) error) CertOption {
	return func(a *CertAuthenticator) { a.checkChain = check }
}

// WithOwnCluster names the cluster that a certificate without the cluster
// extension counts as issued for: the CA's own. Without it, the first of
// the served clusters.
func WithOwnCluster(id string) CertOption {
	return func(a *CertAuthenticator) { a.ownCluster = id }
}

// NewCertAuthenticator returns a CertAuthenticator. roots returns the current
// trust bundle and is called on every request, so a root rotation applies at
// once. Empty clusters means [DefaultCluster].
func NewCertAuthenticator(roots func() *x509.CertPool, trustDomain string, clusters []string, opts ...CertOption) (*CertAuthenticator, error) {
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
	a := &CertAuthenticator{roots: roots, trustDomain: trustDomain, clusters: cl, ownCluster: cl[0], now: time.Now}
	for _, o := range opts {
		o(a)
	}
	if !slices.Contains(cl, a.ownCluster) {
		return nil, fmt.Errorf("certificate authenticator: own cluster %s is not one of the served clusters %s", quote(a.ownCluster), strings.Join(cl, ", "))
	}
	return a, nil
}

// Authenticate implements Authenticator. The leaf is cred.PeerChains[0][0];
// the rest of that chain serves as intermediates. The leaf must not be a CA,
// must chain to the current roots for client authentication at the current
// time, through no CA certificate the chain check refuses, must carry
// exactly one URI SAN, a workload SPIFFE ID in this CA's trust domain, and
// must have been issued for a served cluster that the clusterid header, if
// any, names too. Every refusal wraps ErrUnauthenticated.
func (a *CertAuthenticator) Authenticate(_ context.Context, cred Credentials) (*Caller, error) {
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
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		CurrentTime:   a.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: client certificate %s does not verify: %w", ErrUnauthenticated, serial, err)
	}
	if a.checkChain != nil {
		// Every path counts: one through a compromised certificate is
		// enough to refuse.
		for _, chain := range chains {
			if err := a.checkChain(chain); err != nil {
				return nil, fmt.Errorf("%w: client certificate %s: %w", ErrUnauthenticated, serial, err)
			}
		}
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
	cluster, err := a.certCluster(leaf, serial, cred.ClusterID)
	if err != nil {
		return nil, err
	}
	c := newCaller(a.trustDomain, ns, sa, cluster, AuthClientCert, serial)
	c.ClientCert = leaf
	if len(chains[0]) > 1 {
		c.ClientCertIssuer = issuer.Fingerprint(chains[0][1])
	}
	return c, nil
}

// certCluster returns the served cluster leaf was issued for, refusing a
// clusterid header that names another.
func (a *CertAuthenticator) certCluster(leaf *x509.Certificate, serial, header string) (string, error) {
	cluster, marked, err := issuer.CertCluster(leaf)
	if err != nil {
		return "", fmt.Errorf("%w: client certificate %s: %w", ErrUnauthenticated, serial, err)
	}
	if !marked {
		cluster = a.ownCluster
	}
	if header != "" && header != cluster {
		return "", fmt.Errorf("%w: client certificate %s was issued for cluster %s and cannot be presented as cluster %s",
			ErrUnauthenticated, serial, quote(cluster), quote(header))
	}
	return checkCluster(cluster, a.clusters)
}
