package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	josejson "github.com/go-jose/go-jose/v4/json"
	"github.com/go-jose/go-jose/v4/jwt"
)

// DefaultAudience is the audience istio-agent requests for its token.
const DefaultAudience = "istio-ca"

// DefaultLeeway is the clock skew tolerated on exp, nbf and iat.
const DefaultLeeway = 30 * time.Second

// maxJSONBytes bounds every JSON document read from the network or a file.
const maxJSONBytes = 1 << 20

// jwtAlgorithms are the only signature algorithms a token may use: never
// "none", never an HMAC.
var jwtAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.PS256}

// JWTOptions configure a JWTAuthenticator.
type JWTOptions struct {
	// Issuer is the exact "iss" tokens must carry, e.g.
	// https://kubernetes.default.svc.cluster.local.
	Issuer string
	// Audiences lists the accepted audiences; a token must name at least one.
	// Empty means [DefaultAudience].
	Audiences []string
	// KeySet holds the issuer's public keys. Exactly one of KeySet and
	// KeySource must be set.
	KeySet *jose.JSONWebKeySet
	// KeySource supplies keys that may change, such as a RemoteKeySource.
	KeySource KeySource
	// Leeway is the clock skew tolerated on exp, nbf and iat. Zero means
	// DefaultLeeway.
	Leeway time.Duration
	// TrustDomain is the SPIFFE trust domain of the identities issued.
	TrustDomain string
	// Clusters lists the accepted clusterid values. Empty means
	// [DefaultCluster].
	Clusters []string
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
}

// KeySource supplies the public keys that sign tokens. KeySet is called for
// every token, so an implementation caches. If a source can also fetch new
// keys on demand it implements Refresh(ctx) error; the authenticator calls
// it, then KeySet again, when a token names a key id the set lacks.
type KeySource interface {
	KeySet(ctx context.Context) (*jose.JSONWebKeySet, error)
}

// refresher is the optional capability of a KeySource to fetch again.
type refresher interface {
	Refresh(ctx context.Context) error
}

// staticKeys is a KeySource that never changes.
type staticKeys struct{ set *jose.JSONWebKeySet }

func (s staticKeys) KeySet(context.Context) (*jose.JSONWebKeySet, error) { return s.set, nil }

// JWTAuthenticator verifies Kubernetes service-account tokens offline, against
// the issuer's public keys, and maps them to SPIFFE identities.
type JWTAuthenticator struct {
	issuer      string
	audiences   []string
	keys        KeySource
	leeway      time.Duration
	trustDomain string
	clusters    []string
	now         func() time.Time
}

// NewJWTAuthenticator checks opts, fills in the defaults and returns the
// authenticator.
func NewJWTAuthenticator(opts JWTOptions) (*JWTAuthenticator, error) {
	if opts.Issuer == "" {
		return nil, errors.New("jwt authenticator: issuer is empty")
	}
	if err := validTrustDomain(opts.TrustDomain); err != nil {
		return nil, fmt.Errorf("jwt authenticator: %w", err)
	}
	clusters, err := clustersOrDefault(opts.Clusters)
	if err != nil {
		return nil, fmt.Errorf("jwt authenticator: %w", err)
	}
	audiences, err := audiencesOrDefault(opts.Audiences)
	if err != nil {
		return nil, fmt.Errorf("jwt authenticator: %w", err)
	}
	if opts.Leeway < 0 {
		return nil, fmt.Errorf("jwt authenticator: leeway %s is negative", opts.Leeway)
	}
	a := &JWTAuthenticator{
		issuer:      opts.Issuer,
		audiences:   audiences,
		leeway:      opts.Leeway,
		trustDomain: opts.TrustDomain,
		clusters:    clusters,
		now:         opts.Now,
	}
	if a.leeway == 0 {
		a.leeway = DefaultLeeway
	}
	if a.now == nil {
		a.now = time.Now
	}
	switch {
	case opts.KeySet != nil && opts.KeySource != nil:
		return nil, errors.New("jwt authenticator: both a key set and a key source are set; choose one")
	case opts.KeySet != nil:
		set, err := publicKeySet(opts.KeySet)
		if err != nil {
			return nil, fmt.Errorf("jwt authenticator: %w", err)
		}
		a.keys = staticKeys{set}
	case opts.KeySource != nil:
		a.keys = opts.KeySource
	default:
		return nil, errors.New("jwt authenticator: no key set and no key source")
	}
	return a, nil
}

