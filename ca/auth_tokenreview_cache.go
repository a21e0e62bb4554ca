package ca

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"time"
)

// reviewKey identifies a token in the review cache: its SHA-256. The token
// itself is never kept.
type reviewKey [sha256.Size]byte

func reviewKeyOf(token string) reviewKey { return sha256.Sum256([]byte(token)) }

// reviewCache remembers accepted TokenReviews for a short time, so that a
// burst of requests with one token (agent retries, restarts) costs one
// review. Only acceptances are cached: a refusal may be transient (the API
// reports its own failures as refusals) and a cached one would lock a
// workload out; an attacker's tokens differ anyway, so caching them would
// only fill the cache.
type reviewCache struct {
	ttl  time.Duration
	size int
	now  func() time.Time

	mu      sync.Mutex
	entries map[reviewKey]cachedReview
}

type cachedReview struct {
	id      *reviewedIdentity
	expires time.Time
}

// evictScan bounds how many entries put looks at to make room.
const evictScan = 16

func newReviewCache(ttl time.Duration, size int, now func() time.Time) *reviewCache {
	return &reviewCache{ttl: ttl, size: size, now: now, entries: make(map[reviewKey]cachedReview)}
}

// get returns the identity cached for the key, if it has not expired.
func (c *reviewCache) get(key reviewKey) (*reviewedIdentity, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return nil, false
	}
	if !c.now().Before(e.expires) {
		delete(c.entries, key)
		return nil, false
	}
	return e.id, true
}

// put caches an identity until min(now+ttl, tokenExp). A token whose expiry
// is unknown (zero) or past is not cached. When the cache is full, put
// drops expired entries among a few it looks at, or else one of them: map
// order is random, so this evicts at random in constant time.
func (c *reviewCache) put(key reviewKey, id *reviewedIdentity, tokenExp time.Time) {
	now := c.now()
	expires := now.Add(c.ttl)
	if tokenExp.IsZero() {
		return
	}
	if tokenExp.Before(expires) {
		expires = tokenExp
	}
	if !now.Before(expires) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.size {
		var victim reviewKey
		n, freed := 0, false
		for k, e := range c.entries {
			if n == 0 {
				victim = k
			}
			if !now.Before(e.expires) {
				delete(c.entries, k)
				freed = true
			}
			if n++; n == evictScan {
				break
			}
		}
		if !freed {
			delete(c.entries, victim)
		}
	}
	c.entries[key] = cachedReview{id: id, expires: expires}
}

// len returns the number of cached entries, expired or not.
func (c *reviewCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// tokenExpiry reads the exp claim of a JWT without checking its signature,
// or returns the zero time. It only bounds how long an acceptance is
// cached: the API server has just checked this exact token, and the cache
// is keyed by its hash.
func tokenExpiry(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || len(parts[1]) > MaxTokenBytes {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}
	}
	exp, err := claims.Exp.Int64()
	if err != nil || exp <= 0 {
		return time.Time{}
	}
	return time.Unix(exp, 0)
}
