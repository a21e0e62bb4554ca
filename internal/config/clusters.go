package config

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"unicode"
)

// Cluster is one entry of clusters: a cluster whose workloads this CA
// serves (Istio multi-cluster meshes share one CA), with its own token
// verifier and its own pods for ambient mode's node check.
type Cluster struct {
	// ID is the cluster's ID, matched against the clusterid header
	// istio-agent and ztunnel send (Istio's values.global.multiCluster.clusterName).
	ID string `yaml:"id"`
	// Kubeconfig reaches the cluster's API server: its TokenReview API
	// checks the cluster's tokens (unless JWT is set) and its pods back
	// ambient mode. Empty means the daemon's own cluster (its in-cluster
	// configuration or kubernetes.kubeconfig); at most one cluster can be
	// that one.
	Kubeconfig string `yaml:"kubeconfig"`
	// JWT checks the cluster's tokens offline against its issuer's keys
	// instead of TokenReview: issuer and one of jwks_file or discovery; a
	// zero leeway means auth.jwt.leeway.
	JWT JWT `yaml:"jwt"`
	// TokenReviewIssuers are, for a cluster checked by TokenReview, the iss
	// values of its service-account tokens (see auth.tokenreview.issuers).
	TokenReviewIssuers []string `yaml:"tokenreview_issuers"`
}

// jwtSet reports whether any JWT verification setting is given.
func (j JWT) jwtSet() bool { return j.Issuer != "" || j.JWKSFile != "" || j.Discovery }

// ClusterIDs returns the accepted cluster IDs: those of clusters, else
// auth.clusters.
func (c *Config) ClusterIDs() []string {
	if len(c.Clusters) == 0 {
		return c.Auth.Clusters
	}
	ids := make([]string, len(c.Clusters))
	for i, cl := range c.Clusters {
		ids[i] = cl.ID
	}
	return ids
}

// validIssuers checks a list of token issuers: no empty or repeated one.
func validIssuers(key string, issuers []string) []error {
	var errs []error
	seen := map[string]bool{}
	for _, iss := range issuers {
		switch {
		case strings.TrimSpace(iss) == "":
			errs = append(errs, fmt.Errorf("%s: an issuer is empty", key))
		case seen[iss]:
			errs = append(errs, fmt.Errorf("%s: %q is listed twice", key, iss))
		}
		seen[iss] = true
	}
	return errs
}

// OwnClusterID returns the CA's own cluster: the entry of clusters without
// a kubeconfig (the first entry when every one has one), else the first of
// auth.clusters ("" when that list is empty: the ca package's default).
// A client certificate issued before transitca recorded the cluster in
// certificates counts as issued for it.
func (c *Config) OwnClusterID() string {
	for _, cl := range c.Clusters {
		if cl.Kubeconfig == "" {
			return cl.ID
		}
	}
	if ids := c.ClusterIDs(); len(ids) > 0 {
		return ids[0]
	}
	return ""
}

// validateClusters checks clusters, auth.trusted_node_accounts and the
// clusters policy rules name.
func (c *Config) validateClusters() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	seen := map[string]bool{}
	own := -1
	for i, cl := range c.Clusters {
		key := fmt.Sprintf("clusters[%d]", i)
		switch {
		case cl.ID == "":
			bad("%s.id: must be set", key)
		case len(cl.ID) > 253 || strings.IndexFunc(cl.ID, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
			bad("%s.id: %q must be at most 253 printable characters without spaces", key, cl.ID)
		case seen[cl.ID]:
			bad("%s.id: %q is listed twice", key, cl.ID)
		}
		seen[cl.ID] = true
		if cl.JWT.jwtSet() {
			if cl.JWT.Issuer == "" {
				bad("%s.jwt.issuer: must be set", key)
			}
			if (cl.JWT.JWKSFile == "") == !cl.JWT.Discovery {
				bad("%s.jwt: set exactly one of jwks_file and discovery", key)
			}
		}
		if cl.JWT.Leeway < 0 {
			bad("%s.jwt.leeway: must not be negative", key)
		}
		if len(cl.TokenReviewIssuers) > 0 && cl.JWT.jwtSet() {
			bad("%s.tokenreview_issuers: the cluster's tokens are checked offline by jwt (its issuer is jwt.issuer), not by TokenReview; remove it", key)
		}
		errs = append(errs, validIssuers(key+".tokenreview_issuers", cl.TokenReviewIssuers)...)
		if cl.Kubeconfig == "" {
			if own >= 0 {
				bad("%s.kubeconfig: must be set: clusters[%d] is already the daemon's own cluster (no kubeconfig)", key, own)
			}
			own = i
		}
	}
	if len(c.Clusters) > 0 {
		if c.Auth.JWT.jwtSet() {
			bad("auth.jwt: with clusters, each cluster names its own token verifier (clusters[].jwt or clusters[].kubeconfig); move issuer, jwks_file and discovery there")
		}
		if c.Auth.TokenReview.Enabled {
			bad("auth.tokenreview.enabled: with clusters, a cluster without jwt is checked by its own TokenReview API; remove it (cache_ttl and cache_size still apply)")
		}
		if len(c.Auth.TokenReview.Issuers) > 0 {
			bad("auth.tokenreview.issuers: with clusters, each cluster names its own (clusters[].tokenreview_issuers); move them there")
		}
		if !slices.Equal(c.Auth.Clusters, Default().Auth.Clusters) {
			bad("auth.clusters: replaced by clusters[].id; remove it")
		}
	}
	accounts := map[string]bool{}
	for _, a := range c.Auth.TrustedNodeAccounts {
		ns, sa, ok := strings.Cut(a, "/")
		switch {
		case !ok || !isDNSLabel(ns) || !isDNSName(sa):
			bad("auth.trusted_node_accounts: %q is not <namespace>/<service-account>, e.g. istio-system/ztunnel", a)
		case accounts[a]:
			bad("auth.trusted_node_accounts: %q is listed twice", a)
		}
		accounts[a] = true
	}
	if len(c.Auth.TrustedNodeAccounts) > 0 && len(c.Clusters) == 0 && c.Kubernetes.Enabled != nil && !*c.Kubernetes.Enabled {
		bad("auth.trusted_node_accounts: ambient mode watches pods through the Kubernetes API, but kubernetes.enabled is false")
	}
	ids := c.ClusterIDs()
	for i, r := range c.Policy {
		for _, pat := range r.Clusters {
			if !slices.ContainsFunc(ids, func(id string) bool { ok, _ := path.Match(pat, id); return ok }) {
				bad("policy[%d].clusters: %q matches none of the clusters served (%s)", i, pat, strings.Join(ids, ", "))
			}
		}
	}
	return errs
}