// audiencesOrDefault returns the configured audiences, or [DefaultAudience].
func audiencesOrDefault(auds []string) ([]string, error) {
	if len(auds) == 0 {
		return []string{DefaultAudience}, nil
	}
	if slices.Contains(auds, "") {
		return nil, errors.New("audience list holds an empty audience")
	}
	return slices.Clone(auds), nil
}

// jwtHeader is the part of a JWS protected header read before verification.
type jwtHeader struct {
	Alg  string   `json:"alg"`
	Kid  string   `json:"kid"`
	Crit []string `json:"crit"`
	B64  *bool    `json:"b64"`
}

// kubernetesClaims is the "kubernetes.io" claim of a projected
// service-account token.
type kubernetesClaims struct {
	Kubernetes *struct {
		Namespace      string `json:"namespace"`
		ServiceAccount *struct {
			Name string `json:"name"`
			UID  string `json:"uid,omitempty"`
		} `json:"serviceaccount,omitempty"`
		Pod *struct {
			Name string `json:"name"`
			UID  string `json:"uid,omitempty"`
		} `json:"pod,omitempty"`
	} `json:"kubernetes.io,omitempty"`
}

// Authenticate implements Authenticator. Every refusal wraps
// ErrUnauthenticated; a key source that cannot be reached yields its own
// error (ErrUnavailable for a RemoteKeySource).
func (a *JWTAuthenticator) Authenticate(ctx context.Context, cred Credentials) (*Caller, error) {
	cluster, err := checkCluster(cred.ClusterID, a.clusters)
	if err != nil {
		return nil, err
	}
	payload, err := a.verifySignature(ctx, cred.Token)
	if err != nil {
		return nil, err
	}
	var std jwt.Claims
	var kube kubernetesClaims
	if err := josejson.Unmarshal(payload, &std); err != nil {
		return nil, fmt.Errorf("%w: token claims are malformed: %w", ErrUnauthenticated, err)
	}
	if err := josejson.Unmarshal(payload, &kube); err != nil {
		return nil, fmt.Errorf("%w: token kubernetes.io claim is malformed: %w", ErrUnauthenticated, err)
	}
	if err := a.checkClaims(&std); err != nil {
		return nil, err
	}
	ns, sa, err := serviceAccountFromClaims(&kube, std.Subject)
	if err != nil {
		return nil, err
	}
	subject := std.Subject
	if subject == "" {
		subject = serviceAccountPrefix + ns + ":" + sa
	}
	c := newCaller(a.trustDomain, ns, sa, cluster, AuthJWT, subject)
	if c.PodName, c.PodUID, err = podFromClaims(&kube); err != nil {
		return nil, err
	}
	return c, nil
}

// verifySignature checks the token's form, algorithm and signature and
// returns its payload.
func (a *JWTAuthenticator) verifySignature(ctx context.Context, token string) ([]byte, error) {
	if err := checkTokenSize(token); err != nil {
		return nil, err
	}
	hdr, err := parseCompactHeader(token)
	if err != nil {
		return nil, err
	}
	jws, err := jose.ParseSignedCompact(token, jwtAlgorithms)
	if err != nil {
		return nil, fmt.Errorf("%w: token is malformed: %w", ErrUnauthenticated, err)
	}
	alg := jose.SignatureAlgorithm(hdr.Alg)
	keys, err := a.candidateKeys(ctx, hdr.Kid, alg)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if payload, err := jws.Verify(k.Key); err == nil {
			return payload, nil
		}
	}
	if hdr.Kid != "" {
		return nil, fmt.Errorf("%w: token signature does not verify with key id %s", ErrUnauthenticated, quote(hdr.Kid))
	}
	return nil, fmt.Errorf("%w: token has no key id and its signature verifies with none of the %d trusted keys", ErrUnauthenticated, len(keys))
}

