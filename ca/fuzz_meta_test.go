package ca

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
	fakeclientset "k8s.io/client-go/kubernetes/fake"
)

// FuzzCredentialsFromMetadata feeds the request metadata a caller controls
// (authorization and clusterid, once or twice each) to
// CredentialsFromContext. It must never panic; a refusal wraps
// ErrUnauthenticated; an accepted bearer token is non-empty and carries no
// surrounding space.
func FuzzCredentialsFromMetadata(f *testing.F) {
	f.Add("Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig", "", "Kubernetes", "", false)
	f.Add("bearer   tok  ", "Bearer other", "c1", "c2", true)
	f.Add("Basic dXNlcjpwYXNz", "", "", "", false)
	f.Add("Bearer", "", "\x00", "", false)
	f.Fuzz(func(t *testing.T, auth1, auth2, cluster1, cluster2 string, twice bool) {
		pairs := []string{"authorization", auth1, "clusterid", cluster1}
		if twice {
			pairs = append(pairs, "authorization", auth2, "clusterid", cluster2)
		}
		md := metadata.Pairs(pairs...)
		cred, err := CredentialsFromContext(metadata.NewIncomingContext(context.Background(), md))
		if err != nil {
			if !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("refusal does not wrap ErrUnauthenticated: %v", err)
			}
			return
		}
		if twice {
			t.Fatal("two authorization headers were accepted")
		}
		if cred.Token == "" || cred.Token != strings.TrimSpace(cred.Token) {
			t.Fatalf("accepted token %q", cred.Token)
		}
	})
}

// FuzzLoadJWKSFile feeds LoadJWKSFile arbitrary file contents (a JWKS from
// kubectl, or fetched by discovery): it must never panic, and a set it
// accepts holds only public keys.
func FuzzLoadJWKSFile(f *testing.F) {
	e := newJWTEnv(f)
	set := e.minter.JWKS()
	good, err := set.Keys[0].MarshalJSON()
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"keys":[` + string(good) + `]}`))
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`[`))
	path := filepath.Join(f.TempDir(), "jwks.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := LoadJWKSFile(path)
		if err != nil {
			return
		}
		for _, k := range out.Keys {
			if !k.IsPublic() {
				t.Fatalf("accepted a set holding a non-public key %q", k.KeyID)
			}
		}
	})
}

// FuzzTokenReviewScreen feeds the screen that runs before any TokenReview
// arbitrary bearer strings: it must never panic, a refusal wraps
// ErrUnauthenticated, and what it lets through to a review is three
// base64url parts naming an allowed algorithm and, with issuers
// configured, one of them.
func FuzzTokenReviewScreen(f *testing.F) {
	a, err := NewTokenReviewAuthenticator(TokenReviewOptions{Client: fakeclientset.NewClientset(), TrustDomain: testTrustDomain,
		Issuers: []string{"https://kubernetes.default.svc.cluster.local"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(shapedToken("sleep"))
	f.Add(jwtParts(`{"alg":"none"}`, `{"iss":"https://kubernetes.default.svc.cluster.local"}`) + ".")
	f.Add(jwtParts(`{"alg":"RS256"}`, `{"iss":"https://attacker.example"}`) + ".c2ln")
	f.Add(jwtParts(`{"alg":"ES512"}`, `{"iss":5}`) + ".c2ln")
	f.Add(strings.Repeat("A", 8<<10))
	f.Add("a.b.c.d.e")
	f.Add("..")
	f.Fuzz(func(t *testing.T, token string) {
		err := a.screen(token)
		if err != nil {
			if !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("refusal does not wrap ErrUnauthenticated: %v", err)
			}
			return
		}
		if strings.Count(token, ".") != 2 {
			t.Fatalf("screen let through %q, not three parts", token)
		}
		jws, err := parseCompact(token, reviewAlgorithms)
		if err != nil {
			t.Fatalf("screen let through %q, which does not parse: %v", token, err)
		}
		if !strings.Contains(string(jws.payload), "kubernetes.default.svc.cluster.local") {
			t.Fatalf("screen let through a payload without the issuer: %q", jws.payload)
		}
	})
}
