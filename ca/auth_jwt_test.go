package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

const testIssuer = "https://kubernetes.default.svc.cluster.local"

// testNow is the clock of the JWT tests.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// loadTestRSAKey reads the fixed test key, so that RS256 tokens are the same
// in every run and every fuzz worker.
func loadTestRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "jwt-rs256.key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("testdata/jwt-rs256.key.pem holds no pem block")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return key.(*rsa.PrivateKey)
}

func newECKey(t testing.TB, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// jwtEnv is an issuer with an RSA and an ECDSA key and an authenticator that
// trusts both.
type jwtEnv struct {
	rsaKey   *rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
	minter   *TokenMinter // RS256, kid "rsa-1"
	ecMinter *TokenMinter // ES256, kid "ec-1"
	auth     *JWTAuthenticator
}

func newJWTEnv(t testing.TB) *jwtEnv {
	t.Helper()
	e := &jwtEnv{rsaKey: loadTestRSAKey(t), ecKey: newECKey(t, elliptic.P256())}
	var err error
	if e.minter, err = NewTokenMinter(e.rsaKey, "rsa-1", testIssuer); err != nil {
		t.Fatal(err)
	}
	if e.ecMinter, err = NewTokenMinter(e.ecKey, "ec-1", testIssuer); err != nil {
		t.Fatal(err)
	}
	clock := func() time.Time { return testNow }
	e.minter.Now, e.ecMinter.Now = clock, clock
	set := e.minter.JWKS()
	set.Keys = append(set.Keys, e.ecMinter.JWKS().Keys...)
	e.auth, err = NewJWTAuthenticator(JWTOptions{
		Issuer:      testIssuer,
		KeySet:      &set,
		TrustDomain: testTrustDomain,
		Clusters:    []string{DefaultCluster, "east"},
		Now:         clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// claims returns the payload of a projected token for default/sleep; edit
// the map to make a bad one.
func claims() map[string]any {
	return map[string]any{
		"iss": testIssuer,
		"sub": "system:serviceaccount:default:sleep",
		"aud": []string{"istio-ca"},
		"exp": testNow.Add(time.Hour).Unix(),
		"iat": testNow.Unix(),
		"nbf": testNow.Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      "default",
			"serviceaccount": map[string]any{"name": "sleep", "uid": "0b6f1a3e-5d5c-4d0e-9a54-0c5d4f0b1f3a"},
			"pod":            map[string]any{"name": "sleep-7d9f8b-x2x4z", "uid": "2d0f4f1e-0b1c-4f5e-8f7c-6a8d2e9c1b0a"},
		},
	}
}

// sign signs any payload with key, algorithm alg and key id kid (none if
// empty), the way an issuer would.
func sign(t testing.TB, key crypto.Signer, alg jose.SignatureAlgorithm, kid string, payload any) string {
	t.Helper()
	opts := &jose.SignerOptions{}
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	token, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// b64 encodes a JWT segment.
func b64(v any) string {
	var data []byte
	switch v := v.(type) {
	case string:
		data = []byte(v)
	case []byte:
		data = v
	default:
		data, _ = json.Marshal(v)
	}
	return base64.RawURLEncoding.EncodeToString(data)
}

func TestJWTAuthenticator(t *testing.T) {
	e := newJWTEnv(t)
	with := func(edit func(c map[string]any)) map[string]any {
		c := claims()
		edit(c)
		return c
	}
	tests := []struct {
		name       string
		token      func(t *testing.T) string
		cluster    string
		want       *Caller
		wantErr    error
		wantSubstr string
	}{
		{
			name: "good RS256 token",
			token: func(t *testing.T) string {
				tok, err := e.minter.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			},
			want: &Caller{SPIFFEID: testID, Namespace: "default", ServiceAccount: "sleep", ClusterID: DefaultCluster,
				Method: AuthJWT, Subject: "system:serviceaccount:default:sleep"},
		},
		{
			name: "good ES256 token with full kubernetes claims from another cluster",
			token: func(t *testing.T) string {
				return sign(t, e.ecKey, jose.ES256, "ec-1", claims())
			},
			cluster: "east",
			want: &Caller{SPIFFEID: testID, Namespace: "default", ServiceAccount: "sleep", ClusterID: "east",
				Method: AuthJWT, Subject: "system:serviceaccount:default:sleep", PodName: "sleep-7d9f8b-x2x4z", PodUID: "2d0f4f1e-0b1c-4f5e-8f7c-6a8d2e9c1b0a"},
		},
		{
			name: "audience among several, dotted service account",
			token: func(t *testing.T) string {
				tok, err := e.minter.Mint("prod", "build.bot", []string{"vault", "istio-ca"}, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			},
			want: &Caller{SPIFFEID: "spiffe://cluster.local/ns/prod/sa/build.bot", Namespace: "prod", ServiceAccount: "build.bot",
				ClusterID: DefaultCluster, Method: AuthJWT, Subject: "system:serviceaccount:prod:build.bot"},
		},
		{
			name: "no kid: every trusted key is tried",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "", claims())
			},
			want: &Caller{SPIFFEID: testID, Namespace: "default", ServiceAccount: "sleep", ClusterID: DefaultCluster,
				Method: AuthJWT, Subject: "system:serviceaccount:default:sleep", PodName: "sleep-7d9f8b-x2x4z", PodUID: "2d0f4f1e-0b1c-4f5e-8f7c-6a8d2e9c1b0a"},
		},
		{
			name: "expired within leeway",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { c["exp"] = testNow.Add(-20 * time.Second).Unix() }))
			},
			want: &Caller{SPIFFEID: testID, Namespace: "default", ServiceAccount: "sleep", ClusterID: DefaultCluster,
				Method: AuthJWT, Subject: "system:serviceaccount:default:sleep", PodName: "sleep-7d9f8b-x2x4z", PodUID: "2d0f4f1e-0b1c-4f5e-8f7c-6a8d2e9c1b0a"},
		},
		{
			name: "subject fills a missing service account name when the namespace agrees",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) {
					c["kubernetes.io"] = map[string]any{"namespace": "default"}
				}))
			},
			want: &Caller{SPIFFEID: testID, Namespace: "default", ServiceAccount: "sleep", ClusterID: DefaultCluster,
				Method: AuthJWT, Subject: "system:serviceaccount:default:sleep"},
		},
		{
			name: "malformed pod claim",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) {
					c["kubernetes.io"].(map[string]any)["pod"] = map[string]any{"name": "Web_0", "uid": "x"}
				}))
			},
			wantErr: ErrUnauthenticated, wantSubstr: `pod claim is malformed: name "Web_0"`,
		},
		{
			name: "expired",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { c["exp"] = testNow.Add(-time.Hour).Unix() }))
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token expired at 2026-03-01T11:00:00Z",
		},
		{
			name: "no expiry",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { delete(c, "exp") }))
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token has no expiry (exp claim)",
		},
		{
			name: "not yet valid",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { c["nbf"] = testNow.Add(5 * time.Minute).Unix() }))
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token is not valid before 2026-03-01T12:05:00Z",
		},
		{
			name: "issued in the future",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { c["iat"] = testNow.Add(time.Minute).Unix() }))
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token was issued in the future, at 2026-03-01T12:01:00Z",
		},
		{
			name: "wrong audience",
			token: func(t *testing.T) string {
				tok, err := e.minter.Mint("default", "sleep", []string{"x"}, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token audience [x] does not include istio-ca",
		},
		{
			name: "no audience",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { delete(c, "aud") }))
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token audience [] does not include istio-ca",
		},
		{
			name: "wrong issuer",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { c["iss"] = "https://evil.example" }))
			},
			wantErr:    ErrUnauthenticated,
			wantSubstr: `token issuer "https://evil.example" is not the trusted issuer "https://kubernetes.default.svc.cluster.local"`,
		},
		{
			name: "unknown key id",
			token: func(t *testing.T) string {
				return sign(t, newECKey(t, elliptic.P256()), jose.ES256, "k", claims())
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token signed with unknown key id "k"`,
		},
		{
			name: "untrusted key without kid",
			token: func(t *testing.T) string {
				return sign(t, newECKey(t, elliptic.P256()), jose.ES256, "", claims())
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token has no key id and its signature verifies with none of the 1 trusted keys",
		},
		{
			name: "known key id, other key",
			token: func(t *testing.T) string {
				return sign(t, newECKey(t, elliptic.P256()), jose.ES256, "ec-1", claims())
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token signature does not verify with key id "ec-1"`,
		},
		{
			name: "algorithm that does not fit the named key",
			token: func(t *testing.T) string {
				return sign(t, newECKey(t, elliptic.P384()), jose.ES384, "ec-1", claims())
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token key id "ec-1" names a key that cannot verify ES384`,
		},
		{
			name: "alg none",
			token: func(t *testing.T) string {
				return b64(map[string]string{"alg": "none", "kid": "rsa-1"}) + "." + b64(claims()) + "."
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token algorithm "none" is not allowed`,
		},
		{
			name: "HS256 with the public key as secret",
			token: func(t *testing.T) string {
				pubDER, err := x509.MarshalPKIXPublicKey(&e.rsaKey.PublicKey)
				if err != nil {
					t.Fatal(err)
				}
				secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
				input := b64(map[string]string{"alg": "HS256", "kid": "rsa-1"}) + "." + b64(claims())
				mac := hmac.New(sha256.New, secret)
				mac.Write([]byte(input))
				return input + "." + b64(mac.Sum(nil))
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token algorithm "HS256" is not allowed`,
		},
		{
			name: "tampered payload",
			token: func(t *testing.T) string {
				tok := sign(t, e.rsaKey, jose.RS256, "rsa-1", claims())
				parts := strings.Split(tok, ".")
				forged := claims()
				forged["sub"] = "system:serviceaccount:kube-system:admin"
				forged["kubernetes.io"] = map[string]any{"namespace": "kube-system", "serviceaccount": map[string]any{"name": "admin"}}
				return parts[0] + "." + b64(forged) + "." + parts[2]
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token signature does not verify with key id "rsa-1"`,
		},
		{
			name: "missing kubernetes.io claims",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { delete(c, "kubernetes.io") }))
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token has no kubernetes.io claim",
		},
		{
			name: "kubernetes.io claim without namespace or subject",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) {
					delete(c, "sub")
					c["kubernetes.io"] = map[string]any{"serviceaccount": map[string]any{"name": "sleep"}}
				}))
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token kubernetes.io claim names no namespace",
		},
		{
			name: "subject disagrees with the kubernetes.io claim",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { c["sub"] = "system:serviceaccount:kube-system:admin" }))
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token subject "system:serviceaccount:kube-system:admin" disagrees with its kubernetes.io claim`,
		},
		{
			name: "subject fills a gap only if it agrees",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) {
					c["sub"] = "system:serviceaccount:kube-system:sleep"
					c["kubernetes.io"] = map[string]any{"namespace": "default"}
				}))
			},
			wantErr: ErrUnauthenticated, wantSubstr: "disagrees with its kubernetes.io claim",
		},
		{
			name: "subject that is not a service account",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { c["sub"] = "alice" }))
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token subject "alice" is not system:serviceaccount:<namespace>:<name>`,
		},
		{
			name: "invalid namespace name",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) {
					delete(c, "sub")
					c["kubernetes.io"] = map[string]any{"namespace": "../x", "serviceaccount": map[string]any{"name": "sleep"}}
				}))
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token names the invalid namespace "../x"`,
		},
		{
			name: "malformed kubernetes.io claim",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { c["kubernetes.io"] = "default" }))
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token kubernetes.io claim is malformed",
		},
		{
			name: "oversized token",
			token: func(t *testing.T) string {
				return sign(t, e.rsaKey, jose.RS256, "rsa-1", with(func(c map[string]any) { c["pad"] = strings.Repeat("a", MaxTokenBytes) }))
			},
			wantErr: ErrUnauthenticated, wantSubstr: "more than the 8192 allowed",
		},
		{
			name:    "empty token",
			token:   func(t *testing.T) string { return "" },
			wantErr: ErrUnauthenticated, wantSubstr: "no bearer token",
		},
		{
			name:    "encrypted token",
			token:   func(t *testing.T) string { return "a.b.c.d.e" },
			wantErr: ErrUnauthenticated, wantSubstr: "token is an encrypted jwt (jwe)",
		},
		{
			name:    "two parts",
			token:   func(t *testing.T) string { return "a.b" },
			wantErr: ErrUnauthenticated, wantSubstr: "expected 3 dot-separated parts, got 2",
		},
		{
			name: "line break inside the token",
			token: func(t *testing.T) string {
				tok := sign(t, e.rsaKey, jose.RS256, "rsa-1", claims())
				return tok[:20] + "\n" + tok[20:]
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token has the character '\n' at offset 20`,
		},
		{
			name: "non-canonical base64 in the signature",
			token: func(t *testing.T) string {
				tok := sign(t, e.rsaKey, jose.RS256, "rsa-1", claims())
				// A 256-byte RS256 signature leaves 4 unused bits in its
				// last base64 character; setting one keeps the bytes equal.
				last := strings.IndexByte(base64URLAlphabet, tok[len(tok)-1])
				return tok[:len(tok)-1] + string(base64URLAlphabet[last|1])
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token signature is missing or not canonical base64url",
		},
		{
			name: "crit header",
			token: func(t *testing.T) string {
				return b64(map[string]any{"alg": "RS256", "kid": "rsa-1", "crit": []string{"exp"}}) + "." + b64(claims()) + "." + b64("sig")
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token header carries crit or b64",
		},
		{
			name: "header is not json",
			token: func(t *testing.T) string {
				return b64("RS256") + "." + b64(claims()) + "." + b64("sig")
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token header is not a json object",
		},
		{
			name: "cluster not served",
			token: func(t *testing.T) string {
				tok, err := e.minter.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			},
			cluster: "west",
			wantErr: ErrUnauthenticated, wantSubstr: `cluster "west" is not served by this ca; allowed clusters: Kubernetes, east`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.auth.Authenticate(context.Background(), Credentials{Token: tc.token(t), ClusterID: tc.cluster})
			checkErr(t, err, tc.wantErr, tc.wantSubstr)
			if tc.want != nil && *got != *tc.want {
				t.Fatalf("caller = %+v, want %+v", *got, *tc.want)
			}
		})
	}
}

