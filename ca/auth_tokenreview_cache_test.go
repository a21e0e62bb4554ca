package ca

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"
)

// fakeJWT is shaped like a JWT with the given exp claim; only its payload
// is read.
func fakeJWT(exp int64, salt int) string {
	payload := base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, `{"iss":"https://kubernetes.default.svc.cluster.local","exp":%d,"jti":"%d"}`, exp, salt))
	return "eyJhbGciOiJSUzI1NiJ9." + payload + ".c2ln"
}

func TestTokenExpiry(t *testing.T) {
	for _, tc := range []struct {
		name  string
		token string
		want  time.Time
	}{
		{"exp claim", fakeJWT(1900000000, 0), time.Unix(1900000000, 0)},
		{"not a jwt", "sleep-token", time.Time{}},
		{"no exp", "a." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"x"}`)) + ".b", time.Time{}},
		{"exp not a number", "a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":"soon"}`)) + ".b", time.Time{}},
		{"fractional exp", "a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":1.5}`)) + ".b", time.Time{}},
		{"bad base64", "a.!!!.b", time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tokenExpiry(tc.token); !got.Equal(tc.want) {
				t.Fatalf("tokenExpiry = %v, want %v", got, tc.want)
			}
		})
	}
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestReviewCacheLifetime(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1800000000, 0)}
	id := &reviewedIdentity{namespace: "default", serviceAccount: "sleep"}
	for _, tc := range []struct {
		name     string
		tokenExp time.Time
		hitUntil time.Duration // cached for this long; 0: not cached
	}{
		{"bounded by the ttl", clk.t.Add(time.Hour), 10 * time.Second},
		{"bounded by the token's expiry", clk.t.Add(3 * time.Second), 3 * time.Second},
		{"expired token", clk.t.Add(-time.Second), 0},
		{"expiry unknown", time.Time{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newReviewCache(10*time.Second, 100, clk.now)
			start := clk.t
			defer func() { clk.t = start }()
			key := reviewKeyOf(tc.name)
			c.put(key, id, tc.tokenExp)
			if tc.hitUntil == 0 {
				if c.len() != 0 {
					t.Fatal("cached")
				}
				return
			}
			clk.advance(tc.hitUntil - time.Nanosecond)
			if got, ok := c.get(key); !ok || got != id {
				t.Fatalf("miss %s after put", tc.hitUntil-time.Nanosecond)
			}
			clk.advance(time.Nanosecond)
			if _, ok := c.get(key); ok {
				t.Fatalf("hit %s after put", tc.hitUntil)
			}
			if c.len() != 0 {
				t.Fatal("expired entry kept after a miss")
			}
		})
	}
}

func TestReviewCacheBounded(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1800000000, 0)}
	const size = 64
	c := newReviewCache(10*time.Second, size, clk.now)
	exp := clk.t.Add(time.Hour)
	for i := range 10 * size {
		c.put(reviewKeyOf(fmt.Sprint(i)), &reviewedIdentity{}, exp)
		if c.len() > size {
			t.Fatalf("after %d puts the cache holds %d entries, more than %d", i+1, c.len(), size)
		}
	}
	// Expired entries make room before live ones are evicted.
	clk.advance(11 * time.Second)
	fresh := reviewKeyOf("fresh")
	c.put(fresh, &reviewedIdentity{}, clk.t.Add(time.Hour))
	if _, ok := c.get(fresh); !ok {
		t.Fatal("newest entry missing")
	}
}

// The cache is keyed by the token's hash: the token itself is not kept.
func TestReviewCacheKeepsNoToken(t *testing.T) {
	e := newTokenReviewEnv(t, 2*time.Second)
	e.auth.cache = newReviewCache(10*time.Second, 10, time.Now)
	token := fakeJWT(time.Now().Add(time.Hour).Unix(), 1)
	e.api.set(func(f *fakeAPIServer) { f.users[token] = f.users[shapedToken("sleep")] })
	for range 3 {
		if _, err := e.auth.Authenticate(t.Context(), Credentials{Token: token}); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.api.requests.Load(); n != 1 {
		t.Fatalf("%d reviews for three requests, want 1", n)
	}
	for k, v := range e.auth.cache.entries {
		if s := fmt.Sprintf("%x %+v", k, *v.id); containsToken(s, token) {
			t.Fatalf("cache entry holds the token: %s", s)
		}
	}
}

func containsToken(s, token string) bool {
	for _, part := range []string{token, token[len(token)-20:]} {
		if len(part) > 0 && strings.Contains(s, part) {
			return true
		}
	}
	return false
}
