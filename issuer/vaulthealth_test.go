package issuer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
)

// waitCheck polls Check until it returns nil, for at most limit (a guard
// against a hang: the session logs in again within a second or two).
func waitCheck(t *testing.T, s *issuer.VaultSession, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := s.Check(context.Background())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Check still fails after %v: %v", limit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// An operator revokes the daemon's AppRole token: signing fails, Check
// says the token is refused, and the session logs in again at once, long
// before the token would have expired; signing works again.
func TestVaultRevokedTokenLogsInAgain(t *testing.T) {
	env := vaulttest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := appRoleSession(t, ctx, env, "1h", "2h")
	go s.Run(ctx)
	first := s.Client.Token()
	if err := env.Client.Auth().Token().RevokeTree(first); err != nil {
		t.Fatal(err)
	}
	if err := signOnce(t, s.Client, env); err == nil {
		t.Fatal("signing with a revoked token succeeded")
	}
	err := s.Check(ctx)
	if !errors.Is(err, issuer.ErrTokenRefused) || !errors.Is(err, issuer.ErrUnavailable) {
		t.Fatalf("Check with a revoked token: %v, want ErrTokenRefused and ErrUnavailable", err)
	}
	waitCheck(t, s, 30*time.Second)
	if s.Client.Token() == first {
		t.Fatal("Check passes but the session still holds the revoked token")
	}
	if err := signOnce(t, s.Client, env); err != nil {
		t.Fatalf("sign after logging in again: %v", err)
	}
}

// With token auth there is no way to get a new token: the error says so
// and what to do.
func TestVaultRevokedStaticTokenSaysWhy(t *testing.T) {
	env := vaulttest.New(t)
	policy := transitPolicy(t, env)
	tok, err := env.Client.Auth().Token().Create(&vault.TokenCreateRequest{Policies: []string{policy}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := issuer.NewVaultSession(context.Background(), env.Server.Addr, issuer.VaultAuth{Token: tok.Auth.ClientToken}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Auth().Token().RevokeTree(tok.Auth.ClientToken); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(context.Background()); !errors.Is(err, issuer.ErrTokenRefused) {
		t.Fatalf("Check with a revoked token: %v, want ErrTokenRefused", err)
	}
	_, err = issuer.NewVaultSession(context.Background(), env.Server.Addr, issuer.VaultAuth{Token: tok.Auth.ClientToken}, quiet)
	if !errors.Is(err, issuer.ErrTokenRefused) || !strings.Contains(err.Error(), "cannot get a new one") {
		t.Fatalf("login with a revoked token: %v, want ErrTokenRefused saying token auth cannot get a new one", err)
	}
}

// A sealed Vault answers every request with 503: Check reports it as
// unavailable, naming the seal, and passes again once Vault is unsealed.
func TestVaultSealedCheck(t *testing.T) {
	srv := vaulttest.Own(t)
	env := vaulttest.NewOn(t, srv)
	s, err := issuer.NewVaultSession(context.Background(), srv.Addr, issuer.VaultAuth{Token: srv.RootToken}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := issuer.NewTransit(env.Client, env.Transit, 0).EnsureKey(context.Background(), "k", issuer.KeyECDSAP256); err != nil {
		t.Fatal(err)
	}
	srv.Seal(t)
	err = s.Check(context.Background())
	if !errors.Is(err, issuer.ErrUnavailable) || !strings.Contains(err.Error(), "sealed") {
		t.Fatalf("Check on a sealed Vault: %v, want ErrUnavailable naming the seal", err)
	}
	if err := signOnce(t, s.Client, env); !errors.Is(err, issuer.ErrUnavailable) {
		t.Fatalf("sign on a sealed Vault: %v, want ErrUnavailable", err)
	}
	srv.Unseal(t)
	waitCheck(t, s, 30*time.Second)
	if err := signOnce(t, s.Client, env); err != nil {
		t.Fatalf("sign after unseal: %v", err)
	}
}

// In memory mode a sealed Vault stops the renewal of the intermediate, not
// issuance: past the intermediate's half-life, leaves are still signed
// with it (it is valid), renewal keeps failing, and once Vault is unsealed
// the next retry renews it, without a restart.
func TestMemoryIntermediateRenewsWhenVaultReturns(t *testing.T) {
	srv := vaulttest.Own(t)
	env := vaulttest.NewOn(t, srv)
	keys := issuer.VaultKeys{Transit: issuer.NewTransit(env.Client, env.Transit, 2*time.Second)}
	certs := issuer.NewVaultCerts(env.Client, env.KV, "transitca", 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Half-life two seconds from now (NotBefore is back-dated by Backdate
	// inside the lifetime).
	opts := issuer.Options{IntermediateTTL: 2*issuer.Backdate + 4*time.Second, RenewRetryInterval: 200 * time.Millisecond, Logger: quiet}
	if _, err := issuer.Init(ctx, keys, certs, opts); err != nil {
		t.Fatal(err)
	}
	a, err := issuer.Open(ctx, keys, certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	first := a.Intermediate()
	srv.Seal(t)
	go a.Run(ctx)
	time.Sleep(time.Until(first.RenewAt) + time.Second)
	if a.Intermediate().Fingerprint != first.Fingerprint {
		t.Fatal("the intermediate changed while Vault was sealed")
	}
	tmpl, pub := leafTemplate(t, time.Minute)
	if _, err := a.SignLeaf(ctx, tmpl, pub); err != nil {
		t.Fatalf("signing a leaf past half-life with Vault sealed: %v", err)
	}
	srv.Unseal(t)
	deadline := time.Now().Add(30 * time.Second)
	for a.Intermediate().Fingerprint == first.Fingerprint {
		if time.Now().After(deadline) {
			t.Fatal("the intermediate was not renewed after Vault was unsealed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := a.Intermediate().Cert.CheckSignatureFrom(a.Root()); err != nil {
		t.Fatalf("renewed intermediate not signed by the root: %v", err)
	}
}
