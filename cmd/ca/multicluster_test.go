package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/daemon"
	"github.com/transitca/transitca/internal/daemontest"
	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
)

// shippedMultiCluster is the shipped multi-cluster example.
var shippedMultiCluster = filepath.Join("..", "..", "deploy", "config", "multicluster-ambient.yaml")

// multiClusterDaemon runs the shipped multi-cluster configuration,
// adapted to the test as little as it can be: Vault is the test's (token
// auth, its own mounts), the listeners are on loopback ports, the data
// directory is the test's, and its three clusters are one real API
// server, reached as the transitca service account under the shipped RBAC
// (primary through kubernetes.kubeconfig, as in-cluster; remote-1 and
// remote-2 through their kubeconfigs; remote-2's tokens checked against
// the server's JWKS). Everything else (the cluster IDs, which have no
// "Kubernetes", the admin identity, the serving names, ambient mode, the
// policy) is the file's. It returns the daemon, the Kubernetes
// environment of istio-system, and the configuration file written.
func multiClusterDaemon(t *testing.T) (*daemon.Daemon, *kubetest.Env, string) {
	t.Helper()
	vault := vaulttest.New(t)
	srv, err := kubetest.Start()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(srv.Stop)
	env := kubetest.NewOn(t, srv)
	env.Apply(t, kubetest.RBACManifests()...)
	system := &kubetest.Env{Server: srv, Client: env.Client, Namespace: "istio-system"}

	cfg, err := config.Load(shippedMultiCluster)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Vault.Address = vault.Server.Addr
	cfg.Vault.Auth = config.VaultAuth{Method: issuer.VaultAuthToken}
	cfg.Vault.TransitMount, cfg.Vault.KVMount = vault.Transit, vault.KV
	cfg.Server.Listen, cfg.Server.MetricsListen, cfg.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Kubernetes.Kubeconfig = system.ServiceAccountKubeconfig(t, "transitca")
	if len(cfg.Clusters) != 3 || cfg.Clusters[0].ID != "primary" || cfg.Clusters[2].JWT.JWKSFile == "" {
		t.Fatalf("the shipped multi-cluster example changed: clusters %+v", cfg.Clusters)
	}
	jwks, err := env.Client.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "remote-2.jwks.json"), string(jwks))
	for i := 1; i < 3; i++ {
		cfg.Clusters[i].Kubeconfig = system.ServiceAccountKubeconfig(t, "transitca")
	}
	cfg.Clusters[2].JWT.Issuer, cfg.Clusters[2].JWT.JWKSFile = kubetest.Issuer, filepath.Join(dir, "remote-2.jwks.json")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(cfg.ClusterIDs(), "Kubernetes") {
		t.Fatalf("the shipped multi-cluster example serves cluster Kubernetes: %v", cfg.ClusterIDs())
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "transitca.yaml")
	writeFile(t, cfgFile, string(b))

	t.Setenv("VAULT_ADDR", vault.Server.Addr)
	t.Setenv("VAULT_TOKEN", vault.Server.RootToken)
	if out, errs, code := runCA(t, "init", "--config", cfgFile); code != 0 {
		t.Fatalf("ca init: %s%s", out, errs)
	}
	d, _ := daemontest.Start(t, cfg)
	return d, system, cfgFile
}

