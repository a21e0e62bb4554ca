package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/transitca/transitca/internal/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// DefaultCluster is the cluster ID istio-agent sends when none is configured.
// A request without a clusterid header counts as coming from it.
const DefaultCluster = "Kubernetes"

// MaxTokenBytes is the size of the largest bearer token accepted. Projected
// service-account tokens are about 1 KiB; anything near this limit is not one.
// It is below MaxHeaderListBytes, so that an oversized token still reaches
// the service and is denied on the record.
const MaxTokenBytes = 8 << 10

// Credentials is what a request carried: the bearer token from the
// "authorization" metadata (without "Bearer "), the clusterid metadata, and the
// verified TLS peer certificate chains (may be empty).
type Credentials struct {
	// Token is the bearer token, without the "Bearer " prefix.
	Token string
	// ClusterID is the clusterid metadata; empty means DefaultCluster.
	ClusterID string
	// PeerChains are the client's certificate chains, leaf first. The
	// certificate authenticator verifies them again, so unverified chains
	// (the client's own presentation order) are acceptable here too.
	PeerChains [][]*x509.Certificate
}

// Authenticator turns a request's credentials into a Caller. A failure wraps
// ErrUnauthenticated when the credentials are at fault, or ErrUnavailable when
// a dependency needed to check them could not be reached.
type Authenticator interface {
	Authenticate(ctx context.Context, cred Credentials) (*Caller, error)
}

// MultiAuthenticator picks the authenticator for what a request carried: a
// client certificate if there is one and Cert is set, else the bearer token.
// The chosen authenticator decides alone; a failed certificate never falls
// back to the token, so one bad credential cannot hide behind another.
type MultiAuthenticator struct {
	// Cert checks client certificates. Nil means client certificates are
	// ignored and the token decides.
	Cert Authenticator
	// Token checks bearer tokens (a *JWTAuthenticator or a
	// *TokenReviewAuthenticator). Nil means tokens are refused.
	Token Authenticator
}

// NewMultiAuthenticator returns a MultiAuthenticator. Either argument may be
// nil (an untyped nil, not a nil pointer of a concrete type).
func NewMultiAuthenticator(cert, token Authenticator) *MultiAuthenticator {
	return &MultiAuthenticator{Cert: cert, Token: token}
}

// Authenticate implements Authenticator.
func (m *MultiAuthenticator) Authenticate(ctx context.Context, cred Credentials) (*Caller, error) {
	switch {
	case len(cred.PeerChains) > 0 && m.Cert != nil:
		return m.Cert.Authenticate(ctx, cred)
	case cred.Token != "" && m.Token != nil:
		return m.Token.Authenticate(ctx, cred)
	case cred.Token != "":
		return nil, fmt.Errorf("%w: bearer tokens are not accepted by this ca; present a client certificate", ErrUnauthenticated)
	case len(cred.PeerChains) > 0:
		return nil, fmt.Errorf("%w: client certificates are not accepted by this ca; expected an authorization bearer token", ErrUnauthenticated)
	default:
		return nil, fmt.Errorf("%w: no credentials: expected an authorization bearer token or a client certificate", ErrUnauthenticated)
	}
}

// CredentialsFromContext collects the credentials of an incoming gRPC request:
// the "authorization: Bearer <token>" metadata, the "clusterid" metadata and
// the TLS peer's certificates. It fails (ErrUnauthenticated) only when the
// metadata is ambiguous or malformed; missing credentials are left empty for
// the Authenticator to refuse.
func CredentialsFromContext(ctx context.Context) (Credentials, error) {
	var cred Credentials
	md, _ := metadata.FromIncomingContext(ctx)
	switch auth := md.Get("authorization"); len(auth) {
	case 0:
	case 1:
		token, err := bearerToken(auth[0])
		if err != nil {
			return Credentials{}, err
		}
		cred.Token = token
	default:
		return Credentials{}, fmt.Errorf("%w: request carries %d authorization headers, expected one", ErrUnauthenticated, len(auth))
	}
	switch ids := md.Get("clusterid"); len(ids) {
	case 0:
	case 1:
		cred.ClusterID = ids[0]
	default:
		return Credentials{}, fmt.Errorf("%w: request carries %d clusterid headers, expected one", ErrUnauthenticated, len(ids))
	}
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			switch {
			case len(info.State.VerifiedChains) > 0:
				cred.PeerChains = info.State.VerifiedChains
			case len(info.State.PeerCertificates) > 0:
				cred.PeerChains = [][]*x509.Certificate{info.State.PeerCertificates}
			}
		}
	}
	return cred, nil
}

// bearerToken takes the token out of an authorization header value. The
// scheme is case-insensitive (RFC 9110); the token must not be empty.
func bearerToken(header string) (string, error) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", fmt.Errorf("%w: authorization header is not \"Bearer <token>\"", ErrUnauthenticated)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", fmt.Errorf("%w: authorization header has an empty bearer token", ErrUnauthenticated)
	}
	return token, nil
}