const base64URLAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func TestNewJWTAuthenticatorOptions(t *testing.T) {
	set := newJWTEnv(t).minter.JWKS()
	tests := []struct {
		name    string
		opts    JWTOptions
		wantSub string
	}{
		{name: "no issuer", opts: JWTOptions{KeySet: &set, TrustDomain: testTrustDomain}, wantSub: "issuer is empty"},
		{name: "bad trust domain", opts: JWTOptions{Issuer: testIssuer, KeySet: &set, TrustDomain: "Cluster.Local"}, wantSub: "has the character 'C'"},
		{name: "no keys", opts: JWTOptions{Issuer: testIssuer, TrustDomain: testTrustDomain}, wantSub: "no key set and no key source"},
		{name: "both keys", opts: JWTOptions{Issuer: testIssuer, TrustDomain: testTrustDomain, KeySet: &set, KeySource: staticKeys{&set}},
			wantSub: "both a key set and a key source"},
		{name: "empty key set", opts: JWTOptions{Issuer: testIssuer, TrustDomain: testTrustDomain, KeySet: &jose.JSONWebKeySet{}},
			wantSub: "key set holds no keys"},
		{name: "symmetric key", opts: JWTOptions{Issuer: testIssuer, TrustDomain: testTrustDomain,
			KeySet: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: make([]byte, 32), KeyID: "hs"}}}}, wantSub: `key 0 (kid "hs") is a symmetric key`},
		{name: "private key", opts: JWTOptions{Issuer: testIssuer, TrustDomain: testTrustDomain,
			KeySet: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: newECKey(t, elliptic.P256()), KeyID: "priv"}}}}, wantSub: `key 0 (kid "priv") is a private key`},
		{name: "empty audience", opts: JWTOptions{Issuer: testIssuer, TrustDomain: testTrustDomain, KeySet: &set, Audiences: []string{""}},
			wantSub: "empty audience"},
		{name: "negative leeway", opts: JWTOptions{Issuer: testIssuer, TrustDomain: testTrustDomain, KeySet: &set, Leeway: -time.Second},
			wantSub: "leeway -1s is negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewJWTAuthenticator(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantSub) {
				t.Fatalf("error = %v, want one containing %q", err, tc.wantSub)
			}
		})
	}
}

