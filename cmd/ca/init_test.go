package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/transitca/transitca/internal/vaulttest"
)

func TestMain(m *testing.M) {
	if os.Getenv(asCAEnv) == "1" {
		// Started as "ca" by a command a test runs as printed (caOnPath),
		// or as "ca serve" by a test that stops it with SIGTERM, as main.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	vaulttest.Main(m)
}

func writeConfig(t *testing.T, env *vaulttest.Env, extra string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "transitca.yaml")
	cfg := "data_dir: " + t.TempDir() + "\nvault:\n  transit_mount: " + env.Transit + "\n  kv_mount: " + env.KV + "\n" + extra
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func runCA(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), code
}

func TestInitTwiceWithVault(t *testing.T) {
	env := vaulttest.New(t)
	t.Setenv("VAULT_ADDR", env.Server.Addr)
	t.Setenv("VAULT_TOKEN", env.Server.RootToken)
	cfg := writeConfig(t, env, "")

	out, errs, code := runCA(t, "init", "--config", cfg)
	if code != 0 {
		t.Fatalf("first init exited %d: %s", code, errs)
	}
	if !strings.Contains(out, "created root key transitca-root") || !strings.Contains(out, "created root certificate for key version 1") {
		t.Fatalf("first init output:\n%s", out)
	}
	block, _ := pem.Decode([]byte(out[strings.Index(out, "-----BEGIN"):]))
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !root.IsCA {
		t.Fatalf("init printed no root certificate: %v", err)
	}

	out2, errs, code := runCA(t, "init", "--config", cfg)
	if code != 0 {
		t.Fatalf("second init exited %d: %s", code, errs)
	}
	if !strings.Contains(out2, "nothing changed") {
		t.Fatalf("second init does not say nothing changed:\n%s", out2)
	}
	if out2[strings.Index(out2, "-----BEGIN"):] != out[strings.Index(out, "-----BEGIN"):] {
		t.Fatal("second init printed another root")
	}
	sec, err := env.Client.Logical().Read(env.Transit + "/keys/transitca-root")
	if err != nil {
		t.Fatal(err)
	}
	if sec.Data["exportable"] != false || sec.Data["latest_version"].(interface{ String() string }).String() != "1" {
		t.Fatalf("root key after two inits: exportable=%v latest_version=%v", sec.Data["exportable"], sec.Data["latest_version"])
	}
}

func TestInitErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string
	}{
		{"unknown config key", []string{"init", "--config", "testdata/unknown-key.yaml"}, nil, 1, "field root_kee not found"},
		{"bad key type", []string{"init", "--dev", "--data-dir", "DIR", "--root-key-type", "rsa-1024"}, nil, 1, `ca.root_key_type: "rsa-1024" is not one of`},
		{"vault mode in dev", []string{"init", "--dev", "--data-dir", "DIR", "--intermediate-mode", "vault"}, nil, 1, "needs Vault; dev mode supports"},
		{"no vault token", []string{"init", "--data-dir", "DIR"}, map[string]string{"VAULT_TOKEN": "", "VAULT_ADDR": "http://127.0.0.1:1"}, 1, "no token (set VAULT_TOKEN)"},
		{"vault unreachable", []string{"init", "--data-dir", "DIR"}, map[string]string{"VAULT_TOKEN": "x", "VAULT_ADDR": "http://127.0.0.1:1"}, 1, "http://127.0.0.1:1"},
		{"enable-transit in dev", []string{"init", "--dev", "--data-dir", "DIR", "--enable-transit"}, nil, 1, "dev mode has no Vault"},
		{"stray argument", []string{"init", "--dev", "extra"}, nil, 2, "unexpected arguments"},
		{"unknown command", []string{"frobnicate"}, nil, 2, `unknown command "frobnicate"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := append([]string(nil), tc.args...)
			for i, a := range args {
				if a == "DIR" {
					args[i] = t.TempDir()
				}
			}
			_, errs, code := runCA(t, args...)
			if code != tc.code || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d, stderr:\n%s\nwant exit %d and %q", code, errs, tc.code, tc.want)
			}
		})
	}
}

func TestServeCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("trust_domain: mesh.example\nauth:\n  client_certificates: true\n"), 0o600)
	out, errs, code := runCA(t, "serve", "--config", good, "--check-config")
	if code != 0 || !strings.Contains(out, "configuration OK") {
		t.Fatalf("exit %d: %s %s", code, out, errs)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("tiers:\n  service: {max_ttl: 90d, default_ttl: 1h}\n"), 0o600)
	_, errs, code = runCA(t, "serve", "--config", bad, "--check-config")
	if code != 1 || !strings.Contains(errs, "ca.intermediate_ttl") {
		t.Fatalf("exit %d: %s", code, errs)
	}
}

func TestLogCommandRefusesForeignFiles(t *testing.T) {
	dir := t.TempDir()
	cases := map[string][]byte{
		"random.db": bytes.Repeat([]byte{0x42}, 8192),
		"empty.db":  {},
		"text.db":   []byte("not a database\n"),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, name)
			os.WriteFile(p, data, 0o600)
			_, errs, code := runCA(t, "log", "verify", "--db", p)
			if code != 1 || !strings.Contains(errs, p) {
				t.Fatalf("exit %d, stderr %q: want an error naming %s", code, errs, p)
			}
			after, _ := os.ReadFile(p)
			if !bytes.Equal(after, data) {
				t.Fatal("the file was changed")
			}
		})
	}
}

// TestInitOnFreshVault: on a Vault where the secrets engines ca init needs
// are not mounted, it says which one is missing and the command that mounts
// it, and changes nothing.
func TestInitOnFreshVault(t *testing.T) {
	cases := []struct {
		name   string
		mount  func(t *testing.T, env *vaulttest.Env)
		want   func(env *vaulttest.Env) []string
		noRoot bool // the root key must not have been created
	}{
		{
			name:  "no transit engine",
			mount: func(t *testing.T, env *vaulttest.Env) { env.MountKV(t, 2) },
			want: func(env *vaulttest.Env) []string {
				return []string{`no transit secrets engine is mounted at "` + env.Transit + `"`,
					"vault secrets enable -path=" + env.Transit + " transit", "ca init --enable-transit"}
			},
		},
		{
			name:  "no kv engine",
			mount: func(t *testing.T, env *vaulttest.Env) { env.MountTransit(t) },
			want: func(env *vaulttest.Env) []string {
				return []string{`no kv version 2 secrets engine is mounted at "` + env.KV + `"`,
					"vault secrets enable -path=" + env.KV + " -version=2 kv", "ca init --enable-kv"}
			},
			noRoot: true,
		},
		{
			name:  "kv version 1",
			mount: func(t *testing.T, env *vaulttest.Env) { env.MountTransit(t); env.MountKV(t, 1) },
			want: func(env *vaulttest.Env) []string {
				return []string{`secrets engine mounted at "` + env.KV + `"`, "is kv version 1, not kv version 2", "vault kv enable-versioning " + env.KV}
			},
			noRoot: true,
		},
		{
			name:  "nothing mounted",
			mount: func(*testing.T, *vaulttest.Env) {},
			want: func(env *vaulttest.Env) []string {
				return []string{"vault secrets enable -path=" + env.Transit + " transit",
					"vault secrets enable -path=" + env.KV + " -version=2 kv"}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := vaulttest.NewBare(t, vaulttest.Shared(t))
			tc.mount(t, env)
			t.Setenv("VAULT_ADDR", env.Server.Addr)
			t.Setenv("VAULT_TOKEN", env.Server.RootToken)
			out, errs, code := runCA(t, "init", "--config", writeConfig(t, env, ""))
			if code != 1 {
				t.Fatalf("init exited %d, want 1; stdout:\n%s\nstderr:\n%s", code, out, errs)
			}
			for _, w := range tc.want(env) {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr does not say %q:\n%s", w, errs)
				}
			}
			if strings.Contains(errs, "no handler for route") {
				t.Errorf("stderr shows Vault's raw answer:\n%s", errs)
			}
			if tc.noRoot {
				if sec, err := env.Client.Logical().Read(env.Transit + "/keys/transitca-root"); err != nil || sec != nil {
					t.Fatalf("init created the root key before failing: %v %v", sec, err)
				}
			}
		})
	}
}

// TestInitEnablesEngines: ca init --enable-transit --enable-kv on a fresh
// Vault mounts both engines and initializes the CA; run again, it changes
// nothing.
func TestInitEnablesEngines(t *testing.T) {
	env := vaulttest.NewBare(t, vaulttest.Shared(t))
	t.Setenv("VAULT_ADDR", env.Server.Addr)
	t.Setenv("VAULT_TOKEN", env.Server.RootToken)
	cfg := writeConfig(t, env, "")
	out, errs, code := runCA(t, "init", "--config", cfg, "--enable-transit", "--enable-kv")
	if code != 0 {
		t.Fatalf("init exited %d: %s", code, errs)
	}
	for _, w := range []string{
		"created transit secrets engine at " + env.Transit,
		"created kv version 2 secrets engine at " + env.KV,
		"created root key transitca-root", "created root certificate for key version 1",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("init output does not say %q:\n%s", w, out)
		}
	}
	mounts, err := env.Client.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	if m := mounts[env.Transit+"/"]; m == nil || m.Type != "transit" {
		t.Fatalf("transit mount: %+v", m)
	}
	if m := mounts[env.KV+"/"]; m == nil || m.Type != "kv" || m.Options["version"] != "2" {
		t.Fatalf("kv mount: %+v", m)
	}
	if _, err := env.Client.KVv2(env.KV).Get(context.Background(), "transitca/root/transitca-root/v1"); err != nil {
		t.Fatalf("root certificate not stored in kv: %v", err)
	}
	out, errs, code = runCA(t, "init", "--config", cfg, "--enable-transit", "--enable-kv")
	if code != 0 || !strings.Contains(out, "nothing changed") {
		t.Fatalf("second init exited %d:\n%s\n%s", code, out, errs)
	}
}

// TestInitOnFreshVaultWithoutMountTableAccess: a token that may use the
// mounts but not read sys/mounts still learns what to mount.
func TestInitOnFreshVaultWithoutMountTableAccess(t *testing.T) {
	env := vaulttest.NewBare(t, vaulttest.Shared(t))
	env.MountKV(t, 2)
	policy := "init-" + env.Transit
	rules := `path "` + env.Transit + `/*" { capabilities = ["create", "read", "update", "list"] }
path "` + env.KV + `/*" { capabilities = ["create", "read", "update", "list"] }`
	if err := env.Client.Sys().PutPolicy(policy, rules); err != nil {
		t.Fatal(err)
	}
	tok, err := env.Client.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{policy}})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_ADDR", env.Server.Addr)
	t.Setenv("VAULT_TOKEN", tok.Auth.ClientToken)
	_, errs, code := runCA(t, "init", "--config", writeConfig(t, env, ""))
	if code != 1 || !strings.Contains(errs, "no secrets engine is mounted there") ||
		!strings.Contains(errs, "vault secrets enable -path="+env.Transit+" transit") {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 naming the missing transit engine and the command that mounts it", code, errs)
	}
}
