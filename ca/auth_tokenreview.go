package ca

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejson "github.com/go-jose/go-jose/v4/json"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
)

// Defaults for a TokenReviewAuthenticator running in a pod.
const (
	DefaultReviewerTokenFile  = "/var/run/secrets/kubernetes.io/serviceaccount/token" //nolint:gosec // a path, not a credential
	DefaultClusterCAFile      = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	DefaultTokenReviewTimeout = 5 * time.Second
	// DefaultTokenReviewCacheSize bounds the number of cached reviews when
	// TokenReviewOptions.CacheSize is zero.
	DefaultTokenReviewCacheSize = 10000
	// DefaultTokenReviewConcurrency bounds the reviews in flight at once
	// when TokenReviewOptions.MaxConcurrentReviews is zero.
	DefaultTokenReviewConcurrency = 64
)

// tokenReviewPath is where the Kubernetes API creates TokenReviews.
const tokenReviewPath = "/apis/authentication.k8s.io/v1/tokenreviews"

// The user's extra fields in which the API reports the pod a token is bound
// to.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// TokenReviewOptions configure a TokenReviewAuthenticator. Reviews go either
// through Client or, when Client is nil, through a plain HTTPS client built
// from APIServer, TokenFile and CAFile.
type TokenReviewOptions struct {
	// Client, when set, sends the reviews through this Kubernetes client
	// (client-go): its credentials, TLS settings and client-side rate limit
	// (rest.Config QPS and Burst) apply. APIServer, TokenFile and CAFile
	// must then be empty. Its identity needs create on tokenreviews (the
	// system:auth-delegator cluster role).
	Client kubernetes.Interface
	// APIServer is the Kubernetes API's base URL, e.g.
	// https://kubernetes.default.svc. Empty means the in-cluster address from
	// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT.
	APIServer string
	// TokenFile holds the bearer token this CA presents to the API (its own
	// service-account token, which needs the system:auth-delegator role or
	// create on tokenreviews). It is read again whenever it changes. Empty
	// means DefaultReviewerTokenFile.
	TokenFile string
	// CAFile holds the PEM bundle that verifies the API's serving
	// certificate. Empty means DefaultClusterCAFile.
	CAFile string
	// Audiences are sent with each review; the API must confirm at least one.
	// Empty means [DefaultAudience].
	Audiences []string
	// Timeout bounds one review. Zero means DefaultTokenReviewTimeout.
	Timeout time.Duration
	// TrustDomain is the SPIFFE trust domain of the identities issued.
	TrustDomain string
	// Clusters lists the accepted clusterid values. Empty means
	// [DefaultCluster].
	Clusters []string
	// Issuers are the iss values of the cluster's service-account tokens
	// (kube-apiserver's --service-account-issuer, every one of them while
	// the issuer changes; a legacy Secret-based token carries
	// kubernetes/serviceaccount). A token naming another issuer is refused
	// without a review. Empty accepts any issuer; a token must still be a
	// well-formed signed JWT (see TokenReviewAuthenticator.Authenticate).
	Issuers []string
	// CacheTTL is how long an accepted token is trusted without asking the
	// API again, never beyond the token's own expiry. Refusals and errors
	// are not cached. Zero disables the cache. A token revoked (its pod
	// deleted) keeps working for up to CacheTTL here, plus the API
	// server's own cache of successful authentications (10s).
	CacheTTL time.Duration
	// CacheSize bounds the number of cached reviews. Zero means
	// DefaultTokenReviewCacheSize.
	CacheSize int
	// MaxConcurrentReviews bounds the TokenReviews in flight at once;
	// further reviews wait for a free slot (within the caller's deadline).
	// Zero means DefaultTokenReviewConcurrency. Concurrent requests with
	// one token always share one review.
	MaxConcurrentReviews int
	// Metrics, when set, counts the reviews sent and the cache lookups.
	Metrics *Metrics
}

// TokenReviewAuthenticator asks the Kubernetes API, with a TokenReview, whether
// a bearer token is valid and whose it is. Unlike offline JWT checks this sees
// revocation: a token whose pod was deleted stops working, once the caches
// described at TokenReviewOptions.CacheTTL have expired.
type TokenReviewAuthenticator struct {
	// review sends one TokenReview: through client-go or plain HTTPS.
	review func(ctx context.Context, token string) (*tokenReviewStatus, error)

	kube     kubernetes.Interface // the client-go path
	url      string               // the HTTPS path
	client   *http.Client
	reviewer *tokenFile

	audiences   []string
	timeout     time.Duration
	trustDomain string
	clusters    []string
	issuers     []string     // empty: any
	cache       *reviewCache // nil when disabled
	flights     *reviewFlights
	slots       reviewSlots
	metrics     *Metrics
}