func TestJWTLeewayAndAudiencesOptions(t *testing.T) {
	e := newJWTEnv(t)
	set := e.minter.JWKS()
	a, err := NewJWTAuthenticator(JWTOptions{
		Issuer: testIssuer, KeySet: &set, TrustDomain: testTrustDomain,
		Audiences: []string{"transitca", "istio-ca"},
		Leeway:    time.Second,
		Now:       func() time.Time { return testNow },
	})
	if err != nil {
		t.Fatal(err)
	}
	c := claims()
	c["exp"] = testNow.Add(-20 * time.Second).Unix()
	_, err = a.Authenticate(context.Background(), Credentials{Token: sign(t, e.rsaKey, jose.RS256, "rsa-1", c)})
	checkErr(t, err, ErrUnauthenticated, "token expired at 2026-03-01T11:59:40Z")

	c = claims()
	c["aud"] = "vault"
	_, err = a.Authenticate(context.Background(), Credentials{Token: sign(t, e.rsaKey, jose.RS256, "rsa-1", c)})
	checkErr(t, err, ErrUnauthenticated, "token audience [vault] does not include any of [transitca istio-ca]")

	c["aud"] = "transitca"
	if _, err := a.Authenticate(context.Background(), Credentials{Token: sign(t, e.rsaKey, jose.RS256, "rsa-1", c)}); err != nil {
		t.Fatalf("single-string audience: %v", err)
	}
}

