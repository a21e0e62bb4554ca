package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func load(t *testing.T, yaml string) (*Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(path)
}

// loadError returns the error of loading yaml and validating the result:
// nil when both succeed.
func loadError(t *testing.T, yaml string) error {
	t.Helper()
	c, err := load(t, yaml)
	if err != nil {
		return err
	}
	return c.Validate()
}

func TestDefaultsAreValid(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	p := c.IssuancePolicy()
	if got := p.Decide("spiffe://cluster.local/ns/shop/sa/web", "shop", "web", "Kubernetes").Tier; got.Name != "service" || got.MaxTTL != 30*24*time.Hour {
		t.Fatalf("default tier for shop/web: %+v", got)
	}
	if got := p.Decide("spiffe://cluster.local/ns/istio-system/sa/istiod", "istio-system", "istiod", "Kubernetes").Tier; got.Name != "privileged" || got.MaxTTL != 7*24*time.Hour {
		t.Fatalf("default tier for istio-system: %+v", got)
	}
}

func TestLoadFile(t *testing.T) {
	c, err := load(t, `
trust_domain: mesh.example
tiers:
  service: {max_ttl: 10d, default_ttl: 12h}
  batch: {max_ttl: 1d12h, default_ttl: 1h}
default_tier: service
policy:
  - tier: batch
    namespaces: ["jobs-*"]
ca:
  intermediate_ttl: 20d
`)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	p := c.IssuancePolicy()
	tier := p.Decide("spiffe://mesh.example/ns/jobs-nightly/sa/x", "jobs-nightly", "x", "Kubernetes").Tier
	if tier.Name != "batch" || tier.MaxTTL != 36*time.Hour {
		t.Fatalf("tier %+v", tier)
	}
	if c.Server.Listen != ":15012" {
		t.Fatalf("a file that omits server.listen keeps the default, got %q", c.Server.Listen)
	}
}

func TestRejects(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown key", "trust_domian: x\n", "field trust_domian not found"},
		{"unknown nested key", "vault:\n  adress: x\n", "field adress not found"},
		{"bad duration", "ca:\n  root_ttl: forever\n", `duration "forever"`},
		{"two documents", "dev: true\n---\ndev: false\n", "more than one YAML document"},
		{"bad trust domain", "trust_domain: Cluster.Local\n", "trust_domain:"},
		{"bad key type", "ca:\n  root_key_type: dsa\n", `ca.root_key_type: "dsa" is not one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096`},
		{"checkpoint-only key type for the root", "ca:\n  root_key_type: ed25519\n", `ca.root_key_type: "ed25519" is not one of`},
		{"bad intermediate key type", "ca:\n  intermediate_mode: vault\n  intermediate_key_type: rsa-1024\n", `ca.intermediate_key_type: "rsa-1024" is not one of`},
		{"bad mode", "ca:\n  intermediate_mode: hsm\n", `ca.intermediate_mode: "hsm"`},
		{"intermediate too short", "ca:\n  intermediate_ttl: 10d\n", "less than twice the longest tier max_ttl"},
		{"unknown tier in rule", "policy:\n  - tier: gold\n", `tier "gold" is not defined`},
		{"default above max", "tiers:\n  service: {max_ttl: 1h, default_ttl: 2h}\n", "default_ttl must be positive and at most max_ttl"},
		{"both token methods", "auth:\n  tokenreview: {enabled: true}\n  jwt: {issuer: x, jwks_file: y}\n", "either jwt or tokenreview"},
		{"tokenreview cache too long", "auth:\n  tokenreview: {cache_ttl: 2m}\n", "auth.tokenreview.cache_ttl"},
		{"tokenreview cache negative", "auth:\n  tokenreview: {cache_ttl: -1s}\n", "auth.tokenreview.cache_ttl"},
		{"tokenreview cache empty", "auth:\n  tokenreview: {cache_size: 0}\n", "auth.tokenreview.cache_size"},
		{"jwt without keys", "auth:\n  jwt: {issuer: x}\n", "exactly one of jwks_file and discovery"},
		{"bad TLS version", "server:\n  tls: {min_version: \"1.1\"}\n", `server.tls.min_version: "1.1"`},
		{"bad IP", "server:\n  tls: {ip_addresses: [not-an-ip]}\n", `"not-an-ip" is not an IP address`},
		{"approle without role", "vault:\n  auth: {method: approle}\n", "needs role_id and secret_id_file"},
		{"no clusters", "auth:\n  clusters: []\n", "auth.clusters"},
		{"no denial rate", "limits:\n  denials_per_peer_per_second: 0\n", "limits.denials_per_peer_per_second"},
		{"no denial burst", "limits:\n  denial_burst: 0\n", "limits.denial_burst"},
		{"denial window too short", "limits:\n  denial_window: 10ms\n", "limits.denial_window"},
		{"negative overlap", "rotation:\n  min_overlap: -1h\n", "rotation.min_overlap"},
		{"drill too often", "rotation:\n  drill_interval: 10s\n", "rotation.drill_interval"},
		{"foreign drill identity", "rotation:\n  drill_identity: spiffe://other.org/ns/x/sa/y\n", "rotation.drill_identity"},
		{"schedule activates before it prepares", "rotation:\n  schedule: {prepare_at: 0.1, activate_at: 0.5}\n", "rotation.schedule"},
		{"schedule half set", "rotation:\n  schedule: {prepare_at: 0.5}\n", "rotation.schedule"},
		{"no denial peers", "limits:\n  denial_peers: 0\n", "limits.denial_peers"},
		{"negative queue", "limits:\n  max_queued: -1\n", "limits.max_queued: -1 is outside 0"},
		{"no queue wait", "limits:\n  queue_wait: 0s\n", "limits.queue_wait: 0s is outside"},
		{"queue wait past the request timeout", "limits:\n  queue_wait: 30s\n", "limits.queue_wait: 30s is outside"},
		{"unknown limit", "limits:\n  denials_per_second: 3\n", "field denials_per_second not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := loadError(t, tc.yaml); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	cases := map[string]time.Duration{
		"720h": 720 * time.Hour, "30d": 30 * 24 * time.Hour, "1d12h": 36 * time.Hour, "90s": 90 * time.Second,
	}
	for in, want := range cases {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "d", "-1d", "3x", "1d1d"} {
		if _, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) accepted", bad)
		}
	}
}

