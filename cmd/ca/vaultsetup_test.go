package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/daemontest"
	"github.com/transitca/transitca/internal/vaulttest"
)

// deployVault is the directory of the shipped Vault setup.
var deployVault = filepath.Join("..", "..", "deploy", "vault")

// runSetup runs deploy/vault/setup.sh against srv with its root token, the
// vault CLI being the test server's own binary, and returns its output.
func runSetup(t *testing.T, srv *vaulttest.Server) string {
	t.Helper()
	bin := t.TempDir()
	if err := os.Symlink(vaulttest.Binary(), filepath.Join(bin, "vault")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", filepath.Join(deployVault, "setup.sh"))
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"VAULT_ADDR="+srv.Addr, "VAULT_TOKEN="+srv.RootToken, "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("setup.sh: %v\n%s", err, out)
	}
	return string(out)
}

// checkSetupResult checks what setup.sh leaves in Vault: the engines, and
// the policies exactly as shipped.
func checkSetupResult(t *testing.T, c *vaultapi.Client) {
	t.Helper()
	mounts, err := c.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	if m := mounts["transit/"]; m == nil || m.Type != "transit" {
		t.Fatalf("transit/ after setup.sh: %+v", m)
	}
	if m := mounts["secret/"]; m == nil || m.Type != "kv" || m.Options["version"] != "2" {
		t.Fatalf("secret/ after setup.sh: %+v", m)
	}
	for _, p := range []string{"transitca", "transitca-init"} {
		want, err := os.ReadFile(filepath.Join(deployVault, p+".hcl"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Sys().GetPolicy(p)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
			t.Fatalf("policy %s in Vault is not %s.hcl:\n%s", p, p, got)
		}
	}
}

// The shipped Vault setup on a fresh Vault: setup.sh, run twice (and again
// once Kubernetes auth is enabled), mounts the engines and writes the
// policies and the Kubernetes auth role. Then "ca init" runs with a token
// holding only transitca-init, and the daemon serves, rotates the
// intermediate, runs a drill, prepares and activates a new root, and
// publishes its log checkpoint with a token holding only transitca (and
// Vault's default policy, which lets a token look itself up and renew
// itself). Neither token may make a key exportable or deletable, export,
// back up, restore, trim, delete or create keys, erase KV history, or read
// the mount table (ca init's token may read the two mounts it uses).
func TestShippedVaultSetup(t *testing.T) {
	for _, mode := range []string{"memory", "vault"} {
		t.Run(mode, func(t *testing.T) { testShippedVaultSetup(t, mode) })
	}
}

func testShippedVaultSetup(t *testing.T, mode string) {
	srv := vaulttest.Own(t)
	root, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// setup.sh, twice: the second run finds everything in place.
	first := runSetup(t, srv)
	if !strings.Contains(first, "transit secrets engine at transit/: enabled") {
		t.Fatalf("first setup.sh run:\n%s", first)
	}
	checkSetupResult(t, root)
	second := runSetup(t, srv)
	if !strings.Contains(second, "transit/: present") || !strings.Contains(second, "secret/: present") || !strings.Contains(second, "role skipped") {
		t.Fatalf("second setup.sh run:\n%s", second)
	}
	checkSetupResult(t, root)
	// With Kubernetes auth enabled, it writes the role too, and a rerun
	// leaves it the same.
	if err := root.Sys().EnableAuthWithOptions("kubernetes", &vaultapi.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if out := runSetup(t, srv); !strings.Contains(out, "role auth/kubernetes/role/transitca: written") {
			t.Fatalf("setup.sh with kubernetes auth:\n%s", out)
		}
		checkSetupResult(t, root)
		role, err := root.Logical().Read("auth/kubernetes/role/transitca")
		if err != nil || role == nil {
			t.Fatalf("kubernetes role: %v", err)
		}
		got := strings.TrimSpace(fmt.Sprintln(role.Data["bound_service_account_names"], role.Data["bound_service_account_namespaces"], role.Data["audience"], role.Data["token_policies"]))
		if want := "[transitca] [istio-system] vault [transitca]"; got != want {
			t.Fatalf("kubernetes role: names, namespaces, audience, policies = %s, want %s", got, want)
		}
	}

	initTok := policyToken(t, root, "transitca-init")
	daemonTok := policyToken(t, root, "transitca")

	// Workload tokens: a JWKS the daemon trusts, and a minter for it.
	dir := t.TempDir()
	minter, _ := testMinter(t, dir)
	cfgPath := filepath.Join(dir, "transitca.yaml")
	writeFile(t, cfgPath, fmt.Sprintf(`data_dir: %s
vault:
  address: %s
ca:
  intermediate_mode: %s
server:
  listen: 127.0.0.1:0
  metrics_listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  identities: [spiffe://cluster.local/ns/transitca/sa/admin]
auth:
  jwt:
    issuer: https://issuer.test
    jwks_file: %s
kubernetes:
  enabled: false
`, filepath.Join(dir, "data"), srv.Addr, mode, filepath.Join(dir, "jwks.json")))

	// ca init with the init policy.
	t.Setenv("VAULT_ADDR", srv.Addr)
	t.Setenv("VAULT_TOKEN", initTok)
	if out, errs, code := runCA(t, "init", "--config", cfgPath); code != 0 {
		t.Fatalf("ca init with the transitca-init policy exited %d:\n%s%s", code, out, errs)
	}

	// The daemon with the daemon policy.
	t.Setenv("VAULT_TOKEN", daemonTok)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// Started with the daemon's policy only: a refusal fails the test.
	d, stop := daemontest.Start(t, cfg)

	request := func(ns, sa string) (certDir string, chain []*x509.Certificate, bundle *x509.CertPool) {
		t.Helper()
		tok, err := minter.Mint(ns, sa, []string{"istio-ca"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		tf := filepath.Join(t.TempDir(), "token")
		writeFile(t, tf, tok)
		certDir = t.TempDir()
		if out, errs, code := runCA(t, "request", "--addr", d.Addr(), "--token-file", tf, "--root-cert", d.RootFile(),
			"--server-name", "localhost", "--out", certDir); code != 0 {
			t.Fatalf("ca request for %s/%s exited %d:\n%s%s", ns, sa, code, out, errs)
		}
		chain = readCerts(t, filepath.Join(certDir, "cert-chain.pem"))
		bundle = x509.NewCertPool()
		for _, r := range readCerts(t, filepath.Join(certDir, "root-cert.pem")) {
			bundle.AddCert(r)
		}
		return certDir, chain, bundle
	}
	verify := func(what string, chain []*x509.Certificate, bundle *x509.CertPool) {
		t.Helper()
		ip := x509.NewCertPool()
		for _, c := range chain[1:] {
			ip.AddCert(c)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: bundle, Intermediates: ip, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("%s: the certificate does not verify against the bundle: %v", what, err)
		}
	}

	_, chain, bundle := request("shop", "web")
	verify("first certificate", chain, bundle)
	adminDir, _, _ := request("transitca", "admin")
	admin := func(args ...string) {
		t.Helper()
		args = append(args, "--addr", d.AdminAddr(), "--cert", filepath.Join(adminDir, "cert-chain.pem"),
			"--key", filepath.Join(adminDir, "key.pem"), "--root-cert", d.RootFile(), "--server-name", "localhost")
		if out, errs, code := runCA(t, append([]string{"admin"}, args...)...); code != 0 {
			t.Fatalf("ca admin %s exited %d:\n%s%s", strings.Join(args[:2], " "), code, out, errs)
		}
	}
	firstIntermediate := chain[1]
	admin("rotate-intermediate", "--reason", "policy test")
	admin("drill")
	admin("root", "prepare", "--reason", "policy test")
	admin("root", "activate", "--force", "--reason", "policy test")

	_, chain, bundle = request("shop", "web")
	verify("certificate after the rotations", chain, bundle)
	if chain[1].Equal(firstIntermediate) {
		t.Fatal("the intermediate did not change after the rotations")
	}
	if v := d.Authority().RootKeyVersion(); v != 2 {
		t.Fatalf("active root key version %d after prepare and activate, want 2", v)
	}
	if v := keyLatestVersion(t, root, "transitca-root"); v != 2 {
		t.Fatalf("transit key transitca-root at version %d, want 2", v)
	}
	if mode == "vault" {
		if v := keyLatestVersion(t, root, "transitca-intermediate"); v < 3 {
			t.Fatalf("transit key transitca-intermediate at version %d after a rotation and a drill, want at least 3", v)
		}
	}

	stop()
	if _, err := root.KVv2("secret").Get(ctx, "transitca/log-checkpoint/"+cfg.LogOrigin()); err != nil {
		t.Fatalf("the log checkpoint witness in KV: %v", err)
	}

	// What neither token may do.
	forbidden := []struct {
		name string
		call func(c *vaultapi.Client) error
	}{
		{"make the root key exportable", func(c *vaultapi.Client) error {
			_, err := c.Logical().Write("transit/keys/transitca-root/config", map[string]any{"exportable": true})
			return err
		}},
		{"allow deleting the root key", func(c *vaultapi.Client) error {
			_, err := c.Logical().Write("transit/keys/transitca-root/config", map[string]any{"deletion_allowed": true})
			return err
		}},
		{"export the root key", func(c *vaultapi.Client) error {
			_, err := c.Logical().Read("transit/export/signing-key/transitca-root")
			return err
		}},
		{"back up the root key", func(c *vaultapi.Client) error {
			_, err := c.Logical().Read("transit/backup/transitca-root")
			return err
		}},
		{"restore over the root key", func(c *vaultapi.Client) error {
			_, err := c.Logical().Write("transit/restore/transitca-root", map[string]any{"backup": "e30=", "force": true})
			return err
		}},
		{"trim the root key", func(c *vaultapi.Client) error {
			_, err := c.Logical().Write("transit/keys/transitca-root/trim", map[string]any{"min_available_version": 2})
			return err
		}},
		{"import a version into the root key", func(c *vaultapi.Client) error {
			_, err := c.Logical().Write("transit/keys/transitca-root/import_version", map[string]any{"ciphertext": "e30="})
			return err
		}},
		{"delete the root key", func(c *vaultapi.Client) error {
			_, err := c.Logical().Delete("transit/keys/transitca-root")
			return err
		}},
		{"create another key", func(c *vaultapi.Client) error {
			_, err := c.Logical().Write("transit/keys/other", map[string]any{"type": "ecdsa-p256", "exportable": true})
			return err
		}},
		{"erase the rotation state's history", func(c *vaultapi.Client) error {
			_, err := c.Logical().Delete("secret/metadata/transitca/rotation")
			return err
		}},
		{"destroy a root certificate version", func(c *vaultapi.Client) error {
			_, err := c.Logical().Write("secret/destroy/transitca/transitca-root-v1", map[string]any{"versions": []int{1}})
			return err
		}},
		{"read the mount table", func(c *vaultapi.Client) error {
			_, err := c.Logical().Read("sys/mounts")
			return err
		}},
	}
	for _, who := range []struct{ policy, token string }{{"transitca", daemonTok}, {"transitca-init", initTok}} {
		c, err := root.Clone()
		if err != nil {
			t.Fatal(err)
		}
		c.SetToken(who.token)
		for _, f := range forbidden {
			var re *vaultapi.ResponseError
			if err := f.call(c); !errors.As(err, &re) || re.StatusCode != http.StatusForbidden {
				t.Errorf("%s with the %s policy: %v, want 403 permission denied", f.name, who.policy, err)
			}
		}
	}
	sec, err := root.Logical().Read("transit/keys/transitca-root")
	if err != nil {
		t.Fatal(err)
	}
	if sec.Data["exportable"] != false || sec.Data["deletion_allowed"] != false {
		t.Fatalf("root key after the refused calls: exportable=%v deletion_allowed=%v", sec.Data["exportable"], sec.Data["deletion_allowed"])
	}
	if keys, err := root.Logical().List("transit/keys"); err != nil || !slices.Equal(listKeys(keys), wantKeys(mode)) {
		t.Fatalf("transit keys: %v (%v), want %v", listKeys(keys), err, wantKeys(mode))
	}
}

// policyToken creates a token with policy (and Vault's default policy).
func policyToken(t *testing.T, root *vaultapi.Client, policy string) string {
	t.Helper()
	sec, err := root.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{policy}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	return sec.Auth.ClientToken
}

func keyLatestVersion(t *testing.T, c *vaultapi.Client, name string) int64 {
	t.Helper()
	sec, err := c.Logical().Read("transit/keys/" + name)
	if err != nil || sec == nil {
		t.Fatalf("read transit key %s: %v", name, err)
	}
	v, err := sec.Data["latest_version"].(json.Number).Int64()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func listKeys(s *vaultapi.Secret) []string {
	if s == nil {
		return nil
	}
	var out []string
	raw, _ := s.Data["keys"].([]any)
	for _, k := range raw {
		out = append(out, fmt.Sprint(k))
	}
	slices.Sort(out)
	return out
}

func wantKeys(mode string) []string {
	if mode == "vault" {
		return []string{"transitca-intermediate", "transitca-log", "transitca-root"}
	}
	return []string{"transitca-log", "transitca-root"}
}

// testMinter makes a token minter for issuer https://issuer.test and writes
// the JWKS that verifies its tokens to dir/jwks.json.
func testMinter(t *testing.T, dir string) (*ca.TokenMinter, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	minter, err := ca.NewTokenMinter(key, "test-1", "https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := json.Marshal(minter.JWKS())
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "jwks.json")
	writeFile(t, file, string(jwks))
	return minter, file
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	rest, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// The shipped policies cannot weaken a key. With a token holding only
// transitca-init (ca init's) or only transitca (the daemon's), creating
// any of the CA's three Transit keys exportable, with plaintext backup
// allowed, of a type it does not sign with, or with another parameter, is
// refused (403) and leaves no key; "ca init" with the transitca-init token
// then creates all three, and they read back non-exportable, without
// plaintext backup; writing them again with the weakening parameters is
// refused and changes nothing.
func TestShippedPoliciesCannotWeakenKeys(t *testing.T) {
	srv := vaulttest.Own(t)
	root, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	runSetup(t, srv)
	tokens := []struct{ policy, token string }{
		{"transitca-init", policyToken(t, root, "transitca-init")},
		{"transitca", policyToken(t, root, "transitca")},
	}
	keys := []struct {
		name, typ string
	}{{"transitca-root", "ecdsa-p256"}, {"transitca-intermediate", "ecdsa-p256"}, {"transitca-log", "ed25519"}}
	weak := []struct {
		name   string
		params func(typ string) map[string]any
	}{
		{"exportable", func(typ string) map[string]any { return map[string]any{"type": typ, "exportable": true} }},
		{"with plaintext backup", func(typ string) map[string]any { return map[string]any{"type": typ, "allow_plaintext_backup": true} }},
		{"exportable with plaintext backup", func(typ string) map[string]any {
			return map[string]any{"type": typ, "exportable": true, "allow_plaintext_backup": true}
		}},
		{"exportable, spelled as a string", func(typ string) map[string]any { return map[string]any{"type": typ, "exportable": "true"} }},
		{"exportable, in capitals", func(typ string) map[string]any { return map[string]any{"type": typ, "EXPORTABLE": true} }},
		{"as an encryption key", func(string) map[string]any { return map[string]any{"type": "aes256-gcm96", "exportable": false} }},
		{"with automatic rotation", func(typ string) map[string]any { return map[string]any{"type": typ, "auto_rotate_period": "1h"} }},
	}
	tryWeak := func(when string) {
		t.Helper()
		for _, tok := range tokens {
			c, err := root.Clone()
			if err != nil {
				t.Fatal(err)
			}
			c.SetToken(tok.token)
			for _, k := range keys {
				for _, w := range weak {
					_, err := c.Logical().Write("transit/keys/"+k.name, w.params(k.typ))
					var re *vaultapi.ResponseError
					if !errors.As(err, &re) || re.StatusCode != http.StatusForbidden {
						t.Errorf("%s: create %s %s with the %s policy: %v, want 403 permission denied", when, k.name, w.name, tok.policy, err)
					}
				}
			}
		}
	}

	tryWeak("before ca init")
	if sec, err := root.Logical().List("transit/keys"); err != nil || len(listKeys(sec)) != 0 {
		t.Fatalf("transit keys after the refused creations: %v (%v), want none", listKeys(sec), err)
	}

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "transitca.yaml")
	writeFile(t, cfgPath, fmt.Sprintf("data_dir: %s\nvault:\n  address: %s\nca:\n  intermediate_mode: vault\nkubernetes:\n  enabled: false\n", filepath.Join(dir, "data"), srv.Addr))
	t.Setenv("VAULT_ADDR", srv.Addr)
	t.Setenv("VAULT_TOKEN", tokens[0].token)
	if out, errs, code := runCA(t, "init", "--config", cfgPath); code != 0 {
		t.Fatalf("ca init with the transitca-init policy exited %d:\n%s%s", code, out, errs)
	}
	checkKeys := func(when string) {
		t.Helper()
		for _, k := range keys {
			sec, err := root.Logical().Read("transit/keys/" + k.name)
			if err != nil || sec == nil {
				t.Fatalf("%s: read %s: %v", when, k.name, err)
			}
			if sec.Data["type"] != k.typ || sec.Data["exportable"] != false || sec.Data["allow_plaintext_backup"] != false {
				t.Errorf("%s: %s reads back type=%v exportable=%v allow_plaintext_backup=%v, want %s, false, false",
					when, k.name, sec.Data["type"], sec.Data["exportable"], sec.Data["allow_plaintext_backup"], k.typ)
			}
		}
	}
	checkKeys("after ca init")
	tryWeak("after ca init")
	checkKeys("after the refused writes")
}