// NewTokenReviewAuthenticator checks opts, reads the CA bundle and the
// reviewer token once to fail early (without Client), and returns the
// authenticator.
func NewTokenReviewAuthenticator(opts TokenReviewOptions) (*TokenReviewAuthenticator, error) {
	clusters, audiences, err := tokenScope(opts.TrustDomain, opts.Clusters, opts.Audiences)
	if err != nil {
		return nil, fmt.Errorf("tokenreview authenticator: %w", err)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = DefaultTokenReviewTimeout
	}
	if timeout < 0 {
		return nil, fmt.Errorf("tokenreview authenticator: timeout %s is negative", timeout)
	}
	if opts.CacheTTL < 0 {
		return nil, fmt.Errorf("tokenreview authenticator: cache ttl %s is negative", opts.CacheTTL)
	}
	if opts.CacheSize < 0 {
		return nil, fmt.Errorf("tokenreview authenticator: cache size %d is negative", opts.CacheSize)
	}
	slots := opts.MaxConcurrentReviews
	if slots == 0 {
		slots = DefaultTokenReviewConcurrency
	}
	if slots < 0 {
		return nil, fmt.Errorf("tokenreview authenticator: max concurrent reviews %d is negative", slots)
	}
	if slices.Contains(opts.Issuers, "") {
		return nil, errors.New("tokenreview authenticator: issuer list holds an empty issuer")
	}
	a := &TokenReviewAuthenticator{
		audiences:   audiences,
		timeout:     timeout,
		trustDomain: opts.TrustDomain,
		clusters:    clusters,
		issuers:     slices.Clone(opts.Issuers),
		flights:     newReviewFlights(),
		slots:       make(reviewSlots, slots),
		metrics:     opts.Metrics,
	}
	if opts.CacheTTL > 0 {
		size := opts.CacheSize
		if size == 0 {
			size = DefaultTokenReviewCacheSize
		}
		a.cache = newReviewCache(opts.CacheTTL, size, time.Now)
	}
	if opts.Client != nil {
		if opts.APIServer != "" || opts.TokenFile != "" || opts.CAFile != "" {
			return nil, errors.New("tokenreview authenticator: api server, token file and ca file come from the kubernetes client when one is given; leave them empty")
		}
		a.kube = opts.Client
		a.review = a.clientReview
		return a, nil
	}
	if err := a.setupHTTP(opts, timeout); err != nil {
		return nil, fmt.Errorf("tokenreview authenticator: %w", err)
	}
	a.review = a.httpReview
	return a, nil
}

// setupHTTP builds the plain HTTPS path from APIServer, TokenFile and
// CAFile.
func (a *TokenReviewAuthenticator) setupHTTP(opts TokenReviewOptions, timeout time.Duration) error {
	base := opts.APIServer
	if base == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return errors.New("no api server given and KUBERNETES_SERVICE_HOST/PORT are unset (not running in a pod?)")
		}
		base = "https://" + net.JoinHostPort(host, port)
	}
	if err := requireHTTPS(base); err != nil {
		return fmt.Errorf("api server: %w", err)
	}
	caFile := opts.CAFile
	if caFile == "" {
		caFile = DefaultClusterCAFile
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("cluster ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("cluster ca %s holds no pem certificates", caFile)
	}
	tokenPath := opts.TokenFile
	if tokenPath == "" {
		tokenPath = DefaultReviewerTokenFile
	}
	reviewer := &tokenFile{path: tokenPath}
	if _, err := reviewer.get(false); err != nil {
		return err
	}
	transport := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: timeout,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	a.url = strings.TrimSuffix(base, "/") + tokenReviewPath
	a.client = &http.Client{Transport: transport, Timeout: timeout}
	a.reviewer = reviewer
	return nil
}

// tokenReview is the authentication.k8s.io/v1 TokenReview object, reduced to
// the fields this CA sends and reads.
type tokenReview struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Spec       tokenReviewSpec   `json:"spec"`
	Status     tokenReviewStatus `json:"status,omitzero"`
}

type tokenReviewSpec struct {
	Token     string   `json:"token"`
	Audiences []string `json:"audiences,omitempty"`
}

type tokenReviewStatus struct {
	Authenticated bool     `json:"authenticated,omitempty"`
	User          userInfo `json:"user,omitzero"`
	Audiences     []string `json:"audiences,omitempty"`
	Error         string   `json:"error,omitempty"`
}

