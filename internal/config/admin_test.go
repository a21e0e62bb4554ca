package config

import (
	"slices"
	"strings"
	"testing"
)

// Who may call the admin API, in which role, and from which clusters an
// admin identity may be asked for: admin.identities are operators (as
// before), admin.readers read only; admin.clusters defaults to the CA's
// own cluster.
func TestAdminRoles(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		clusters   []string
	}{
		{"defaults: the clusters of auth.clusters, one verifier", "", []string{"Kubernetes"}},
		{"auth.clusters", "auth:\n  clusters: [Kubernetes, vm-fleet]\n  jwt: {issuer: https://k, jwks_file: /k.jwks}\n", []string{"Kubernetes", "vm-fleet"}},
		{"clusters: the one without a kubeconfig", "clusters:\n  - id: remote\n    kubeconfig: /r\n  - id: primary\n", []string{"primary"}},
		{"clusters: named", "clusters:\n  - id: primary\n  - id: remote\n    kubeconfig: /r\nadmin:\n  clusters: [primary, remote]\n", []string{"primary", "remote"}},
		{"clusters: all remote, named", "clusters:\n  - id: remote\n    kubeconfig: /r\nadmin:\n  identities: [spiffe://cluster.local/ns/ops/sa/admin]\n  clusters: [remote]\n", []string{"remote"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(t, tc.yaml)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			if got := c.AdminClusters(); !slices.Equal(got, tc.clusters) {
				t.Fatalf("AdminClusters() = %v, want %v", got, tc.clusters)
			}
		})
	}

	c, err := load(t, `
trust_domain: example.org
admin:
  identities: [spiffe://example.org/ns/ops/sa/admin]
  readers: [spiffe://example.org/ns/security/sa/auditor]
auth:
  trusted_node_accounts: [istio-system/ztunnel]
  allow_protected_impersonation: ["spiffe://example.org/ns/payments/sa/*"]
kubernetes:
  istiod:
    revisions: [canary]
`)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Admin.Readers, []string{"spiffe://example.org/ns/security/sa/auditor"}) ||
		!slices.Equal(c.Auth.AllowProtectedImpersonation, []string{"spiffe://example.org/ns/payments/sa/*"}) {
		t.Fatalf("admin.readers %v, auth.allow_protected_impersonation %v", c.Admin.Readers, c.Auth.AllowProtectedImpersonation)
	}
	if got, want := c.IstiodSPIFFEIDs(), []string{"spiffe://example.org/ns/istio-system/sa/istiod", "spiffe://example.org/ns/istio-system/sa/istiod-canary"}; !slices.Equal(got, want) {
		t.Fatalf("IstiodSPIFFEIDs() = %v, want %v", got, want)
	}
}

func TestAdminRolesRejects(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"reader not a SPIFFE ID", "admin:\n  readers: [auditor]\n", []string{`admin.readers: "auditor" is not a SPIFFE ID`}},
		{"reader in another trust domain", "admin:\n  readers: [spiffe://other.org/ns/a/sa/b]\n", []string{`admin.readers: "spiffe://other.org/ns/a/sa/b" is not a SPIFFE ID in trust domain cluster.local`}},
		{"operator in another trust domain", "admin:\n  identities: [spiffe://other.org/ns/a/sa/b]\n", []string{`admin.identities: "spiffe://other.org/ns/a/sa/b" is not a SPIFFE ID in trust domain cluster.local`}},
		{"reader twice", "admin:\n  readers: [spiffe://cluster.local/ns/a/sa/b, spiffe://cluster.local/ns/a/sa/b]\n", []string{`admin.readers: "spiffe://cluster.local/ns/a/sa/b" is listed twice`}},
		{"both roles", "admin:\n  identities: [spiffe://cluster.local/ns/a/sa/b]\n  readers: [spiffe://cluster.local/ns/a/sa/b]\n",
			[]string{`admin.readers: "spiffe://cluster.local/ns/a/sa/b" is also in admin.identities`}},
		{"unknown admin cluster", "admin:\n  clusters: [east]\n", []string{`admin.clusters: "east" is not a cluster served (Kubernetes)`}},
		{"admin cluster twice", "admin:\n  clusters: [Kubernetes, Kubernetes]\n", []string{`admin.clusters: "Kubernetes" is listed twice`}},
		{"no own cluster and none named", "clusters:\n  - id: remote\n    kubeconfig: /r\nadmin:\n  readers: [spiffe://cluster.local/ns/a/sa/b]\n",
			[]string{"admin.clusters: must be set: every clusters[] entry has a kubeconfig"}},
		{"impersonation pattern outside the trust domain", "auth:\n  trusted_node_accounts: [istio-system/ztunnel]\n  allow_protected_impersonation: [spiffe://other.org/ns/a/sa/*]\n",
			[]string{`auth.allow_protected_impersonation: "spiffe://other.org/ns/a/sa/*" is not a SPIFFE ID pattern in trust domain cluster.local`}},
		{"impersonation pattern malformed", "auth:\n  trusted_node_accounts: [istio-system/ztunnel]\n  allow_protected_impersonation: ['spiffe://cluster.local/ns/[a/sa/b']\n",
			[]string{`auth.allow_protected_impersonation: "spiffe://cluster.local/ns/[a/sa/b" is not a valid pattern`}},
		{"impersonation allowed without impersonation", "auth:\n  allow_protected_impersonation: [spiffe://cluster.local/ns/a/sa/b]\n",
			[]string{"auth.allow_protected_impersonation: has no effect without auth.trusted_node_accounts"}},
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
