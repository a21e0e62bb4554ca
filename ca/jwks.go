package ca

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejson "github.com/go-jose/go-jose/v4/json"
)

// maxJSONBytes bounds every JSON document read from the network or a file.
const maxJSONBytes = 1 << 20

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
//
// go-oidc's RemoteKeySet does not do what a CA needs here: it keeps the
// keys it fetched until a token fails to verify with them, so a signing key
// the issuer withdrew (compromised, rotated out) stays trusted indefinitely,
// and every token naming an unknown key id makes it fetch again, with no
// floor, so forged tokens make the CA hammer the issuer. MaxAge and
// MinRefresh bound both.
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