// Every ca admin, ca log and ca report command that talks to a running
// daemon works against the shipped multi-cluster configuration, whose
// clusters do not include the "Kubernetes" the admin commands would send
// if they sent a clusterid: an admin call names no cluster. The admin
// identity is the one the file names (istio-system/transitca-admin), and
// its certificate comes from a token of cluster primary, the CA's own.
func TestCLIAgainstShippedMultiClusterConfig(t *testing.T) {
	d, system, cfgFile := multiClusterDaemon(t)
	const serverName = "transitca.istio-system.svc" // the file's serving name
	system.ServiceAccount(t, "transitca-admin")
	pod := system.Pod(t, "transitca-admin-0", "transitca-admin", "node-a")
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokenFile, system.Token(t, "transitca-admin", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: pod}))
	adminCert := func() []string {
		t.Helper()
		dir := t.TempDir()
		if out, errs, code := runCA(t, "request", "--addr", d.Addr(), "--token-file", tokenFile, "--root-cert", d.RootFile(),
			"--server-name", serverName, "--cluster-id", "primary", "--out", dir); code != 0 {
			t.Fatalf("ca request for the admin identity from cluster primary: %s%s", out, errs)
		}
		return []string{"--addr", d.AdminAddr(), "--cert", filepath.Join(dir, "cert-chain.pem"), "--key", filepath.Join(dir, "key.pem"),
			"--root-cert", d.RootFile(), "--server-name", serverName}
	}
	admin := adminCert()
	vkey := filepath.Join(filepath.Dir(cfgFile), "data", "log-verifier.vkey")
	saved := filepath.Join(t.TempDir(), "saved.checkpoint")
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := system.Server.WriteKubeconfig(kubeconfig, system.Server.AdminToken, ""); err != nil {
		t.Fatal(err)
	}
	// run runs a command with the admin's connection flags and returns
	// what it printed on stdout and stderr.
	run := func(args ...string) (string, string) {
		t.Helper()
		out, errs, code := runCA(t, append(args, admin...)...)
		if code != 0 {
			t.Fatalf("ca %s exited %d:\n%s%s", strings.Join(args, " "), code, out, errs)
		}
		return out, errs
	}
	// What every command printed that shows it did its work.
	checks := []struct {
		args []string
		want string
	}{
		{[]string{"admin", "status"}, "issuance log:"},
		{[]string{"log", "query", "--json"}, `"spiffe_id":"spiffe://cluster.local/ns/istio-system/sa/transitca-admin"`},
		{[]string{"log", "query", "--cluster", "primary", "--kind", "issuance"}, "transitca-admin"},
		{[]string{"log", "show", "--seq", "0"}, `"seq": 0`},
		{[]string{"log", "export"}, `"seq":0`},
		{[]string{"log", "verify", "--verifier-key", vkey}, "log verified"},
		{[]string{"log", "checkpoint"}, "transitca/cluster.local"},
		{[]string{"report", "rollout", "--kubeconfig", kubeconfig, "-o", "json"}, `"pods_checked": true`},
		{[]string{"report", "evidence", "--from", "-1h", "-o", "json"}, `"verified": true`},
		{[]string{"admin", "rotate-intermediate", "--reason", "multi-cluster test"}, "issuing intermediate rotated"},
		{[]string{"admin", "drill"}, "PASS"},
		{[]string{"admin", "root", "prepare", "--reason", "multi-cluster test"}, "prepared"},
		{[]string{"admin", "root", "activate", "--force", "--reason", "multi-cluster test"}, "active; issuing intermediate"},
	}
	for _, c := range checks {
		if out, errs := run(c.args...); !strings.Contains(out+errs, c.want) {
			t.Fatalf("ca %s printed no %q:\n%s%s", strings.Join(c.args, " "), c.want, out, errs)
		}
	}
	out, _ := run("log", "checkpoint")
	writeFile(t, saved, out)
	if out, errs := run("log", "prove", "--seq", "0", "--verifier-key", vkey, "--since", saved); !strings.Contains(out+errs, "verified") {
		t.Fatalf("ca log prove printed no verified proof:\n%s%s", out, errs)
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	run("log", "backup", "--out", backup)
	if fi, err := os.Stat(backup); err != nil || fi.Size() == 0 {
		t.Fatalf("ca log backup wrote no backup: %v", err)
	}

	// Retiring the old root ends the certificates under it, the admin's
	// included: a new one, under the new root; then revoking the
	// intermediate that signed it, last, lists the admin among the
	// workloads to restart.
	admin = adminCert()
	if out, errs := run("admin", "root", "retire", "--force", "--reason", "multi-cluster test"); !strings.Contains(out+errs, "retired") {
		t.Fatalf("ca admin root retire printed no retired root:\n%s%s", out, errs)
	}
	out, errs := run("admin", "revoke-intermediate", "--reason", "multi-cluster test")
	if !strings.Contains(errs, "revoked: never used again") || !strings.Contains(out, "transitca-admin") {
		t.Fatalf("ca admin revoke-intermediate printed:\n%s%s\nwant the revocation and the admin among the workloads it signed for", out, errs)
	}
}