// checkTokenSize refuses an empty or oversized bearer token.
func checkTokenSize(token string) error {
	if token == "" {
		return fmt.Errorf("%w: no bearer token", ErrUnauthenticated)
	}
	if len(token) > MaxTokenBytes {
		return fmt.Errorf("%w: token is %d bytes, more than the %d allowed", ErrUnauthenticated, len(token), MaxTokenBytes)
	}
	return nil
}

// tokenScope checks what every token authenticator is given (the trust
// domain, the clusters, the audiences) and returns the clusters and the
// audiences, defaults filled in.
func tokenScope(trustDomain string, clusters, audiences []string) ([]string, []string, error) {
	if err := spiffeid.ValidTrustDomain(trustDomain); err != nil {
		return nil, nil, err
	}
	clusters, err := clustersOrDefault(clusters)
	if err != nil {
		return nil, nil, err
	}
	audiences, err = audiencesOrDefault(audiences)
	if err != nil {
		return nil, nil, err
	}
	return clusters, audiences, nil
}

// clustersOrDefault returns the configured clusters, or [DefaultCluster].
func clustersOrDefault(clusters []string) ([]string, error) {
	if len(clusters) == 0 {
		return []string{DefaultCluster}, nil
	}
	for _, c := range clusters {
		if c == "" {
			return nil, errors.New("cluster list holds an empty cluster id")
		}
	}
	return slices.Clone(clusters), nil
}

// checkCluster resolves the clusterid a request carried against the allowed
// clusters. An empty id means DefaultCluster, as istio-agent sends by default.
func checkCluster(id string, allowed []string) (string, error) {
	if id == "" {
		id = DefaultCluster
	}
	if !slices.Contains(allowed, id) {
		return "", fmt.Errorf("%w: cluster %s is not served by this ca; allowed clusters: %s",
			ErrUnauthenticated, quote(id), strings.Join(allowed, ", "))
	}
	return id, nil
}

// newCaller builds the Caller for a service account.
func newCaller(trustDomain, ns, sa, cluster string, method AuthMethod, subject string) *Caller {
	return &Caller{
		SPIFFEID:       spiffeid.Workload(trustDomain, ns, sa),
		Namespace:      ns,
		ServiceAccount: sa,
		ClusterID:      cluster,
		Method:         method,
		Subject:        subject,
	}
}

// ParseSPIFFEID splits a workload SPIFFE ID of the Istio form
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>. It is strict:
// the scheme is exactly "spiffe"; there is no userinfo, port, query, fragment
// or percent-encoding; the trust domain holds only lowercase letters, digits,
// '.', '-' and '_'; the namespace is a Kubernetes namespace name (a DNS label)
// and the service account a Kubernetes object name (a DNS subdomain).
func ParseSPIFFEID(uri string) (trustDomain, ns, sa string, err error) {
	if len(uri) > spiffeid.MaxBytes {
		return "", "", "", fmt.Errorf("spiffe id is %d bytes, more than the %d allowed", len(uri), spiffeid.MaxBytes)
	}
	rest, ok := strings.CutPrefix(uri, "spiffe://")
	if !ok {
		return "", "", "", fmt.Errorf("%s does not start with spiffe://", quote(uri))
	}
	switch {
	case strings.ContainsRune(rest, '?'):
		return "", "", "", fmt.Errorf("spiffe id %s has a query", quote(uri))
	case strings.ContainsRune(rest, '#'):
		return "", "", "", fmt.Errorf("spiffe id %s has a fragment", quote(uri))
	case strings.ContainsRune(rest, '%'):
		return "", "", "", fmt.Errorf("spiffe id %s is percent-encoded", quote(uri))
	}
	trustDomain, path, _ := strings.Cut(rest, "/")
	switch {
	case strings.ContainsRune(trustDomain, '@'):
		return "", "", "", fmt.Errorf("spiffe id %s has userinfo", quote(uri))
	case strings.ContainsRune(trustDomain, ':'):
		return "", "", "", fmt.Errorf("spiffe id %s has a port", quote(uri))
	}
	if err := spiffeid.ValidTrustDomain(trustDomain); err != nil {
		return "", "", "", fmt.Errorf("spiffe id %s: %w", quote(uri), err)
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return "", "", "", fmt.Errorf("spiffe id %s: path is not /ns/<namespace>/sa/<service-account>", quote(uri))
	}
	ns, sa = parts[1], parts[3]
	if !spiffeid.ValidNamespace(ns) {
		return "", "", "", fmt.Errorf("spiffe id %s: %s is not a valid namespace name", quote(uri), quote(ns))
	}
	if !spiffeid.ValidServiceAccount(sa) {
		return "", "", "", fmt.Errorf("spiffe id %s: %s is not a valid service account name", quote(uri), quote(sa))
	}
	return trustDomain, ns, sa, nil
}

// serviceAccountPrefix starts the Kubernetes user name of a service account.
const serviceAccountPrefix = "system:serviceaccount:"

// parseServiceAccountUser splits "system:serviceaccount:<ns>:<sa>".
func parseServiceAccountUser(user string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(user, serviceAccountPrefix)
	if !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, ":")
	if !ok || !spiffeid.ValidNamespace(ns) || !spiffeid.ValidServiceAccount(sa) {
		return "", "", false
	}
	return ns, sa, true
}