func TestTokenMinter(t *testing.T) {
	e := newJWTEnv(t)
	tok, err := e.minter.Mint("default", "sleep", []string{"istio-ca"}, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok, ".")
	var hdr map[string]any
	var payload map[string]any
	mustDecode := func(s string, v any) {
		data, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, v); err != nil {
			t.Fatal(err)
		}
	}
	mustDecode(parts[0], &hdr)
	mustDecode(parts[1], &payload)
	if hdr["alg"] != "RS256" || hdr["kid"] != "rsa-1" {
		t.Fatalf("header = %v, want alg RS256, kid rsa-1", hdr)
	}
	wantExp := float64(testNow.Add(10 * time.Minute).Unix())
	if payload["iss"] != testIssuer || payload["sub"] != "system:serviceaccount:default:sleep" || payload["exp"] != wantExp {
		t.Fatalf("payload = %v", payload)
	}
	kube, _ := payload["kubernetes.io"].(map[string]any)
	sa, _ := kube["serviceaccount"].(map[string]any)
	if kube["namespace"] != "default" || sa["name"] != "sleep" {
		t.Fatalf("kubernetes.io claim = %v", payload["kubernetes.io"])
	}
	again, err := e.minter.Mint("default", "sleep", []string{"istio-ca"}, 10*time.Minute)
	if err != nil || again != tok {
		t.Fatalf("RS256 minting with a fixed clock is not deterministic")
	}
	set := e.minter.JWKS()
	if len(set.Keys) != 1 || !set.Keys[0].IsPublic() || set.Keys[0].KeyID != "rsa-1" || set.Keys[0].Algorithm != "RS256" {
		t.Fatalf("JWKS = %+v", set)
	}

	for _, bad := range []struct {
		name   string
		signer crypto.Signer
		want   string
	}{
		{"P-521", newECKey(t, elliptic.P521()), "ECDSA P-521 is not supported"},
		{"RSA-1024", mustRSA(t, 1024), "RSA-1024 key is too small"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			if _, err := NewTokenMinter(bad.signer, "k", testIssuer); err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("NewTokenMinter error = %v, want %q", err, bad.want)
			}
		})
	}
	if _, err := e.minter.Mint("Default", "sleep", nil, time.Hour); err == nil {
		t.Fatal("Mint accepted an invalid namespace")
	}
}

