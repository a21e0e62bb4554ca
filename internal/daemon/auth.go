package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/kube"
	"github.com/transitca/transitca/issuer"
)

// Dev-mode token issuing: a local key in the dev key store signs tokens
// shaped like projected service-account tokens.
const (
	devTokenKey    = "transitca-dev-token"
	devTokenIssuer = "transitca-dev"
)

// buildAuthenticator assembles the configured ways to authenticate:
// clusters' own verifiers, or auth.tokenreview or auth.jwt for every ID of
// auth.clusters. clients are the clusters' Kubernetes clients
// (clusterClients). In dev mode with no token verification configured, it
// trusts tokens minted by "ca token" and returns a hint that says so.
func buildAuthenticator(ctx context.Context, cfg *config.Config, authority *issuer.Authority, keys issuer.Keys, metrics *ca.Metrics, kc *kube.Client, clients map[string]*kube.Client) (ca.Authenticator, string, error) {
	var token, cert ca.Authenticator
	var hint string
	a := cfg.Auth
	switch {
	case len(cfg.Clusters) > 0:
		c, err := buildClusterAuthenticator(cfg, clients, metrics)
		if err != nil {
			return nil, "", err
		}
		token = c
	case a.TokenReview.Enabled:
		opts := ca.TokenReviewOptions{
			Audiences: a.Audiences, TrustDomain: cfg.TrustDomain, Clusters: a.Clusters, Issuers: a.TokenReview.Issuers,
			CacheTTL: a.TokenReview.CacheTTL.Std(), CacheSize: a.TokenReview.CacheSize, Metrics: metrics,
		}
		if kc != nil {
			cs, err := kc.ReviewClientset()
			if err != nil {
				return nil, "", err
			}
			opts.Client = cs
		} else {
			opts.APIServer, opts.TokenFile, opts.CAFile = a.TokenReview.APIServer, a.TokenReview.TokenFile, a.TokenReview.CAFile
		}
		tr, err := ca.NewTokenReviewAuthenticator(opts)
		if err != nil {
			return nil, "", fmt.Errorf("tokenreview authenticator: %w", err)
		}
		token = tr
	case a.JWT.Issuer != "":
		j, err := jwtAuthenticator(a.JWT, a.JWT.Leeway, cfg, a.Clusters)
		if err != nil {
			return nil, "", fmt.Errorf("auth.%w", err)
		}
		token = j
	case cfg.Dev:
		minter, err := DevMinter(ctx, keys)
		if err != nil {
			return nil, "", err
		}
		set := minter.JWKS()
		j, err := ca.NewJWTAuthenticator(ca.JWTOptions{
			Issuer: devTokenIssuer, Audiences: a.Audiences, KeySet: &set, Leeway: time.Duration(a.JWT.Leeway),
			TrustDomain: cfg.TrustDomain, Clusters: a.Clusters,
		})
		if err != nil {
			return nil, "", fmt.Errorf("dev jwt authenticator: %w", err)
		}
		token = j
		hint = fmt.Sprintf("DEV-ONLY: tokens are checked against a local dev key. Get one and request a certificate with:\n"+
			"  ca token --dev --data-dir %s --namespace default --service-account web > token.jwt\n"+
			"  ca request --addr %s --token-file token.jwt --root-cert %s --out ./certs",
			cfg.DataDir, cfg.Server.Listen, filepath.Join(cfg.DataDir, "root-cert.pem"))
	}
	if a.ClientCertificates {
		c, err := newCertAuthenticator(cfg, authority)
		if err != nil {
			return nil, "", fmt.Errorf("client certificate authenticator: %w", err)
		}
		cert = c
	}
	if token == nil && cert == nil {
		return nil, "", errors.New("auth: no way to authenticate callers is configured")
	}
	return ca.NewMultiAuthenticator(cert, token), hint, nil
}

// newCertAuthenticator checks client certificates against the authority's
// current trust bundle and rotation state: no chain through a compromised
// intermediate or root authenticates. A certificate without the cluster
// extension counts as issued for the CA's own cluster.
func newCertAuthenticator(cfg *config.Config, authority *issuer.Authority) (*ca.CertAuthenticator, error) {
	opts := []ca.CertOption{ca.WithChainCheck(authority.CheckChain)}
	if own := cfg.OwnClusterID(); own != "" {
		opts = append(opts, ca.WithOwnCluster(own))
	}
	return ca.NewCertAuthenticator(authority.RootPool, cfg.TrustDomain, cfg.ClusterIDs(), opts...)
}

// DevMinter returns the dev-mode token minter ("ca token --dev"), creating
// its key in the dev key store on first use.
func DevMinter(ctx context.Context, keys issuer.Keys) (*ca.TokenMinter, error) {
	if _, err := keys.EnsureKey(ctx, devTokenKey, issuer.KeyECDSAP256); err != nil {
		return nil, fmt.Errorf("dev token key: %w", err)
	}
	s, err := keys.Signer(ctx, devTokenKey, 0)
	if err != nil {
		return nil, fmt.Errorf("dev token key: %w", err)
	}
	return ca.NewTokenMinter(s, "dev-1", devTokenIssuer)
}