func TestKubernetesSettings(t *testing.T) {
	c, err := load(t, `
kubernetes:
  kubeconfig: /etc/transitca/kubeconfig
  trust_bundle:
    namespace_selector: "istio-injection=enabled"
  leader_election:
    namespace: mesh-ca
`)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	le := c.Kubernetes.LeaderElection
	if le.Namespace != "mesh-ca" || le.LeaseName != "transitca" || le.LeaseDuration != Duration(15*time.Second) || !c.Kubernetes.TrustBundle.Enabled {
		t.Fatalf("kubernetes settings over defaults: %+v", c.Kubernetes)
	}

	on, off := true, false
	cases := []struct {
		name       string
		enabled    *bool
		kubeconfig string
		inCluster  bool
		want       bool
	}{
		{"auto, outside a pod", nil, "", false, false},
		{"auto, in a pod", nil, "", true, true},
		{"auto, kubeconfig", nil, "kc", false, true},
		{"off, in a pod", &off, "", true, false},
		{"off, kubeconfig", &off, "kc", false, false},
		{"on", &on, "", false, true},
	}
	for _, tc := range cases {
		c := Default()
		c.Kubernetes.Enabled, c.Kubernetes.Kubeconfig = tc.enabled, tc.kubeconfig
		if got := c.KubernetesEnabled(tc.inCluster); got != tc.want {
			t.Errorf("%s: enabled %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestKubernetesRejects(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"bad selector", "kubernetes:\n  trust_bundle: {namespace_selector: \"a in (\"}\n", "kubernetes.trust_bundle.namespace_selector"},
		{"resync too short", "kubernetes:\n  trust_bundle: {resync: 10ms}\n", "kubernetes.trust_bundle.resync"},
		{"no lease name", "kubernetes:\n  leader_election: {lease_name: \"\"}\n", "kubernetes.leader_election.lease_name"},
		{"renew after lease ends", "kubernetes:\n  leader_election: {lease_duration: 5s, renew_deadline: 10s}\n", "kubernetes.leader_election.lease_duration"},
		{"renew deadline too short", "kubernetes:\n  leader_election: {renew_deadline: 2s, retry_period: 2s}\n", "kubernetes.leader_election.renew_deadline"},
		{"unknown key", "kubernetes:\n  enable: true\n", "field enable not found"},
		{"enabled not a bool", "kubernetes:\n  enabled: auto\n", "cannot unmarshal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := loadError(t, tc.yaml); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// Admin calls end at admin.call_timeout: 10 minutes by default, set in
// the file, refused when it is not a positive span of at most a day.
func TestAdminCallTimeout(t *testing.T) {
	c, err := load(t, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin.CallTimeout != Duration(10*time.Minute) {
		t.Fatalf("default admin.call_timeout %v, want 10m", time.Duration(c.Admin.CallTimeout))
	}
	c, err = load(t, "admin:\n  call_timeout: 90s\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil || c.Admin.CallTimeout != Duration(90*time.Second) {
		t.Fatalf("admin.call_timeout: 90s read as %v (%v)", time.Duration(c.Admin.CallTimeout), err)
	}
	for _, bad := range []string{"0s", "-1m", "500ms", "25h"} {
		if err := loadError(t, "admin:\n  call_timeout: "+bad+"\n"); err == nil || !strings.Contains(err.Error(), "admin.call_timeout") {
			t.Errorf("admin.call_timeout: %s: got %v, want an error naming admin.call_timeout", bad, err)
		}
	}
}
