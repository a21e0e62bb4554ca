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
	"math/big"
	"reflect"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejson "github.com/go-jose/go-jose/v4/json"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/transitca/transitca/internal/spiffeid"
)

// DefaultAudience is the audience istio-agent requests for its token.
const DefaultAudience = "istio-ca"

// DefaultLeeway is the clock skew tolerated on exp, nbf and iat.
const DefaultLeeway = 30 * time.Second

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
	clusters, audiences, err := tokenScope(opts.TrustDomain, opts.Clusters, opts.Audiences)
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
	Kubernetes *kubernetesIdentity `json:"kubernetes.io,omitempty"`
}

// kubernetesIdentity is what the kubernetes.io claim holds.
type kubernetesIdentity struct {
	Namespace      string         `json:"namespace"`
	ServiceAccount *kubernetesRef `json:"serviceaccount,omitempty"`
	Pod            *kubernetesRef `json:"pod,omitempty"`
}

// kubernetesRef names a Kubernetes object of the kubernetes.io claim.
type kubernetesRef struct {
	Name string `json:"name"`
	UID  string `json:"uid,omitempty"`
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
	var claims struct {
		jwt.Claims
		kubernetesClaims
	}
	if err := josejson.Unmarshal(payload, &claims); err != nil {
		what := "token claims are malformed"
		if te, ok := errors.AsType[*josejson.UnmarshalTypeError](err); ok &&
			(te.Type == reflect.TypeFor[kubernetesIdentity]() || te.Type == reflect.TypeFor[kubernetesRef]()) {
			what = "token kubernetes.io claim is malformed"
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrUnauthenticated, what, err)
	}
	std, kube := &claims.Claims, &claims.kubernetesClaims
	if err := a.checkClaims(std); err != nil {
		return nil, err
	}
	ns, sa, err := serviceAccountFromClaims(kube, std.Subject)
	if err != nil {
		return nil, err
	}
	subject := std.Subject
	if subject == "" {
		subject = serviceAccountPrefix + ns + ":" + sa
	}
	c := newCaller(a.trustDomain, ns, sa, cluster, AuthJWT, subject)
	if c.PodName, c.PodUID, err = podFromClaims(kube); err != nil {
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
	jws, err := parseCompact(token, jwtAlgorithms)
	if err != nil {
		return nil, err
	}
	keys, err := a.candidateKeys(ctx, jws.hdr.Kid, jws.alg)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if jws.verify(k.Key) {
			return jws.payload, nil
		}
	}
	if jws.hdr.Kid != "" {
		return nil, fmt.Errorf("%w: token signature does not verify with key id %s", ErrUnauthenticated, quote(jws.hdr.Kid))
	}
	return nil, fmt.Errorf("%w: token has no key id and its signature verifies with none of the %d trusted keys", ErrUnauthenticated, len(keys))
}

// compactJWS is a token in the JWS compact serialization, decoded once.
type compactJWS struct {
	hdr     jwtHeader
	alg     jose.SignatureAlgorithm
	signed  string // header "." payload, the JWS signing input
	payload []byte
	sig     []byte
}

// parseCompact checks that token is a canonical JWS compact serialization
// (three base64url parts, no padding, no stray characters, no non-canonical
// trailing bits) and decodes it. It refuses an algorithm not in algs by
// name before anything else is looked at.
func parseCompact(token string, algs []jose.SignatureAlgorithm) (*compactJWS, error) {
	switch n := strings.Count(token, ".") + 1; n {
	case 3:
	case 5:
		return nil, fmt.Errorf("%w: token is an encrypted jwt (jwe); expected a signed one", ErrUnauthenticated)
	default:
		return nil, fmt.Errorf("%w: token is not a jwt: expected 3 dot-separated parts, got %d", ErrUnauthenticated, n)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; !isBase64URL(c) && c != '.' {
			return nil, fmt.Errorf("%w: token has the character %q at offset %d, outside base64url", ErrUnauthenticated, c, i)
		}
	}
	dot1 := strings.IndexByte(token, '.')
	dot2 := strings.LastIndexByte(token, '.')
	enc := base64.RawURLEncoding.Strict()
	raw, err := enc.DecodeString(token[:dot1])
	if err != nil {
		return nil, fmt.Errorf("%w: token header is not canonical base64url: %w", ErrUnauthenticated, err)
	}
	j := &compactJWS{signed: token[:dot2]}
	if err := josejson.Unmarshal(raw, &j.hdr); err != nil {
		return nil, fmt.Errorf("%w: token header is not a json object: %w", ErrUnauthenticated, err)
	}
	if j.hdr.Alg == "" {
		return nil, fmt.Errorf("%w: token header names no algorithm", ErrUnauthenticated)
	}
	j.alg = jose.SignatureAlgorithm(j.hdr.Alg)
	if !slices.Contains(algs, j.alg) {
		return nil, fmt.Errorf("%w: token algorithm %s is not allowed", ErrUnauthenticated, quote(j.hdr.Alg))
	}
	if j.hdr.Crit != nil || j.hdr.B64 != nil {
		return nil, fmt.Errorf("%w: token header carries crit or b64, which service account tokens never do", ErrUnauthenticated)
	}
	if j.payload, err = enc.DecodeString(token[dot1+1 : dot2]); err != nil {
		return nil, fmt.Errorf("%w: token payload is not canonical base64url: %w", ErrUnauthenticated, err)
	}
	if j.sig, err = enc.DecodeString(token[dot2+1:]); err != nil || len(j.sig) == 0 {
		return nil, fmt.Errorf("%w: token signature is missing or not canonical base64url", ErrUnauthenticated)
	}
	return j, nil
}

