package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/kube"
	"github.com/transitca/transitca/issuer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Dev-mode token issuing: a local key in the dev key store signs tokens
// shaped like projected service-account tokens.
const (
	devTokenKey    = "transitca-dev-token"
	devTokenIssuer = "transitca-dev"
)

// reviewQPS is the sustained rate of TokenReviews the daemon may send
// through its Kubernetes client.
const reviewQPS = 200

// buildAuthenticator assembles the configured ways to authenticate. In dev
// mode with no token verification configured, it trusts tokens minted by
// "ca token" and returns a hint that says so.
func buildAuthenticator(ctx context.Context, cfg *config.Config, authority *issuer.Authority, keys issuer.Keys, metrics *ca.Metrics, kc *kube.Client) (ca.Authenticator, string, error) {
	var token, cert ca.Authenticator
	var hint string
	a := cfg.Auth
	switch {
	case a.TokenReview.Enabled:
		opts := ca.TokenReviewOptions{
			Audiences: a.Audiences, TrustDomain: cfg.TrustDomain, Clusters: a.Clusters,
			CacheTTL: a.TokenReview.CacheTTL.Std(), CacheSize: a.TokenReview.CacheSize, Metrics: metrics,
		}
		if kc != nil {
			// The Kubernetes client the cluster writers use, with a rate
			// limit of its own: a restart storm's reviews must not queue
			// behind client-go's default of 5 requests/s.
			rc := rest.CopyConfig(kc.Config)
			rc.QPS, rc.Burst = reviewQPS, 2*reviewQPS
			cs, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return nil, "", fmt.Errorf("tokenreview client: %w", err)
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
		opts := ca.JWTOptions{
			Issuer: a.JWT.Issuer, Audiences: a.Audiences, Leeway: time.Duration(a.JWT.Leeway),
			TrustDomain: cfg.TrustDomain, Clusters: a.Clusters,
		}
		if a.JWT.Discovery {
			opts.KeySource = ca.NewRemoteKeySource(&http.Client{Timeout: 10 * time.Second}, a.JWT.Issuer)
		} else {
			set, err := ca.LoadJWKSFile(a.JWT.JWKSFile)
			if err != nil {
				return nil, "", fmt.Errorf("auth.jwt.jwks_file: %w", err)
			}
			opts.KeySet = set
		}
		j, err := ca.NewJWTAuthenticator(opts)
		if err != nil {
			return nil, "", fmt.Errorf("jwt authenticator: %w", err)
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
		c, err := ca.NewCertAuthenticator(authority.RootPool, cfg.TrustDomain, a.Clusters)
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