func mustRSA(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func TestLoadJWKSFile(t *testing.T) {
	e := newJWTEnv(t)
	dir := t.TempDir()
	write := func(name string, v any) string {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	good := write("good.json", e.minter.JWKS())
	set, err := LoadJWKSFile(good)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewJWTAuthenticator(JWTOptions{Issuer: testIssuer, KeySet: set, TrustDomain: testTrustDomain, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := e.minter.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	if _, err := a.Authenticate(context.Background(), Credentials{Token: tok}); err != nil {
		t.Fatalf("token against keys loaded from a file: %v", err)
	}

	tests := []struct {
		name, path, want string
	}{
		{"missing file", filepath.Join(dir, "nope.json"), "no such file"},
		{"private key", write("private.json", jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: e.rsaKey, KeyID: "p"}}}), `key 0 (kid "p") is a private key`},
		{"symmetric key", write("hmac.json", map[string]any{"keys": []any{map[string]string{"kty": "oct", "kid": "h", "k": b64(make([]byte, 32))}}}),
			`key 0 (kid "h") is a symmetric key`},
		{"weak RSA key", write("rsa1024.json", jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &mustRSA(t, 1024).PublicKey, KeyID: "w"}}}),
			`key 0 (kid "w") is RSA-1024`},
		{"not json", write("garbage.json", "{"), "load jwks"},
		{"no keys", write("empty.json", map[string]any{"keys": []any{}}), "key set holds no keys"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := LoadJWKSFile(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadJWKSFile error = %v, want %q", err, tc.want)
			}
		})
	}
}