type userInfo struct {
	Username string              `json:"username,omitempty"`
	UID      string              `json:"uid,omitempty"`
	Groups   []string            `json:"groups,omitempty"`
	Extra    map[string][]string `json:"extra,omitempty"`
}

// apiStatus is the meta/v1 Status the API answers failures with.
type apiStatus struct {
	Message string `json:"message"`
	Reason  string `json:"reason"`
}

// serviceAccountsGroup is the group of every service account user.
const serviceAccountsGroup = "system:serviceaccounts"

// Authenticate implements Authenticator. A token that cannot be a
// service-account token is refused before any review (see screen); a
// token the API refuses wraps ErrUnauthenticated; an API that cannot be
// reached, times out or answers 429/5xx wraps ErrUnavailable; an API that
// refuses this CA's own credentials (401/403) is a configuration fault and
// wraps neither. An accepted token is cached (see
// TokenReviewOptions.CacheTTL); concurrent requests with one token share
// one review; the cluster is checked on every request, cached or not.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, cred Credentials) (*Caller, error) {
	cluster, err := checkCluster(cred.ClusterID, a.clusters)
	if err != nil {
		return nil, err
	}
	if err := checkTokenSize(cred.Token); err != nil {
		return nil, err
	}
	key := reviewKeyOf(cred.Token)
	if a.cache != nil {
		if id, ok := a.cache.get(key); ok {
			a.metrics.observeTokenReviewCache(cacheHit)
			return id.caller(a.trustDomain, cluster), nil
		}
	}
	if err := a.screen(cred.Token); err != nil {
		return nil, err
	}
	id, shared, err := a.flights.do(ctx, key, func(ctx context.Context) (*reviewedIdentity, error) {
		return a.reviewToken(ctx, key, cred.Token)
	})
	if a.cache != nil {
		result := cacheMiss
		if shared {
			result = cacheShared
		}
		a.metrics.observeTokenReviewCache(result)
	}
	if err != nil {
		return nil, err
	}
	return id.caller(a.trustDomain, cluster), nil
}

// reviewAlgorithms are the signature algorithms a token may name to be
// reviewed: those kube-apiserver signs service-account tokens with (RS256,
// ES256, ES384, ES512) and the other asymmetric ones offline checks
// accept; never "none", never an HMAC.
var reviewAlgorithms = append(slices.Clip(jwtAlgorithms), jose.ES512)

// screen refuses, without a review, a token that cannot be a
// service-account token: not a signed JWT in compact form (three canonical
// base64url parts), a header that is not a JSON object naming one of
// reviewAlgorithms, a payload that is not a JSON object with a string iss,
// or, with TokenReviewOptions.Issuers, an iss that is not one of them. The
// signature is the API server's to check.
func (a *TokenReviewAuthenticator) screen(token string) error {
	jws, err := parseCompact(token, reviewAlgorithms)
	if err != nil {
		return err
	}
	var claims struct {
		Issuer string `json:"iss"`
	}
	if err := josejson.Unmarshal(jws.payload, &claims); err != nil {
		return fmt.Errorf("%w: token payload is not a json object with a string iss: %w", ErrUnauthenticated, err)
	}
	if claims.Issuer == "" {
		return fmt.Errorf("%w: token names no issuer (iss claim)", ErrUnauthenticated)
	}
	if len(a.issuers) > 0 && !slices.Contains(a.issuers, claims.Issuer) {
		return fmt.Errorf("%w: token issuer %s is not this cluster's (%s)", ErrUnauthenticated, quote(claims.Issuer), clip(a.issuers))
	}
	return nil
}

// reviewToken sends one TokenReview, in a free slot, checks its answer and
// caches an acceptance.
func (a *TokenReviewAuthenticator) reviewToken(ctx context.Context, key reviewKey, token string) (*reviewedIdentity, error) {
	if err := a.slots.acquire(ctx); err != nil {
		return nil, err
	}
	status, err := a.review(ctx, token)
	a.slots.release()
	if err != nil {
		a.metrics.observeTokenReview(reviewError)
		return nil, err
	}
	id, err := a.check(status)
	if err != nil {
		a.metrics.observeTokenReview(reviewRefused)
		return nil, err
	}
	a.metrics.observeTokenReview(reviewAuthenticated)
	if a.cache != nil {
		a.cache.put(key, id, tokenExpiry(token))
	}
	return id, nil
}

// reviewedIdentity is what an accepted review established about a token.
type reviewedIdentity struct {
	namespace, serviceAccount, user string
	podName, podUID                 string
}

