package issuer_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	vault "github.com/hashicorp/vault/api"

	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
)

var quiet = slog.New(slog.DiscardHandler)

// transitPolicy is what the daemon needs on its Transit mount.
func transitPolicy(t *testing.T, env *vaulttest.Env) string {
	t.Helper()
	name := "transitca-" + env.Transit
	policy := `
path "` + env.Transit + `/keys/*" { capabilities = ["read"] }
path "` + env.Transit + `/sign/*" { capabilities = ["update"] }
`
	if err := env.Client.Sys().PutPolicy(name, policy); err != nil {
		t.Fatal(err)
	}
	return name
}

func signOnce(t *testing.T, c *vault.Client, env *vaulttest.Env) error {
	t.Helper()
	tr := issuer.NewTransit(c, env.Transit, 5*time.Second)
	defer tr.Close()
	s, err := tr.Signer(context.Background(), "k", 0)
	if err != nil {
		return err
	}
	d := sha256.Sum256([]byte("x"))
	_, err = s.Sign(nil, d[:], crypto.SHA256)
	return err
}

func TestVaultTokenRenewed(t *testing.T) {
	env := vaulttest.New(t)
	if _, err := issuer.NewTransit(env.Client, env.Transit, 0).EnsureKey(context.Background(), "k", issuer.KeyECDSAP256); err != nil {
		t.Fatal(err)
	}
	policy := transitPolicy(t, env)
	tok, err := env.Client.Auth().Token().Create(&vault.TokenCreateRequest{
		Policies: []string{policy}, TTL: "3s", ExplicitMaxTTL: "1h", Renewable: boolPtr(true),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := issuer.NewVaultSession(ctx, env.Server.Addr, issuer.VaultAuth{Method: issuer.VaultAuthToken, Token: tok.Auth.ClientToken}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	go s.Run(ctx)
	time.Sleep(7 * time.Second) // more than twice the token's TTL
	if err := signOnce(t, s.Client, env); err != nil {
		t.Fatalf("token expired although the session renews it: %v", err)
	}
}

func TestVaultAppRoleLoginAgainAfterMaxTTL(t *testing.T) {
	env := vaulttest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := appRoleSession(t, ctx, env, "2s", "3s")
	first := s.Client.Token()
	if err := signOnce(t, s.Client, env); err != nil {
		t.Fatalf("sign after approle login: %v", err)
	}
	go s.Run(ctx)
	time.Sleep(6 * time.Second) // twice the token's maximum TTL
	if s.Client.Token() == first {
		t.Fatal("the session did not log in again after the token reached its maximum TTL")
	}
	if err := signOnce(t, s.Client, env); err != nil {
		t.Fatalf("sign after the first token expired: %v", err)
	}
}

// appRoleSession enables AppRole auth with a role whose tokens have ttl and
// maxTTL and may sign with env's Transit keys, and logs in with it; the
// Transit key "k" exists.
func appRoleSession(t *testing.T, ctx context.Context, env *vaulttest.Env, ttl, maxTTL string) *issuer.VaultSession {
	t.Helper()
	c := env.Client
	if _, err := issuer.NewTransit(c, env.Transit, 0).EnsureKey(ctx, "k", issuer.KeyECDSAP256); err != nil {
		t.Fatal(err)
	}
	policy := transitPolicy(t, env)
	mount := "approle-" + env.Transit
	if err := c.Sys().EnableAuthWithOptions(mount, &vault.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Logical().Write("auth/"+mount+"/role/transitca", map[string]any{
		"token_policies": []string{policy}, "token_ttl": ttl, "token_max_ttl": maxTTL,
	}); err != nil {
		t.Fatal(err)
	}
	rid, err := c.Logical().Read("auth/" + mount + "/role/transitca/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := c.Logical().Write("auth/"+mount+"/role/transitca/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(secretFile, []byte(sid.Data["secret_id"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := issuer.NewVaultSession(ctx, env.Server.Addr, issuer.VaultAuth{
		Method: issuer.VaultAuthAppRole, Mount: mount, RoleID: rid.Data["role_id"].(string), SecretIDFile: secretFile,
	}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVaultAuthErrors(t *testing.T) {
	env := vaulttest.New(t)
	cases := []struct {
		name string
		auth issuer.VaultAuth
		want string
	}{
		{"bad token", issuer.VaultAuth{Token: "s.nope"}, "permission denied"},
		{"approle without role id", issuer.VaultAuth{Method: issuer.VaultAuthAppRole}, "needs role_id and secret_id_file"},
		{"approle missing secret file", issuer.VaultAuth{Method: issuer.VaultAuthAppRole, RoleID: "r", SecretIDFile: "/nonexistent/secret"}, "/nonexistent/secret"},
		{"kubernetes without role", issuer.VaultAuth{Method: issuer.VaultAuthKubernetes}, "needs role"},
		{"unknown method", issuer.VaultAuth{Method: "ldap"}, `"ldap"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := issuer.NewVaultSession(context.Background(), env.Server.Addr, tc.auth, quiet)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func boolPtr(b bool) *bool { return &b }

// fakeKubeAPI is the part of a Kubernetes API server Vault's kubernetes
// auth calls: TokenReview. It answers like the real one: 201 Created with
// the review's status, authenticated only for tokens it issued, with the
// audiences asked for, and 401 for a reviewer without the right token.
func fakeKubeAPI(t *testing.T, reviewer string, known map[string][3]string) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+reviewer {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`))
			return
		}
		var review struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Spec       struct {
				Token     string   `json:"token"`
				Audiences []string `json:"audiences"`
			} `json:"spec"`
		}
		// Like the API server, take kind and apiVersion from the URL when the
		// body leaves them out (Vault's client does), and refuse others.
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil || (review.Kind != "" && review.Kind != "TokenReview") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the object provided is unrecognized","reason":"BadRequest","code":400}`))
			return
		}
		status := map[string]any{"authenticated": false, "user": map[string]any{}}
		if sa, ok := known[review.Spec.Token]; ok {
			status = map[string]any{
				"authenticated": true,
				"user": map[string]any{
					"username": "system:serviceaccount:" + sa[0] + ":" + sa[1], "uid": sa[2],
					"groups": []string{"system:serviceaccounts", "system:serviceaccounts:" + sa[0], "system:authenticated"},
				},
				"audiences": review.Spec.Audiences,
			}
		} else {
			status["error"] = "invalid bearer token"
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
			"metadata": map[string]any{"creationTimestamp": nil},
			"spec":     review.Spec, "status": status,
		})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// projectedToken makes a JWT shaped like a projected service-account token.
func projectedToken(t *testing.T, ns, sa, uid string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims := map[string]any{
		"iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:" + ns + ":" + sa,
		"aud": []string{"vault"}, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]any{"name": sa, "uid": uid}},
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestVaultKubernetesLogin(t *testing.T) {
	env := vaulttest.New(t)
	c := env.Client
	if _, err := issuer.NewTransit(c, env.Transit, 0).EnsureKey(context.Background(), "k", issuer.KeyECDSAP256); err != nil {
		t.Fatal(err)
	}
	policy := transitPolicy(t, env)
	daemonToken := projectedToken(t, "istio-system", "transitca", "8d1c0b4e-6f0a-4a53-9a2e-0d6f3c1e7b21")
	intruderToken := projectedToken(t, "default", "web", "0d6f3c1e-7b21-4a53-9a2e-8d1c0b4e6f0a")
	api := fakeKubeAPI(t, "reviewer-secret", map[string][3]string{
		daemonToken:   {"istio-system", "transitca", "8d1c0b4e-6f0a-4a53-9a2e-0d6f3c1e7b21"},
		intruderToken: {"default", "web", "0d6f3c1e-7b21-4a53-9a2e-8d1c0b4e6f0a"},
	})
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})
	mount := "kubernetes-" + env.Transit
	if err := c.Sys().EnableAuthWithOptions(mount, &vault.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Logical().Write("auth/"+mount+"/config", map[string]any{
		"kubernetes_host": api.URL, "kubernetes_ca_cert": string(caPEM),
		"token_reviewer_jwt": "reviewer-secret", "disable_local_ca_jwt": true,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Logical().Write("auth/"+mount+"/role/transitca", map[string]any{
		"bound_service_account_names": []string{"transitca"}, "bound_service_account_namespaces": []string{"istio-system"},
		"token_policies": []string{policy}, "token_ttl": "1h", "audience": "vault",
	}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, tok string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	s, err := issuer.NewVaultSession(context.Background(), env.Server.Addr, issuer.VaultAuth{
		Method: issuer.VaultAuthKubernetes, Mount: mount, Role: "transitca", TokenFile: write("daemon", daemonToken),
	}, quiet)
	if err != nil {
		t.Fatalf("kubernetes login: %v\nvault log:\n%s", err, env.Server.Logs())
	}
	if err := signOnce(t, s.Client, env); err != nil {
		t.Fatalf("sign after kubernetes login: %v", err)
	}
	// Another workload's service account is not bound to the role.
	_, err = issuer.NewVaultSession(context.Background(), env.Server.Addr, issuer.VaultAuth{
		Method: issuer.VaultAuthKubernetes, Mount: mount, Role: "transitca", TokenFile: write("intruder", intruderToken),
	}, quiet)
	if err == nil || !strings.Contains(err.Error(), "not authorized") {
		t.Fatalf("login with another service account: %v", err)
	}
}
