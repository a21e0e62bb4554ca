package config

import (
	"path/filepath"
	"time"

	"github.com/transitca/transitca/internal/spiffeid"
	"github.com/transitca/transitca/issuer"
)

// MinOverlap returns rotation.min_overlap, or half the longest tier
// max_ttl when it is not set.
func (c *Config) MinOverlap() time.Duration {
	if c.Rotation.MinOverlap > 0 {
		return time.Duration(c.Rotation.MinOverlap)
	}
	var longest time.Duration
	for _, t := range c.Tiers {
		longest = max(longest, time.Duration(t.MaxTTL))
	}
	return longest / 2
}

// DrillIdentity returns the SPIFFE ID of drill probes.
func (c *Config) DrillIdentity() string {
	if c.Rotation.DrillIdentity != "" {
		return c.Rotation.DrillIdentity
	}
	return spiffeid.Workload(c.TrustDomain, "transitca", "drill")
}

// LogPath returns where the issuance log lives.
func (c *Config) LogPath() string {
	if c.Log.Path != "" {
		return c.Log.Path
	}
	return filepath.Join(c.DataDir, "issuance.db")
}

// LogKeyName returns the name of the checkpoint signing key: the log
// origin without the shard, so that one verifier key checks every
// replica's checkpoints.
func (c *Config) LogKeyName() string {
	if c.Log.Origin != "" {
		return c.Log.Origin
	}
	return "transitca/" + c.TrustDomain
}

// DevAdminIdentity is the admin identity a dev CA accepts when none is
// configured.
func (c *Config) DevAdminIdentity() string {
	return spiffeid.Workload(c.TrustDomain, "transitca", "admin")
}

// AdminClusters returns the clusters whose callers may be issued an admin
// identity: admin.clusters, or by default the CA's own cluster. Without
// clusters, every ID of auth.clusters is checked by the one verifier of
// the CA's own cluster, so all of them are; with clusters, the entry
// without a kubeconfig is, and none is when every entry has one.
func (c *Config) AdminClusters() []string {
	if len(c.Admin.Clusters) > 0 {
		return c.Admin.Clusters
	}
	if len(c.Clusters) == 0 {
		return c.Auth.Clusters
	}
	for _, cl := range c.Clusters {
		if cl.Kubeconfig == "" {
			return []string{cl.ID}
		}
	}
	return nil
}

// IstiodSPIFFEIDs returns istiod's identities: that of
// kubernetes.istiod.service_account, and istiod-<revision>'s for each
// revisioned control plane, all in kubernetes.istiod.namespace. They are
// protected from impersonation whether or not transitca writes istiod's
// certificate.
func (c *Config) IstiodSPIFFEIDs() []string {
	i := c.Kubernetes.Istiod
	ids := []string{c.IstiodSPIFFEID()}
	for _, r := range i.Revisions {
		ids = append(ids, spiffeid.Workload(c.TrustDomain, i.Namespace, "istiod-"+r))
	}
	return ids
}

// IssuancePolicy returns the tier policy.
func (c *Config) IssuancePolicy() *issuer.Policy {
	p := &issuer.Policy{Tiers: map[string]issuer.Tier{}, DefaultTier: c.DefaultTier}
	for name, t := range c.Tiers {
		p.Tiers[name] = issuer.Tier{Name: name, MaxTTL: time.Duration(t.MaxTTL), DefaultTTL: time.Duration(t.DefaultTTL)}
	}
	for _, r := range c.Policy {
		p.Rules = append(p.Rules, issuer.Rule{
			Tier: r.Tier, Namespaces: r.Namespaces, ServiceAccounts: r.ServiceAccounts,
			SPIFFEIDs: r.SPIFFEIDs, DNSNames: r.DNSNames, Clusters: r.Clusters,
		})
	}
	return p
}

// KubernetesEnabled reports whether the Kubernetes features are on: as
// kubernetes.enabled says, or, when it is unset, when a kubeconfig is
// given or the daemon runs in a pod.
func (c *Config) KubernetesEnabled(inCluster bool) bool {
	if e := c.Kubernetes.Enabled; e != nil {
		return *e
	}
	return c.Kubernetes.Kubeconfig != "" || inCluster
}

// VaultAuth returns the issuer's view of the Vault auth settings.
func (c *Config) VaultAuth() issuer.VaultAuth {
	a := c.Vault.Auth
	return issuer.VaultAuth{
		Method:       a.Method,
		Mount:        a.Mount,
		RoleID:       a.RoleID,
		SecretIDFile: a.SecretIDFile,
		Role:         a.Role,
		TokenFile:    a.TokenFile,
	}
}

// IssuerOptions returns the CA hierarchy options.
func (c *Config) IssuerOptions() issuer.Options {
	return issuer.Options{
		RootKey:             c.CA.RootKey,
		RootKeyType:         issuer.KeyType(c.CA.RootKeyType),
		IntermediateKey:     c.CA.IntermediateKey,
		IntermediateKeyType: issuer.KeyType(c.CA.IntermediateKeyType),
		Mode:                issuer.Mode(c.CA.IntermediateMode),
		Organization:        c.CA.Organization,
		RootTTL:             time.Duration(c.CA.RootTTL),
		IntermediateTTL:     time.Duration(c.CA.IntermediateTTL),
		StatePollInterval:   time.Duration(c.Rotation.StatePollInterval),
		Dev:                 c.Dev,
	}
}