func (id *reviewedIdentity) caller(trustDomain, cluster string) *Caller {
	c := newCaller(trustDomain, id.namespace, id.serviceAccount, cluster, AuthTokenReview, id.user)
	c.PodName, c.PodUID = id.podName, id.podUID
	return c
}

// check interprets a review's answer.
func (a *TokenReviewAuthenticator) check(status *tokenReviewStatus) (*reviewedIdentity, error) {
	if !status.Authenticated {
		if status.Error != "" {
			return nil, fmt.Errorf("%w: kubernetes rejected the token: %s", ErrUnauthenticated, clip(status.Error))
		}
		return nil, fmt.Errorf("%w: kubernetes did not authenticate the token", ErrUnauthenticated)
	}
	if status.Error != "" {
		return nil, fmt.Errorf("%w: kubernetes authenticated the token but reported an error: %s", ErrUnauthenticated, clip(status.Error))
	}
	if !slices.ContainsFunc(status.Audiences, func(aud string) bool { return slices.Contains(a.audiences, aud) }) {
		return nil, fmt.Errorf("%w: token audience %s does not include %s", ErrUnauthenticated, clip(status.Audiences), describeAudiences(a.audiences))
	}
	user := status.User.Username
	ns, sa, ok := parseServiceAccountUser(user)
	if !ok {
		return nil, fmt.Errorf("%w: token belongs to %s, which is not a kubernetes service account", ErrUnauthenticated, quote(user))
	}
	if !slices.Contains(status.User.Groups, serviceAccountsGroup) {
		return nil, fmt.Errorf("%w: token user %s is not in the %s group", ErrUnauthenticated, quote(user), serviceAccountsGroup)
	}
	podName, err := extraValue(status.User.Extra, extraPodName, validPodName)
	if err != nil {
		return nil, err
	}
	podUID, err := extraValue(status.User.Extra, extraPodUID, validPodUID)
	if err != nil {
		return nil, err
	}
	return &reviewedIdentity{namespace: ns, serviceAccount: sa, user: user, podName: podName, podUID: podUID}, nil
}

// extraValue returns the single value of a user's extra field, or "" when
// the field is absent. Several values, or one that valid refuses, are a
// malformed answer and refuse the token.
func extraValue(extra map[string][]string, key string, valid func(string) bool) (string, error) {
	vs, ok := extra[key]
	if !ok {
		return "", nil
	}
	if len(vs) != 1 || !valid(vs[0]) {
		return "", fmt.Errorf("%w: kubernetes reported a malformed %s: %s", ErrUnauthenticated, key, clip(vs))
	}
	return vs[0], nil
}

// validPodName accepts a Kubernetes object name (a DNS-1123 subdomain).
func validPodName(s string) bool { return len(validation.IsDNS1123Subdomain(s)) == 0 }

// validPodUID accepts a Kubernetes UID: a UUID, or at least something of its
// alphabet and size.
func validPodUID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && c != '-' {
			return false
		}
	}
	return true
}

// clientReview creates one TokenReview through client-go.
func (a *TokenReviewAuthenticator) clientReview(ctx context.Context, token string) (*tokenReviewStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	tr, err := a.kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: a.audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, kubeReviewError(err)
	}
	st := tr.Status
	out := &tokenReviewStatus{
		Authenticated: st.Authenticated,
		Audiences:     st.Audiences,
		Error:         st.Error,
		User:          userInfo{Username: st.User.Username, UID: st.User.UID, Groups: st.User.Groups},
	}
	if len(st.User.Extra) > 0 {
		out.User.Extra = make(map[string][]string, len(st.User.Extra))
		for k, v := range st.User.Extra {
			out.User.Extra[k] = v
		}
	}
	return out, nil
}

// kubeReviewError classifies a client-go error the way post classifies an
// HTTP answer.
func kubeReviewError(err error) error {
	var se apierrors.APIStatus
	if !errors.As(err, &se) {
		// No answer: connection refused, timeout, the caller's context, the
		// client's own rate limiter.
		return fmt.Errorf("%w: tokenreview: kubernetes api: %w", ErrUnavailable, err)
	}
	st := se.Status()
	code := int(st.Code)
	switch {
	case code == http.StatusUnauthorized:
		return fmt.Errorf("tokenreview: kubernetes api refused this ca's credentials (%d): %s", code, st.Message)
	case code == http.StatusForbidden:
		return fmt.Errorf("tokenreview: this ca may not create tokenreviews; grant its service account system:auth-delegator (%d): %s", code, st.Message)
	case code == http.StatusTooManyRequests || code >= 500:
		return fmt.Errorf("%w: tokenreview: kubernetes api answered %d: %s", ErrUnavailable, code, st.Message)
	default:
		return fmt.Errorf("tokenreview: kubernetes api answered %d: %s", code, st.Message)
	}
}

