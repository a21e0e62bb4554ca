package daemon

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/kube"
)

// clusterClients returns the Kubernetes client of each cluster served that
// has one, by cluster ID: a cluster's own kubeconfig, or the daemon's own
// client (own, nil when the Kubernetes features are off) for the cluster
// without one and, without clusters:, for every ID of auth.clusters.
func clusterClients(cfg *config.Config, own *kube.Client, userAgent string) (map[string]*kube.Client, error) {
	out := map[string]*kube.Client{}
	if len(cfg.Clusters) == 0 {
		if own != nil {
			for _, id := range cfg.Auth.Clusters {
				out[id] = own
			}
		}
		return out, nil
	}
	for i, cl := range cfg.Clusters {
		if cl.Kubeconfig == "" {
			if own != nil {
				out[cl.ID] = own
			}
			continue
		}
		c, err := kube.NewClient(cl.Kubeconfig, userAgent)
		if err != nil {
			return nil, fmt.Errorf("clusters[%d] (%s): %w", i, cl.ID, err)
		}
		out[cl.ID] = c
	}
	return out, nil
}

// buildClusterAuthenticator returns the bearer-token authenticator of
// clusters: one verifier per cluster, each accepting only its own ID.
func buildClusterAuthenticator(cfg *config.Config, clients map[string]*kube.Client, metrics *ca.Metrics) (ca.Authenticator, error) {
	a := cfg.Auth
	byID := map[string]ca.Authenticator{}
	for i, cl := range cfg.Clusters {
		key := fmt.Sprintf("clusters[%d] (%s)", i, cl.ID)
		if cl.JWT.Issuer != "" {
			leeway := cl.JWT.Leeway
			if leeway == 0 {
				leeway = a.JWT.Leeway
			}
			j, err := jwtAuthenticator(cl.JWT, leeway, cfg, []string{cl.ID})
			if err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			byID[cl.ID] = j
			continue
		}
		opts := ca.TokenReviewOptions{
			Audiences: a.Audiences, TrustDomain: cfg.TrustDomain, Clusters: []string{cl.ID}, Issuers: cl.TokenReviewIssuers,
			CacheTTL: a.TokenReview.CacheTTL.Std(), CacheSize: a.TokenReview.CacheSize, Metrics: metrics,
		}
		if c := clients[cl.ID]; c != nil {
			cs, err := c.ReviewClientset()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			opts.Client = cs
		} else {
			// The daemon's own cluster without the Kubernetes features:
			// the API server of auth.tokenreview, over plain HTTPS.
			opts.APIServer, opts.TokenFile, opts.CAFile = a.TokenReview.APIServer, a.TokenReview.TokenFile, a.TokenReview.CAFile
		}
		tr, err := ca.NewTokenReviewAuthenticator(opts)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		byID[cl.ID] = tr
	}
	return ca.NewClusterAuthenticator(byID)
}

// jwtAuthenticator checks tokens offline against j's issuer and keys.
func jwtAuthenticator(j config.JWT, leeway config.Duration, cfg *config.Config, clusters []string) (*ca.JWTAuthenticator, error) {
	opts := ca.JWTOptions{
		Issuer: j.Issuer, Audiences: cfg.Auth.Audiences, Leeway: time.Duration(leeway),
		TrustDomain: cfg.TrustDomain, Clusters: clusters,
	}
	if j.Discovery {
		opts.KeySource = ca.NewRemoteKeySource(&http.Client{Timeout: 10 * time.Second}, j.Issuer)
	} else {
		set, err := ca.LoadJWKSFile(j.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("jwt.jwks_file: %w", err)
		}
		opts.KeySet = set
	}
	a, err := ca.NewJWTAuthenticator(opts)
	if err != nil {
		return nil, fmt.Errorf("jwt authenticator: %w", err)
	}
	return a, nil
}

// buildNodeAuthorizer returns ambient mode's node authorizer, with a pod
// index for every cluster served, or nil when auth.trusted_node_accounts
// is empty. The indexes are filled by Run.
func buildNodeAuthorizer(cfg *config.Config, clients map[string]*kube.Client) (*ca.NodeAuthorizer, []*kube.PodIndex, error) {
	if len(cfg.Auth.TrustedNodeAccounts) == 0 {
		return nil, nil, nil
	}
	pods := map[string]ca.NodePods{}
	var indexes []*kube.PodIndex
	shared := map[*kube.Client]*kube.PodIndex{} // auth.clusters' IDs share the daemon's client
	for _, id := range cfg.ClusterIDs() {
		c := clients[id]
		if c == nil {
			return nil, nil, fmt.Errorf("auth.trusted_node_accounts: cluster %s has no Kubernetes API to watch pods through: "+
				"give it a kubeconfig in clusters, or run the daemon in a pod or with kubernetes.kubeconfig", id)
		}
		idx := shared[c]
		if idx == nil {
			var err error
			if idx, err = kube.NewPodIndex(c.Clientset, podResync); err != nil {
				return nil, nil, fmt.Errorf("cluster %s: %w", id, err)
			}
			shared[c] = idx
			indexes = append(indexes, idx)
		}
		pods[id] = idx
	}
	na, err := ca.NewNodeAuthorizer(cfg.Auth.TrustedNodeAccounts, pods)
	if err != nil {
		return nil, nil, fmt.Errorf("auth.trusted_node_accounts: %w", err)
	}
	return na, indexes, nil
}

// podResync is how often the pod indexes replay their contents; the watch
// keeps them current in between.
const podResync = 10 * time.Minute

// runPods fills the pod indexes and keeps them current until ctx ends.
func runPods(ctx context.Context, indexes []*kube.PodIndex, background func(func())) {
	for _, idx := range indexes {
		background(func() { idx.Run(ctx) })
	}
}
