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
)

// Defaults for a TokenReviewAuthenticator running in a pod.
const (
	DefaultReviewerTokenFile  = "/var/run/secrets/kubernetes.io/serviceaccount/token" //nolint:gosec // a path, not a credential
	DefaultClusterCAFile      = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	DefaultTokenReviewTimeout = 5 * time.Second
)

// tokenReviewPath is where the Kubernetes API creates TokenReviews.
const tokenReviewPath = "/apis/authentication.k8s.io/v1/tokenreviews"

// TokenReviewOptions configure a TokenReviewAuthenticator.
type TokenReviewOptions struct {
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
}

// TokenReviewAuthenticator asks the Kubernetes API, with a TokenReview, whether
// a bearer token is valid and whose it is. Unlike offline JWT checks this sees
// revocation: a token whose pod was deleted stops working at once.
type TokenReviewAuthenticator struct {
	url         string
	client      *http.Client
	reviewer    *tokenFile
	audiences   []string
	timeout     time.Duration
	trustDomain string
	clusters    []string
}

// NewTokenReviewAuthenticator checks opts, reads the CA bundle and the
// reviewer token once to fail early, and returns the authenticator.
func NewTokenReviewAuthenticator(opts TokenReviewOptions) (*TokenReviewAuthenticator, error) {
	if err := validTrustDomain(opts.TrustDomain); err != nil {
		return nil, fmt.Errorf("tokenreview authenticator: %w", err)
	}
	clusters, err := clustersOrDefault(opts.Clusters)
	if err != nil {
		return nil, fmt.Errorf("tokenreview authenticator: %w", err)
	}
	audiences, err := audiencesOrDefault(opts.Audiences)
	if err != nil {
		return nil, fmt.Errorf("tokenreview authenticator: %w", err)
	}
	base := opts.APIServer
	if base == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return nil, errors.New("tokenreview authenticator: no api server given and KUBERNETES_SERVICE_HOST/PORT are unset (not running in a pod?)")
		}
		base = "https://" + net.JoinHostPort(host, port)
	}
	if err := requireHTTPS(base); err != nil {
		return nil, fmt.Errorf("tokenreview authenticator: api server: %w", err)
	}
	caFile := opts.CAFile
	if caFile == "" {
		caFile = DefaultClusterCAFile
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("tokenreview authenticator: cluster ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("tokenreview authenticator: cluster ca %s holds no pem certificates", caFile)
	}
	tokenPath := opts.TokenFile
	if tokenPath == "" {
		tokenPath = DefaultReviewerTokenFile
	}
	reviewer := &tokenFile{path: tokenPath}
	if _, err := reviewer.get(false); err != nil {
		return nil, fmt.Errorf("tokenreview authenticator: %w", err)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = DefaultTokenReviewTimeout
	}
	if timeout < 0 {
		return nil, fmt.Errorf("tokenreview authenticator: timeout %s is negative", timeout)
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
	return &TokenReviewAuthenticator{
		url:         strings.TrimSuffix(base, "/") + tokenReviewPath,
		client:      &http.Client{Transport: transport, Timeout: timeout},
		reviewer:    reviewer,
		audiences:   audiences,
		timeout:     timeout,
		trustDomain: opts.TrustDomain,
		clusters:    clusters,
	}, nil
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

// Authenticate implements Authenticator. A token the API refuses wraps
// ErrUnauthenticated; an API that cannot be reached, times out or answers
// 429/5xx wraps ErrUnavailable; an API that refuses this CA's own token
// (401/403) is a configuration fault and wraps neither.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, cred Credentials) (*Caller, error) {
	cluster, err := checkCluster(cred.ClusterID, a.clusters)
	if err != nil {
		return nil, err
	}
	if err := checkTokenSize(cred.Token); err != nil {
		return nil, err
	}
	status, err := a.review(ctx, cred.Token)
	if err != nil {
		return nil, err
	}
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
	return newCaller(a.trustDomain, ns, sa, cluster, AuthTokenReview, user), nil
}

// review creates one TokenReview and returns its status. If the API refuses
// the reviewer token and the token file has changed since it was read, it
// tries once more with the new token.
func (a *TokenReviewAuthenticator) review(ctx context.Context, token string) (*tokenReviewStatus, error) {
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