// parseCompactHeader checks that token is a canonical JWS compact
// serialization (three base64url parts, no padding, no stray characters, no
// non-canonical trailing bits) and returns its header. It refuses forbidden
// algorithms by name before anything else is looked at.
func parseCompactHeader(token string) (jwtHeader, error) {
	var hdr jwtHeader
	switch n := strings.Count(token, ".") + 1; n {
	case 3:
	case 5:
		return hdr, fmt.Errorf("%w: token is an encrypted jwt (jwe); expected a signed one", ErrUnauthenticated)
	default:
		return hdr, fmt.Errorf("%w: token is not a jwt: expected 3 dot-separated parts, got %d", ErrUnauthenticated, n)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; !isBase64URL(c) && c != '.' {
			return hdr, fmt.Errorf("%w: token has the character %q at offset %d, outside base64url", ErrUnauthenticated, c, i)
		}
	}
	parts := strings.Split(token, ".")
	enc := base64.RawURLEncoding.Strict()
	raw, err := enc.DecodeString(parts[0])
	if err != nil {
		return hdr, fmt.Errorf("%w: token header is not canonical base64url: %w", ErrUnauthenticated, err)
	}
	if err := josejson.Unmarshal(raw, &hdr); err != nil {
		return hdr, fmt.Errorf("%w: token header is not a json object: %w", ErrUnauthenticated, err)
	}
	if hdr.Alg == "" {
		return hdr, fmt.Errorf("%w: token header names no algorithm", ErrUnauthenticated)
	}
	if !slices.Contains(jwtAlgorithms, jose.SignatureAlgorithm(hdr.Alg)) {
		return hdr, fmt.Errorf("%w: token algorithm %s is not allowed", ErrUnauthenticated, quote(hdr.Alg))
	}
	if hdr.Crit != nil || hdr.B64 != nil {
		return hdr, fmt.Errorf("%w: token header carries crit or b64, which service account tokens never do", ErrUnauthenticated)
	}
	if _, err := enc.DecodeString(parts[1]); err != nil {
		return hdr, fmt.Errorf("%w: token payload is not canonical base64url: %w", ErrUnauthenticated, err)
	}
	if sig, err := enc.DecodeString(parts[2]); err != nil || len(sig) == 0 {
		return hdr, fmt.Errorf("%w: token signature is missing or not canonical base64url", ErrUnauthenticated)
	}
	return hdr, nil
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// candidateKeys returns the trusted keys that may have signed a token with
// this kid and algorithm. An unknown kid makes a refreshable source fetch
// again once.
func (a *JWTAuthenticator) candidateKeys(ctx context.Context, kid string, alg jose.SignatureAlgorithm) ([]jose.JSONWebKey, error) {
	set, err := a.keySet(ctx)
	if err != nil {
		return nil, err
	}
	if kid != "" && len(set.Key(kid)) == 0 {
		if r, ok := a.keys.(refresher); ok {
			if err := r.Refresh(ctx); err != nil {
				return nil, fmt.Errorf("token signing keys: %w", err)
			}
			if set, err = a.keySet(ctx); err != nil {
				return nil, err
			}
		}
		if len(set.Key(kid)) == 0 {
			return nil, fmt.Errorf("%w: token signed with unknown key id %s", ErrUnauthenticated, quote(kid))
		}
	}
	named := set.Keys
	if kid != "" {
		named = set.Key(kid)
	}
	var usable []jose.JSONWebKey
	for _, k := range named {
		if keyFits(k, alg) {
			usable = append(usable, k)
		}
	}
	if len(usable) == 0 {
		if kid != "" {
			return nil, fmt.Errorf("%w: token key id %s names a key that cannot verify %s", ErrUnauthenticated, quote(kid), alg)
		}
		return nil, fmt.Errorf("%w: no trusted key can verify a %s token", ErrUnauthenticated, alg)
	}
	return usable, nil
}

// keySet asks the key source for the current keys.
func (a *JWTAuthenticator) keySet(ctx context.Context) (*jose.JSONWebKeySet, error) {
	set, err := a.keys.KeySet(ctx)
	if err != nil {
		return nil, fmt.Errorf("token signing keys: %w", err)
	}
	if set == nil {
		return nil, errors.New("token signing keys: key source returned no key set")
	}
	return set, nil
}

// keyFits reports whether k may verify a signature made with alg: its use,
// declared algorithm and key type must all agree.
func keyFits(k jose.JSONWebKey, alg jose.SignatureAlgorithm) bool {
	if k.Use != "" && k.Use != "sig" {
		return false
	}
	if k.Algorithm != "" && k.Algorithm != string(alg) {
		return false
	}
	switch alg {
	case jose.RS256, jose.RS384, jose.RS512, jose.PS256:
		_, ok := k.Key.(*rsa.PublicKey)
		return ok
	case jose.ES256:
		pub, ok := k.Key.(*ecdsa.PublicKey)
		return ok && pub.Curve == elliptic.P256()
	case jose.ES384:
		pub, ok := k.Key.(*ecdsa.PublicKey)
		return ok && pub.Curve == elliptic.P384()
	}
	return false
}

// checkClaims checks iss, exp, nbf, iat and aud of a verified token.
func (a *JWTAuthenticator) checkClaims(c *jwt.Claims) error {
	if c.Issuer != a.issuer {
		return fmt.Errorf("%w: token issuer %s is not the trusted issuer %q", ErrUnauthenticated, quote(c.Issuer), a.issuer)
	}
	now := a.now()
	if c.Expiry == nil {
		return fmt.Errorf("%w: token has no expiry (exp claim)", ErrUnauthenticated)
	}
	if exp := c.Expiry.Time(); now.After(exp.Add(a.leeway)) {
		return fmt.Errorf("%w: token expired at %s", ErrUnauthenticated, exp.UTC().Format(time.RFC3339))
	}
	if c.NotBefore != nil {
		if nbf := c.NotBefore.Time(); now.Add(a.leeway).Before(nbf) {
			return fmt.Errorf("%w: token is not valid before %s", ErrUnauthenticated, nbf.UTC().Format(time.RFC3339))
		}
	}
	if c.IssuedAt != nil {
		if iat := c.IssuedAt.Time(); now.Add(a.leeway).Before(iat) {
			return fmt.Errorf("%w: token was issued in the future, at %s", ErrUnauthenticated, iat.UTC().Format(time.RFC3339))
		}
	}
	if !slices.ContainsFunc(a.audiences, c.Audience.Contains) {
		return fmt.Errorf("%w: token audience %s does not include %s", ErrUnauthenticated, clip([]string(c.Audience)), describeAudiences(a.audiences))
	}
	return nil
}

// describeAudiences names the wanted audiences for an error message.
func describeAudiences(auds []string) string {
	if len(auds) == 1 {
		return auds[0]
	}
	return "any of " + fmt.Sprint(auds)
}

// serviceAccountFromClaims finds the namespace and service account of a
// verified token. The kubernetes.io claim is required. The subject, when
// present, must be system:serviceaccount:<ns>:<sa> and agree with it; it
// fills a part the claim leaves out only if it agrees on the other part.
func serviceAccountFromClaims(kube *kubernetesClaims, sub string) (ns, sa string, err error) {
	subNS, subSA, subOK := parseServiceAccountUser(sub)
	if sub != "" && !subOK {
		return "", "", fmt.Errorf("%w: token subject %s is not system:serviceaccount:<namespace>:<name>", ErrUnauthenticated, quote(sub))
	}
	k := kube.Kubernetes
	if k == nil {
		return "", "", fmt.Errorf("%w: token has no kubernetes.io claim; expected a kubernetes service account token", ErrUnauthenticated)
	}
	ns = k.Namespace
	if k.ServiceAccount != nil {
		sa = k.ServiceAccount.Name
	}
	if subOK {
		if ns == "" {
			ns = subNS
		}
		if sa == "" {
			sa = subSA
		}
		if ns != subNS || sa != subSA {
			return "", "", fmt.Errorf("%w: token subject %s disagrees with its kubernetes.io claim (namespace %s, service account %s)",
				ErrUnauthenticated, quote(sub), quote(ns), quote(sa))
		}
	}
	switch {
	case ns == "":
		return "", "", fmt.Errorf("%w: token kubernetes.io claim names no namespace", ErrUnauthenticated)
	case sa == "":
		return "", "", fmt.Errorf("%w: token kubernetes.io claim names no service account", ErrUnauthenticated)
	case !validNamespace(ns):
		return "", "", fmt.Errorf("%w: token names the invalid namespace %s", ErrUnauthenticated, quote(ns))
	case !validServiceAccount(sa):
		return "", "", fmt.Errorf("%w: token names the invalid service account %s", ErrUnauthenticated, quote(sa))
	}
	return ns, sa, nil
}

// publicKeySet checks a key set for verification use: at least one key, no
// private or symmetric keys, RSA keys of at least 2048 bits.
func publicKeySet(set *jose.JSONWebKeySet) (*jose.JSONWebKeySet, error) {
	if set == nil || len(set.Keys) == 0 {
		return nil, errors.New("key set holds no keys")
	}
	out := &jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(set.Keys))}
	for i, k := range set.Keys {
		switch key := k.Key.(type) {
		case []byte:
			return nil, fmt.Errorf("key %d (kid %q) is a symmetric key; only public keys may verify tokens", i, k.KeyID)
		case *rsa.PublicKey:
			if key.N.BitLen() < 2048 {
				return nil, fmt.Errorf("key %d (kid %q) is RSA-%d; at least 2048 bits are required", i, k.KeyID, key.N.BitLen())
			}
		}
		if !k.IsPublic() {
			return nil, fmt.Errorf("key %d (kid %q) is a private key; publish only public keys", i, k.KeyID)
		}
		out.Keys = append(out.Keys, k)
	}
	return out, nil
}