// verify reports whether j's signature verifies under key with j's
// algorithm, as RFC 7518 section 3 defines them: RSASSA-PKCS1-v1_5 and
// RSASSA-PSS over the signing input's SHA-2 digest, and ECDSA with the
// signature as the fixed-size R || S of the curve. candidateKeys has
// matched the key's type and curve to the algorithm.
func (j *compactJWS) verify(key any) bool {
	var h crypto.Hash
	switch j.alg {
	case jose.RS256, jose.ES256, jose.PS256:
		h = crypto.SHA256
	case jose.RS384, jose.ES384:
		h = crypto.SHA384
	case jose.RS512:
		h = crypto.SHA512
	default:
		return false
	}
	d := h.New()
	_, _ = io.WriteString(d, j.signed)
	digest := d.Sum(nil)
	switch pub := key.(type) {
	case *rsa.PublicKey:
		if j.alg == jose.PS256 {
			return rsa.VerifyPSS(pub, h, digest, j.sig, nil) == nil
		}
		return rsa.VerifyPKCS1v15(pub, h, digest, j.sig) == nil
	case *ecdsa.PublicKey:
		size := (pub.Curve.Params().BitSize + 7) / 8
		if len(j.sig) != 2*size {
			return false
		}
		r := new(big.Int).SetBytes(j.sig[:size])
		s := new(big.Int).SetBytes(j.sig[size:])
		return ecdsa.Verify(pub, digest, r, s)
	}
	return false
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

// checkClaims checks iss, exp, nbf, iat and aud of a verified token with
// go-jose's validation, exp being required, and says which failed.
func (a *JWTAuthenticator) checkClaims(c *jwt.Claims) error {
	if c.Expiry == nil {
		return fmt.Errorf("%w: token has no expiry (exp claim)", ErrUnauthenticated)
	}
	err := c.ValidateWithLeeway(jwt.Expected{Issuer: a.issuer, AnyAudience: a.audiences, Time: a.now()}, a.leeway)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return fmt.Errorf("%w: token issuer %s is not the trusted issuer %q", ErrUnauthenticated, quote(c.Issuer), a.issuer)
	case errors.Is(err, jwt.ErrInvalidAudience):
		return fmt.Errorf("%w: token audience %s does not include %s", ErrUnauthenticated, clip([]string(c.Audience)), describeAudiences(a.audiences))
	case errors.Is(err, jwt.ErrExpired):
		return fmt.Errorf("%w: token expired at %s", ErrUnauthenticated, c.Expiry.Time().UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrNotValidYet):
		return fmt.Errorf("%w: token is not valid before %s", ErrUnauthenticated, c.NotBefore.Time().UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return fmt.Errorf("%w: token was issued in the future, at %s", ErrUnauthenticated, c.IssuedAt.Time().UTC().Format(time.RFC3339))
	}
	return fmt.Errorf("%w: token claims: %w", ErrUnauthenticated, err)
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
	case !spiffeid.ValidNamespace(ns):
		return "", "", fmt.Errorf("%w: token names the invalid namespace %s", ErrUnauthenticated, quote(ns))
	case !spiffeid.ValidServiceAccount(sa):
		return "", "", fmt.Errorf("%w: token names the invalid service account %s", ErrUnauthenticated, quote(sa))
	}
	return ns, sa, nil
}