// oidcIssuer is an httptest issuer serving OpenID discovery and a JWKS that
// the test can swap, or make fail.
type oidcIssuer struct {
	srv       *httptest.Server
	mu        sync.Mutex
	jwks      jose.JSONWebKeySet
	issuer    string // the issuer the discovery document names; "" means srv.URL
	failing   bool
	jwksFetch atomic.Int32
}

func newOIDCIssuer(t *testing.T, set jose.JSONWebKeySet) *oidcIssuer {
	o := &oidcIssuer{jwks: set}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.failing {
			http.Error(w, "etcdserver: request timed out", http.StatusServiceUnavailable)
			return
		}
		iss := o.issuer
		if iss == "" {
			iss = o.srv.URL
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                iss,
			"jwks_uri":                              o.srv.URL + "/openid/v1/jwks",
			"response_types_supported":              []string{"id_token"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	})
	mux.HandleFunc("GET /openid/v1/jwks", func(w http.ResponseWriter, r *http.Request) {
		o.jwksFetch.Add(1)
		o.mu.Lock()
		defer o.mu.Unlock()
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_ = json.NewEncoder(w).Encode(o.jwks)
	})
	o.srv = httptest.NewTLSServer(mux)
	t.Cleanup(o.srv.Close)
	return o
}

func TestDiscoverJWKS(t *testing.T) {
	e := newJWTEnv(t)
	o := newOIDCIssuer(t, e.minter.JWKS())
	ctx := context.Background()

	set, err := DiscoverJWKS(ctx, o.srv.Client(), o.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 || set.Keys[0].KeyID != "rsa-1" {
		t.Fatalf("discovered %+v", set)
	}

	t.Run("issuer mismatch", func(t *testing.T) {
		o.mu.Lock()
		o.issuer = "https://evil.example"
		o.mu.Unlock()
		defer func() { o.mu.Lock(); o.issuer = ""; o.mu.Unlock() }()
		_, err := DiscoverJWKS(ctx, o.srv.Client(), o.srv.URL)
		if err == nil || !strings.Contains(err.Error(), `names the issuer "https://evil.example"`) || errors.Is(err, ErrUnavailable) {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("server failing", func(t *testing.T) {
		o.mu.Lock()
		o.failing = true
		o.mu.Unlock()
		defer func() { o.mu.Lock(); o.failing = false; o.mu.Unlock() }()
		_, err := DiscoverJWKS(ctx, o.srv.Client(), o.srv.URL)
		checkErr(t, err, ErrUnavailable, "503 Service Unavailable")
	})
	t.Run("unreachable", func(t *testing.T) {
		dead := httptest.NewTLSServer(http.NotFoundHandler())
		client, url := dead.Client(), dead.URL
		dead.Close()
		_, err := DiscoverJWKS(ctx, client, url)
		checkErr(t, err, ErrUnavailable, "openid-configuration")
	})
	t.Run("plain http issuer", func(t *testing.T) {
		_, err := DiscoverJWKS(ctx, nil, "http://kubernetes.default.svc")
		if err == nil || !strings.Contains(err.Error(), "is not an absolute https url") {
			t.Fatalf("error = %v", err)
		}
	})
}

func TestRemoteKeySourceRotation(t *testing.T) {
	e := newJWTEnv(t)
	o := newOIDCIssuer(t, e.minter.JWKS())
	src := NewRemoteKeySource(o.srv.Client(), o.srv.URL)
	clock := testNow
	src.now = func() time.Time { return clock }
	// The apiserver's issuer is the test server's URL.
	newMinter := func(key crypto.Signer, kid string) *TokenMinter {
		m, err := NewTokenMinter(key, kid, o.srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		m.Now = func() time.Time { return testNow }
		return m
	}
	oldMinter := newMinter(e.rsaKey, "rsa-1")
	a, err := NewJWTAuthenticator(JWTOptions{Issuer: o.srv.URL, KeySource: src, TrustDomain: testTrustDomain, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	authenticate := func(m *TokenMinter) error {
		tok, err := m.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		_, err = a.Authenticate(ctx, Credentials{Token: tok})
		return err
	}
	if err := authenticate(oldMinter); err != nil {
		t.Fatal(err)
	}
	if got := o.jwksFetch.Load(); got != 1 {
		t.Fatalf("jwks fetched %d times, want 1", got)
	}

	// The cluster rotates its signing key. A token with the new kid makes
	// the source fetch again, once MinRefresh has passed.
	newMinterEC := newMinter(newECKey(t, elliptic.P256()), "ec-2")
	o.mu.Lock()
	o.jwks.Keys = append(o.jwks.Keys, newMinterEC.JWKS().Keys...)
	o.mu.Unlock()
	checkErr(t, authenticate(newMinterEC), ErrUnauthenticated, `token signed with unknown key id "ec-2"`)
	clock = clock.Add(src.MinRefresh)
	if err := authenticate(newMinterEC); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if got := o.jwksFetch.Load(); got != 2 {
		t.Fatalf("jwks fetched %d times, want 2", got)
	}

	// While the issuer is down, stale keys keep working.
	o.mu.Lock()
	o.failing = true
	o.mu.Unlock()
	clock = clock.Add(src.MaxAge + time.Second)
	if err := authenticate(oldMinter); err != nil {
		t.Fatalf("stale keys while the issuer is down: %v", err)
	}

	// A source that never fetched anything reports the issuer unavailable.
	fresh := NewRemoteKeySource(o.srv.Client(), o.srv.URL)
	_, err = fresh.KeySet(ctx)
	checkErr(t, err, ErrUnavailable, "503 Service Unavailable")
	_, err = fresh.KeySet(ctx)
	checkErr(t, err, ErrUnavailable, "503 Service Unavailable")
}

func TestRemoteKeySourceConcurrentStale(t *testing.T) {
	e := newJWTEnv(t)
	o := newOIDCIssuer(t, e.minter.JWKS())
	src := NewRemoteKeySource(o.srv.Client(), o.srv.URL)
	ctx := context.Background()
	if _, err := src.KeySet(ctx); err != nil {
		t.Fatal(err)
	}
	src.mu.Lock()
	src.fetched = src.fetched.Add(-2 * src.MaxAge)
	src.lastAttempt = src.lastAttempt.Add(-2 * src.MaxAge)
	src.mu.Unlock()

	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			set, err := src.KeySet(ctx)
			if err != nil || len(set.Keys) != 1 {
				t.Errorf("KeySet = %v, %v", set, err)
			}
		})
	}
	wg.Wait()
	// One fetch at start, and one refresh however many asked.
	if got := o.jwksFetch.Load(); got != 2 {
		t.Fatalf("jwks fetched %d times, want 2", got)
	}
}

// TestJWTEveryAlgorithmVerifies signs the same claims with every allowed
// algorithm through go-jose, as an issuer would, and checks that each token
// is accepted, and refused once a byte of its signature, payload or
// signature length is changed.
func TestJWTEveryAlgorithmVerifies(t *testing.T) {
	rsaKey := loadTestRSAKey(t)
	keys := map[jose.SignatureAlgorithm]crypto.Signer{
		jose.RS256: rsaKey, jose.RS384: rsaKey, jose.RS512: rsaKey, jose.PS256: rsaKey,
		jose.ES256: newECKey(t, elliptic.P256()), jose.ES384: newECKey(t, elliptic.P384()),
	}
	if len(keys) != len(jwtAlgorithms) {
		t.Fatalf("test covers %d algorithms, %d are allowed", len(keys), len(jwtAlgorithms))
	}
	for _, alg := range jwtAlgorithms {
		t.Run(string(alg), func(t *testing.T) {
			key := keys[alg]
			set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k", Algorithm: string(alg), Use: "sig"}}}
			auth, err := NewJWTAuthenticator(JWTOptions{Issuer: testIssuer, KeySet: &set, TrustDomain: testTrustDomain, Now: func() time.Time { return testNow }})
			if err != nil {
				t.Fatal(err)
			}
			token := sign(t, key, alg, "k", claims())
			c, err := auth.Authenticate(context.Background(), Credentials{Token: token})
			if err != nil {
				t.Fatalf("valid %s token refused: %v", alg, err)
			}
			if c.Namespace != "default" || c.ServiceAccount != "sleep" {
				t.Fatalf("caller %s/%s, want default/sleep", c.Namespace, c.ServiceAccount)
			}
			parts := strings.Split(token, ".")
			sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
			flipped := append([]byte(nil), sig...)
			flipped[len(flipped)/2] ^= 1
			other := claims()
			other["sub"] = "system:serviceaccount:default:other"
			bad := map[string]string{
				"flipped signature byte":   parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(flipped),
				"signature one byte short": parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig[:len(sig)-1]),
				"payload swapped":          parts[0] + "." + b64(other) + "." + parts[2],
			}
			for name, tok := range bad {
				_, err := auth.Authenticate(context.Background(), Credentials{Token: tok})
				if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "does not verify") {
					t.Errorf("%s: got %v, want a signature that does not verify", name, err)
				}
			}
		})
	}
}