// LoadJWKSFile reads a JSON Web Key Set, such as the output of
// `kubectl get --raw /openid/v1/jwks`, from a file.
func LoadJWKSFile(path string) (*jose.JSONWebKeySet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load jwks: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxJSONBytes+1))
	if err != nil {
		return nil, fmt.Errorf("load jwks %s: %w", path, err)
	}
	if len(data) > maxJSONBytes {
		return nil, fmt.Errorf("load jwks %s: file is larger than %d bytes", path, maxJSONBytes)
	}
	var set jose.JSONWebKeySet
	if err := josejson.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("load jwks %s: %w", path, err)
	}
	out, err := publicKeySet(&set)
	if err != nil {
		return nil, fmt.Errorf("load jwks %s: %w", path, err)
	}
	return out, nil
}

// DiscoverJWKS finds an issuer's keys by OpenID Connect discovery: it fetches
// <issuerURL>/.well-known/openid-configuration, checks that the document names
// exactly issuerURL as its issuer, then fetches its jwks_uri. Both URLs must
// be https. A network failure, a 429 or a 5xx answer wraps ErrUnavailable. A
// nil client means one with a 10 second timeout.
func DiscoverJWKS(ctx context.Context, client *http.Client, issuerURL string) (*jose.JSONWebKeySet, error) {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	if err := requireHTTPS(issuerURL); err != nil {
		return nil, fmt.Errorf("discover jwks: issuer: %w", err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	configURL := strings.TrimSuffix(issuerURL, "/") + "/.well-known/openid-configuration"
	if err := getJSON(ctx, client, configURL, &doc); err != nil {
		return nil, fmt.Errorf("discover jwks: %w", err)
	}
	if doc.Issuer != issuerURL {
		return nil, fmt.Errorf("discover jwks: %s names the issuer %q, not %q", configURL, doc.Issuer, issuerURL)
	}
	if err := requireHTTPS(doc.JWKSURI); err != nil {
		return nil, fmt.Errorf("discover jwks: jwks_uri: %w", err)
	}
	var set jose.JSONWebKeySet
	if err := getJSON(ctx, client, doc.JWKSURI, &set); err != nil {
		return nil, fmt.Errorf("discover jwks: %w", err)
	}
	out, err := publicKeySet(&set)
	if err != nil {
		return nil, fmt.Errorf("discover jwks: %s: %w", doc.JWKSURI, err)
	}
	return out, nil
}

// requireHTTPS checks that s is an absolute https URL.
func requireHTTPS(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%q is not an absolute https url", s)
	}
	return nil
}

// getJSON fetches a JSON document. Failures to reach the server and answers
// that say "try later" wrap ErrUnavailable.
func getJSON(ctx context.Context, client *http.Client, u string, dst any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: GET %s: %w", ErrUnavailable, u, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJSONBytes+1))
	if err != nil {
		return fmt.Errorf("%w: GET %s: reading the answer: %w", ErrUnavailable, u, err)
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("%w: GET %s: %s", ErrUnavailable, u, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	case len(body) > maxJSONBytes:
		return fmt.Errorf("GET %s: answer is larger than %d bytes", u, maxJSONBytes)
	}
	if err := josejson.Unmarshal(body, dst); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	return nil
}

// RemoteKeySource is a KeySource that finds an issuer's keys by OpenID
// discovery (DiscoverJWKS). It keeps the keys for MaxAge, then fetches again;
// while a fetch fails it keeps serving the keys it has. When a token names an
// unknown key id it fetches again at once, but at most once per MinRefresh.
// Set MaxAge and MinRefresh, if at all, before the first use.
type RemoteKeySource struct {
	// MaxAge is how long fetched keys are served before the next fetch.
	MaxAge time.Duration
	// MinRefresh is the least time between two fetches.
	MinRefresh time.Duration

	client *http.Client
	issuer string
	now    func() time.Time

	fetchMu sync.Mutex // held during a fetch

	mu          sync.Mutex // guards the fields below
	set         *jose.JSONWebKeySet
	fetched     time.Time // when set was fetched
	lastAttempt time.Time // when the last fetch started
	lastErr     error     // how the last fetch failed, nil if it did not
}

// NewRemoteKeySource returns a source for issuerURL with MaxAge 5 minutes and
// MinRefresh 10 seconds. It fetches nothing until first asked. A nil client
// means one with a 10 second timeout.
func NewRemoteKeySource(client *http.Client, issuerURL string) *RemoteKeySource {
	return &RemoteKeySource{
		MaxAge:     5 * time.Minute,
		MinRefresh: 10 * time.Second,
		client:     client,
		issuer:     issuerURL,
		now:        time.Now,
	}
}

// KeySet implements KeySource. It fails only when no keys were ever fetched.
func (s *RemoteKeySource) KeySet(ctx context.Context) (*jose.JSONWebKeySet, error) {
	s.mu.Lock()
	set, fresh := s.set, s.set != nil && s.now().Sub(s.fetched) < s.MaxAge
	s.mu.Unlock()
	if fresh {
		return set, nil
	}
	if set != nil {
		// Stale: refresh unless another request already is; meanwhile the
		// old keys keep working.
		if s.fetchMu.TryLock() {
			_ = s.fetchLocked(ctx)
			s.fetchMu.Unlock()
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.set, nil
	}
	s.fetchMu.Lock()
	defer s.fetchMu.Unlock()
	if err := s.fetchLocked(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.set == nil {
		// A fetch failed within MinRefresh; do not hammer the issuer.
		return nil, s.lastErr
	}
	return s.set, nil
}

// Refresh fetches the keys again now unless the last fetch started less than
// MinRefresh ago.
func (s *RemoteKeySource) Refresh(ctx context.Context) error {
	s.fetchMu.Lock()
	defer s.fetchMu.Unlock()
	return s.fetchLocked(ctx)
}

// fetchLocked fetches the keys; the caller holds fetchMu. Within MinRefresh
// of the last attempt it does nothing.
func (s *RemoteKeySource) fetchLocked(ctx context.Context) error {
	s.mu.Lock()
	if !s.lastAttempt.IsZero() && s.now().Sub(s.lastAttempt) < s.MinRefresh {
		s.mu.Unlock()
		return nil
	}
	s.lastAttempt = s.now()
	s.mu.Unlock()
	set, err := DiscoverJWKS(ctx, s.client, s.issuer)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
	if err != nil {
		return err
	}
	s.set, s.fetched = set, s.now()
	return nil
}

// TokenMinter issues tokens shaped like projected Kubernetes service-account
// tokens. It serves development mode and tests; production tokens come from
// the Kubernetes API server.
type TokenMinter struct {
	// Now returns the time tokens are stamped with. Nil means time.Now.
	Now func() time.Time

	signer jose.Signer
	public jose.JSONWebKey
	issuer string
}

// NewTokenMinter returns a minter that signs with signer (RSA of at least
// 2048 bits: RS256; ECDSA P-256: ES256; ECDSA P-384: ES384) under key id kid,
// as issuer.
func NewTokenMinter(signer crypto.Signer, kid, issuer string) (*TokenMinter, error) {
	var alg jose.SignatureAlgorithm
	switch pub := signer.Public().(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < 2048 {
			return nil, fmt.Errorf("token minter: RSA-%d key is too small; use at least 2048 bits", pub.N.BitLen())
		}
		alg = jose.RS256
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256():
			alg = jose.ES256
		case elliptic.P384():
			alg = jose.ES384
		default:
			return nil, fmt.Errorf("token minter: ECDSA %s is not supported; use P-256 or P-384", pub.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("token minter: %T keys are not supported", pub)
	}
	if issuer == "" {
		return nil, errors.New("token minter: issuer is empty")
	}
	public := jose.JSONWebKey{Key: signer.Public(), KeyID: kid, Algorithm: string(alg), Use: "sig"}
	js, err := jose.NewSigner(jose.SigningKey{
		Algorithm: alg,
		Key:       kidSigner{OpaqueSigner: cryptosigner.Opaque(signer), public: public},
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("token minter: %w", err)
	}
	return &TokenMinter{signer: js, public: public, issuer: issuer}, nil
}

// kidSigner makes go-jose put the key id in the header it signs.
type kidSigner struct {
	jose.OpaqueSigner
	public jose.JSONWebKey
}

func (s kidSigner) Public() *jose.JSONWebKey { return &s.public }

// mintedClaims is the payload of a minted token.
type mintedClaims struct {
	jwt.Claims
	Kubernetes mintedKubernetes `json:"kubernetes.io"`
}

type mintedKubernetes struct {
	Namespace      string        `json:"namespace"`
	ServiceAccount mintedNameUID `json:"serviceaccount"`
}

type mintedNameUID struct {
	Name string `json:"name"`
}

// Mint returns a token for service account sa in namespace ns, for the
// given audiences, valid for ttl from now.
func (m *TokenMinter) Mint(ns, sa string, audiences []string, ttl time.Duration) (string, error) {
	if !validNamespace(ns) || !validServiceAccount(sa) {
		return "", fmt.Errorf("mint token: %q/%q is not a valid namespace and service account", ns, sa)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("mint token: ttl %s is not positive", ttl)
	}
	now := time.Now
	if m.Now != nil {
		now = m.Now
	}
	t := now()
	claims := mintedClaims{
		Claims: jwt.Claims{
			Issuer:    m.issuer,
			Subject:   serviceAccountPrefix + ns + ":" + sa,
			Audience:  jwt.Audience(audiences),
			Expiry:    jwt.NewNumericDate(t.Add(ttl)),
			NotBefore: jwt.NewNumericDate(t),
			IssuedAt:  jwt.NewNumericDate(t),
		},
		Kubernetes: mintedKubernetes{Namespace: ns, ServiceAccount: mintedNameUID{Name: sa}},
	}
	token, err := jwt.Signed(m.signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return token, nil
}

// JWKS returns the public key that verifies minted tokens, as a key set.
func (m *TokenMinter) JWKS() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{m.public}}
}