// httpReview creates one TokenReview over plain HTTPS and returns its
// status. If the API refuses the reviewer token and the token file has
// changed since it was read, it tries once more with the new token.
func (a *TokenReviewAuthenticator) httpReview(ctx context.Context, token string) (*tokenReviewStatus, error) {
	body, err := json.Marshal(tokenReview{
		APIVersion: "authentication.k8s.io/v1",
		Kind:       "TokenReview",
		Spec:       tokenReviewSpec{Token: token, Audiences: a.audiences},
	})
	if err != nil {
		return nil, fmt.Errorf("tokenreview: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	reviewerToken, err := a.reviewer.get(false)
	if err != nil {
		return nil, fmt.Errorf("tokenreview: %w", err)
	}
	status, code, err := a.post(ctx, body, reviewerToken)
	if code == http.StatusUnauthorized {
		if fresh, ferr := a.reviewer.get(true); ferr == nil && fresh != reviewerToken {
			status, _, err = a.post(ctx, body, fresh)
		}
	}
	return status, err
}

// post sends one TokenReview and interprets the HTTP answer. It returns the
// status code so that the caller can retry a 401.
func (a *TokenReviewAuthenticator) post(ctx context.Context, body []byte, reviewerToken string) (*tokenReviewStatus, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url, bytes.NewReader(body))
	if err != nil {
		return nil, 0, fmt.Errorf("tokenreview: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+reviewerToken)
	req.Header.Set("User-Agent", "transitca")
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: tokenreview: kubernetes api: %w", ErrUnavailable, err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJSONBytes+1))
	if err != nil {
		return nil, 0, fmt.Errorf("%w: tokenreview: reading the kubernetes api answer: %w", ErrUnavailable, err)
	}
	code := resp.StatusCode
	switch {
	case code == http.StatusOK || code == http.StatusCreated:
	case code == http.StatusUnauthorized:
		return nil, code, fmt.Errorf("tokenreview: kubernetes api refused this ca's reviewer token (%s): %s", resp.Status, statusMessage(data))
	case code == http.StatusForbidden:
		return nil, code, fmt.Errorf("tokenreview: this ca may not create tokenreviews; grant its service account system:auth-delegator (%s): %s", resp.Status, statusMessage(data))
	case code == http.StatusTooManyRequests || code >= 500:
		return nil, code, fmt.Errorf("%w: tokenreview: kubernetes api answered %s: %s", ErrUnavailable, resp.Status, statusMessage(data))
	default:
		return nil, code, fmt.Errorf("tokenreview: kubernetes api answered %s: %s", resp.Status, statusMessage(data))
	}
	if len(data) > maxJSONBytes {
		return nil, code, fmt.Errorf("tokenreview: kubernetes api answer is larger than %d bytes", maxJSONBytes)
	}
	var tr tokenReview
	if err := json.Unmarshal(data, &tr); err != nil {
		return nil, code, fmt.Errorf("tokenreview: kubernetes api answer is not a tokenreview: %w", err)
	}
	if tr.Kind != "TokenReview" {
		return nil, code, fmt.Errorf("tokenreview: kubernetes api answered a %q, not a TokenReview", tr.Kind)
	}
	return &tr.Status, code, nil
}

// statusMessage extracts the message of a meta/v1 Status answer, or a short
// prefix of whatever else the body holds.
func statusMessage(body []byte) string {
	var st apiStatus
	if json.Unmarshal(body, &st) == nil && st.Message != "" {
		return st.Message
	}
	const max = 200
	s := strings.TrimSpace(string(body))
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// tokenFile is a token kept in a file that is replaced while the process
// runs, as the kubelet does with projected service-account tokens. The file
// is read again whenever its modification time or size changes.
type tokenFile struct {
	path string

	mu      sync.Mutex
	token   string
	modTime time.Time
	size    int64
}

// get returns the token, reading the file again if it changed or if force is
// set.
func (f *tokenFile) get(force bool) (string, error) {
	fi, err := os.Stat(f.path)
	if err != nil {
		return "", fmt.Errorf("reviewer token: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !force && f.token != "" && fi.ModTime().Equal(f.modTime) && fi.Size() == f.size {
		return f.token, nil
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return "", fmt.Errorf("reviewer token: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("reviewer token: %s is empty", f.path)
	}
	f.token, f.modTime, f.size = token, fi.ModTime(), fi.Size()
	return token, nil
}
