package config

import (
	"slices"
	"strings"
	"testing"
)

func TestClusters(t *testing.T) {
	c, err := load(t, `
auth:
  trusted_node_accounts: [istio-system/ztunnel, kube-system/ztunnel-ds]
clusters:
  - id: east
  - id: west
    kubeconfig: /etc/transitca/west.kubeconfig
    tokenreview_issuers: [https://west.example, https://kubernetes.default.svc.cluster.local]
  - id: north
    kubeconfig: /etc/transitca/north.kubeconfig
    jwt: {issuer: https://north.example, jwks_file: /etc/transitca/north.jwks}
policy:
  - tier: privileged
    namespaces: [istio-system]
  - tier: privileged
    namespaces: [payments]
    clusters: [we*]
`)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.ClusterIDs(); !slices.Equal(got, []string{"east", "west", "north"}) {
		t.Fatalf("ClusterIDs() = %v", got)
	}
	p := c.IssuancePolicy()
	if got := p.Decide("spiffe://cluster.local/ns/payments/sa/api", "payments", "api", "west").Tier.Name; got != "privileged" {
		t.Fatalf("payments in west: tier %s, want privileged", got)
	}
	if got := p.Decide("spiffe://cluster.local/ns/payments/sa/api", "payments", "api", "east").Tier.Name; got != "service" {
		t.Fatalf("payments in east: tier %s, want service", got)
	}
}

// Without clusters, the configuration means what it meant before: one
// verifier for the clusters of auth.clusters.
func TestClustersDefault(t *testing.T) {
	c, err := load(t, "auth:\n  clusters: [Kubernetes, remote]\n  jwt: {issuer: https://k, jwks_file: /k.jwks}\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.ClusterIDs(); !slices.Equal(got, []string{"Kubernetes", "remote"}) {
		t.Fatalf("ClusterIDs() = %v", got)
	}
}

func TestClustersRejects(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"no id", "clusters:\n  - kubeconfig: /k\n", []string{"clusters[0].id: must be set"}},
		{"id with a space", "clusters:\n  - id: 'east 1'\n", []string{`clusters[0].id: "east 1" must be at most 253 printable characters without spaces`}},
		{"id twice", "clusters:\n  - id: east\n  - id: east\n    kubeconfig: /k\n", []string{`clusters[1].id: "east" is listed twice`}},
		{"two own clusters", "clusters:\n  - id: east\n  - id: west\n", []string{"clusters[1].kubeconfig: must be set: clusters[0] is already the daemon's own cluster"}},
		{"jwt without issuer", "clusters:\n  - id: east\n    jwt: {jwks_file: /j}\n", []string{"clusters[0].jwt.issuer: must be set"}},
		{"jwt with both key sources", "clusters:\n  - id: east\n    jwt: {issuer: i, jwks_file: /j, discovery: true}\n", []string{"clusters[0].jwt: set exactly one of jwks_file and discovery"}},
		{"auth.jwt beside clusters", "auth:\n  jwt: {issuer: i, jwks_file: /j}\nclusters:\n  - id: east\n", []string{"auth.jwt: with clusters, each cluster names its own token verifier"}},
		{"auth.tokenreview beside clusters", "auth:\n  tokenreview: {enabled: true}\nclusters:\n  - id: east\n", []string{"auth.tokenreview.enabled: with clusters"}},
		{"auth.tokenreview.issuers beside clusters", "auth:\n  tokenreview: {issuers: [https://k]}\nclusters:\n  - id: east\n", []string{"auth.tokenreview.issuers: with clusters, each cluster names its own (clusters[].tokenreview_issuers)"}},
		{"tokenreview issuers of a jwt cluster", "clusters:\n  - id: east\n    jwt: {issuer: i, jwks_file: /j}\n    tokenreview_issuers: [i]\n", []string{"clusters[0].tokenreview_issuers: the cluster's tokens are checked offline by jwt"}},
		{"empty tokenreview issuer", "clusters:\n  - id: east\n    tokenreview_issuers: ['']\n", []string{"clusters[0].tokenreview_issuers: an issuer is empty"}},
		{"tokenreview issuer twice", "auth:\n  tokenreview: {enabled: true, issuers: [https://k, https://k]}\n", []string{`auth.tokenreview.issuers: "https://k" is listed twice`}},
		{"auth.clusters beside clusters", "auth:\n  clusters: [east]\nclusters:\n  - id: east\n", []string{"auth.clusters: replaced by clusters[].id"}},
		{"node account without namespace", "auth:\n  trusted_node_accounts: [ztunnel]\n", []string{`auth.trusted_node_accounts: "ztunnel" is not <namespace>/<service-account>`}},
		{"node account twice", "auth:\n  trusted_node_accounts: [istio-system/ztunnel, istio-system/ztunnel]\n", []string{`auth.trusted_node_accounts: "istio-system/ztunnel" is listed twice`}},
		{"ambient without kubernetes", "auth:\n  trusted_node_accounts: [istio-system/ztunnel]\nkubernetes:\n  enabled: false\n", []string{"kubernetes.enabled is false"}},
		{"policy names an unknown cluster", "policy:\n  - tier: privileged\n    clusters: [east]\n", []string{`policy[0].clusters: "east" matches none of the clusters served (Kubernetes)`}},
		{"every problem at once", "clusters:\n  - id: ''\n  - id: b\n    jwt: {discovery: true}\n", []string{"clusters[0].id: must be set", "clusters[1].jwt.issuer: must be set"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := loadError(t, tc.yaml)
			if err == nil {
				t.Fatalf("accepted; want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// The CA's own cluster, which a client certificate without the cluster
// extension counts as issued for.
func TestOwnClusterID(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"default", "", "Kubernetes"},
		{"auth.clusters", "auth:\n  clusters: [dev, prod]\n", "dev"},
		{"the cluster without a kubeconfig", "clusters:\n  - id: remote\n    kubeconfig: /k\n  - id: home\n", "home"},
		{"every cluster remote", "clusters:\n  - id: a\n    kubeconfig: /a\n  - id: b\n    kubeconfig: /b\n", "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(t, tc.yaml)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.OwnClusterID(); got != tc.want {
				t.Fatalf("OwnClusterID() = %q, want %q", got, tc.want)
			}
		})
	}
}
