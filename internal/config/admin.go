package config

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/transitca/transitca/internal/spiffeid"
)

// validateAdmin checks the admin API's roles and the clusters that may be
// issued an admin identity.
func (c *Config) validateAdmin() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	roles := func(key string, ids []string, other map[string]bool) map[string]bool {
		seen := map[string]bool{}
		for _, id := range ids {
			switch {
			case !strings.HasPrefix(id, "spiffe://"):
				bad("%s: %q is not a SPIFFE ID", key, id)
			case !c.isWorkloadID(id):
				bad("%s: %q is not a SPIFFE ID in trust domain %s of the form spiffe://%s/ns/<namespace>/sa/<service-account>", key, id, c.TrustDomain, c.TrustDomain)
			case seen[id]:
				bad("%s: %q is listed twice", key, id)
			case other[id]:
				bad("%s: %q is also in admin.identities: an identity has one role (operators may call every method)", key, id)
			}
			seen[id] = true
		}
		return seen
	}
	roles("admin.readers", c.Admin.Readers, roles("admin.identities", c.Admin.Identities, nil))

	ids := c.ClusterIDs()
	seen := map[string]bool{}
	for _, id := range c.Admin.Clusters {
		switch {
		case !slices.Contains(ids, id):
			bad("admin.clusters: %q is not a cluster served (%s)", id, strings.Join(ids, ", "))
		case seen[id]:
			bad("admin.clusters: %q is listed twice", id)
		}
		seen[id] = true
	}
	if len(c.AdminClusters()) == 0 && len(c.Admin.Identities)+len(c.Admin.Readers) > 0 {
		bad("admin.clusters: must be set: every clusters[] entry has a kubeconfig, so none is the CA's own cluster, and no caller could be issued an admin identity")
	}

	prefix := spiffeid.New(c.TrustDomain)
	for _, p := range c.Auth.AllowProtectedImpersonation {
		if _, err := path.Match(p, ""); err != nil {
			bad("auth.allow_protected_impersonation: %q is not a valid pattern: %v", p, err)
		} else if !strings.HasPrefix(p, prefix) {
			bad("auth.allow_protected_impersonation: %q is not a SPIFFE ID pattern in trust domain %s (%s…)", p, c.TrustDomain, prefix)
		}
	}
	if len(c.Auth.AllowProtectedImpersonation) > 0 && len(c.Auth.TrustedNodeAccounts) == 0 {
		bad("auth.allow_protected_impersonation: has no effect without auth.trusted_node_accounts (impersonation is off)")
	}
	return errs
}

// isWorkloadID reports whether id is spiffe://<trust_domain>/ns/<namespace>/sa/<service-account>.
func (c *Config) isWorkloadID(id string) bool {
	rest, ok := strings.CutPrefix(id, spiffeid.New(c.TrustDomain, "ns")+"/")
	if !ok {
		return false
	}
	ns, sa, ok := strings.Cut(rest, "/sa/")
	return ok && spiffeid.ValidNamespace(ns) && spiffeid.ValidServiceAccount(sa)
}
