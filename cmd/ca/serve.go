package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/atomicfile"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/issuer"
)

// Dev-mode token issuing: a local key in the dev key store signs tokens
// shaped like projected service-account tokens.
const (
	devTokenKey    = "transitca-dev-token"
	devTokenIssuer = "transitca-dev"
)

type serveFlags struct {
	common        commonFlags
	listen        string
	metricsListen string
	jwks          string
	jwtIssuer     string
	checkConfig   bool
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ca serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serveFlags
	f.common.register(fs)
	fs.StringVar(&f.listen, "listen", "", "gRPC listen address (overrides server.listen)")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "metrics listen address (overrides server.metrics_listen)")
	fs.StringVar(&f.jwks, "jwks", "", "JWKS file that verifies service-account tokens (overrides auth.jwt.jwks_file)")
	fs.StringVar(&f.jwtIssuer, "jwt-issuer", "", "required token issuer (overrides auth.jwt.issuer)")
	fs.BoolVar(&f.checkConfig, "check-config", false, "load and validate the configuration, then exit")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ca serve [flags]")
		fmt.Fprintln(stderr, "\nServes istio.v1.auth.IstioCertificateService over TLS. Vault is reached through")
		fmt.Fprintln(stderr, "the standard VAULT_ADDR and VAULT_TOKEN environment; --dev needs no Vault.")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := f.common.loadWith(func(c *config.Config) {
		if c.Dev && f.common.config == "" {
			// A dev CA listens on loopback unless told otherwise.
			c.Server.Listen, c.Server.MetricsListen = "127.0.0.1:15012", "127.0.0.1:15014"
		}
		if f.listen != "" {
			c.Server.Listen = f.listen
		}
		if f.metricsListen != "" {
			c.Server.MetricsListen = f.metricsListen
		}
		if f.jwks != "" {
			c.Auth.JWT.JWKSFile = f.jwks
			c.Auth.JWT.Discovery = false
		}
		if f.jwtIssuer != "" {
			c.Auth.JWT.Issuer = f.jwtIssuer
		}
	})
	if err != nil {
		return err
	}
	if f.checkConfig {
		fmt.Fprintln(stdout, "configuration OK")
		return nil
	}
	log, err := f.common.logger(stderr)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, log, stderr)
}

func serve(ctx context.Context, cfg *config.Config, log *slog.Logger, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	b, err := openBackend(ctx, cfg, log)
	if err != nil {
		return err
	}
	opts := cfg.IssuerOptions()
	opts.Logger = log
	if cfg.Dev {
		if _, err := issuer.Init(ctx, b.keys, b.certs, opts); err != nil {
			return fmt.Errorf("dev init: %w", err)
		}
		if _, err := b.keys.EnsureKey(ctx, cfg.Log.CheckpointKey, issuer.KeyEd25519); err != nil {
			return fmt.Errorf("dev init: %w", err)
		}
		if len(cfg.Admin.Identities) == 0 {
			cfg.Admin.Identities = []string{cfg.DevAdminIdentity()}
		}
	}
	issuanceLog, vkey, err := openLog(ctx, cfg, b, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := issuanceLog.Close(); err != nil {
			log.Error("close issuance log", slog.Any("error", err))
		}
	}()
	recorder := ca.LogRecorder{Log: issuanceLog}
	if err := atomicfile.Write(filepath.Join(cfg.DataDir, "log-verifier.vkey"), []byte(vkey+"\n"), 0o644); err != nil {
		return fmt.Errorf("write checkpoint verifier key: %w", err)
	}

	opts.OnIntermediate = recorder.RecordIntermediate
	authority, err := issuer.Open(ctx, b.keys, b.certs, opts)
	if err != nil {
		return err
	}
	if err := recorder.RecordAdmin(ctx, "start", "transitca", fmt.Sprintf("version=%s keys=%q intermediate_mode=%s root=%s root_key_version=%d",
		versionString(), authority.Describe(), authority.Mode(), issuer.Fingerprint(authority.Root()), authority.RootKeyVersion())); err != nil {
		return fmt.Errorf("record start: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var serving atomic.Pointer[ca.ServingCert]
	metrics := ca.NewMetrics(reg, map[string]func() *x509.Certificate{
		"root":         authority.Root,
		"intermediate": func() *x509.Certificate { return authority.Intermediate().Cert },
		"serving": func() *x509.Certificate {
			if s := serving.Load(); s != nil {
				return s.Leaf()
			}
			return nil
		},
	})
	if b.transit != nil {
		b.transit.SetObserver(metrics.ObserveVault)
	}

	authn, devHint, err := buildAuthenticator(ctx, cfg, authority, b)
	if err != nil {
		return err
	}
	svc, err := ca.NewService(ca.ServiceOptions{
		Authenticator: authn,
		Authority:     authority,
		Policy:        cfg.IssuancePolicy(),
		CSR:           ca.CSRPolicy{MaxBytes: cfg.CSR.MaxBytes, AllowEd25519: cfg.CSR.AllowEd25519},
		Recorder:      recorder,
		Metrics:       metrics,
		Logger:        log,
	})
	if err != nil {
		return err
	}
	var ips []net.IP
	for _, s := range cfg.Server.TLS.IPAddresses {
		ips = append(ips, net.ParseIP(s))
	}
	selfID := "spiffe://" + cfg.TrustDomain + "/transitca/serving"
	sc, err := ca.NewServingCert(ctx, authority, ca.ServingCertOptions{
		DNSNames: cfg.Server.TLS.DNSNames, IPAddresses: ips, TTL: time.Duration(cfg.Server.TLS.CertTTL), Logger: log,
		SPIFFEID: selfID,
		Record: func(ctx context.Context, is *issuer.Issued) error {
			return recorder.RecordSelfIssued(ctx, selfID, "serving", is)
		},
	})
	if err != nil {
		return err
	}
	serving.Store(sc)
	rootFile := filepath.Join(cfg.DataDir, "root-cert.pem")
	if err := writeRoots(rootFile, authority.Roots()); err != nil {
		return fmt.Errorf("write root bundle: %w", err)
	}

	minTLS := uint16(tls.VersionTLS13)
	if cfg.Server.TLS.MinVersion == "1.2" {
		minTLS = tls.VersionTLS12
	}
	grpcSrv, health := ca.NewGRPCServer(ca.TLSConfig(sc, minTLS), svc, reg)
	lis, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Server.Listen, err)
	}
	var ready atomic.Bool
	var metricsSrv *http.Server
	if cfg.Server.MetricsListen != "" {
		mlis, err := net.Listen("tcp", cfg.Server.MetricsListen)
		if err != nil {
			lis.Close()
			return fmt.Errorf("listen %s: %w", cfg.Server.MetricsListen, err)
		}
		metricsSrv = &http.Server{Handler: ca.MetricsHandler(reg, ready.Load), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metricsSrv.Serve(mlis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.ErrorContext(ctx, "metrics server", slog.Any("error", err))
			}
		}()
		log.InfoContext(ctx, "metrics listening", slog.String("addr", mlis.Addr().String()))
	}

	var adminSrv *grpc.Server
	if cfg.Admin.Listen != "" {
		certAuth, err := ca.NewCertAuthenticator(authority.RootPool, cfg.TrustDomain, cfg.Auth.Clusters)
		if err != nil {
			lis.Close()
			return err
		}
		alis, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			lis.Close()
			return fmt.Errorf("listen %s: %w", cfg.Admin.Listen, err)
		}
		if len(cfg.Admin.Identities) == 0 {
			log.WarnContext(ctx, "admin.identities is empty: the admin API refuses every caller")
		}
		adminSrv = ca.NewAdminServer(ca.TLSConfig(sc, minTLS), ca.NewAdminService(issuanceLog, vkey, log),
			&ca.AdminAuthorizer{Certs: certAuth, Identities: cfg.Admin.Identities, Logger: log, Recorder: recorder})
		go func() {
			if err := adminSrv.Serve(alis); err != nil {
				log.ErrorContext(ctx, "admin server", slog.Any("error", err))
			}
		}()
		log.InfoContext(ctx, "admin API listening", slog.String("addr", alis.Addr().String()), slog.Any("identities", cfg.Admin.Identities))
	}

	go authority.Run(ctx)
	go sc.Run(ctx, time.Minute)
	if b.session != nil {
		go b.session.Run(ctx)
	}
	go watchRoots(ctx, authority, rootFile, log)

	errc := make(chan error, 1)
	go func() { errc <- grpcSrv.Serve(lis) }()
	ready.Store(true)
	log.InfoContext(ctx, "transitca serving",
		slog.String("addr", lis.Addr().String()),
		slog.String("keys", authority.Describe()),
		slog.String("intermediate_mode", string(authority.Mode())),
		slog.String("root_bundle", rootFile),
		slog.String("log", issuanceLog.Path()),
		slog.Uint64("log_size", issuanceLog.Size()),
		slog.String("trust_domain", cfg.TrustDomain))
	if devHint != "" {
		fmt.Fprintln(stderr, devHint)
	}

	select {
	case err := <-errc:
		return fmt.Errorf("grpc server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	ready.Store(false)
	health.Shutdown()
	stopped := make(chan struct{})
	go func() { grpcSrv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		grpcSrv.Stop()
	}
	if adminSrv != nil {
		adminSrv.Stop()
	}
	if metricsSrv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = metricsSrv.Shutdown(sctx)
	}
	return nil
}

// buildAuthenticator assembles the configured ways to authenticate. In dev
// mode with no token verification configured, it trusts tokens minted by
// "ca token" and returns a hint that says so.
func buildAuthenticator(ctx context.Context, cfg *config.Config, authority *issuer.Authority, b *backend) (ca.Authenticator, string, error) {
	var token, cert ca.Authenticator
	var hint string
	a := cfg.Auth
	switch {
	case a.TokenReview.Enabled:
		tr, err := ca.NewTokenReviewAuthenticator(ca.TokenReviewOptions{
			APIServer: a.TokenReview.APIServer, TokenFile: a.TokenReview.TokenFile, CAFile: a.TokenReview.CAFile,
			Audiences: a.Audiences, TrustDomain: cfg.TrustDomain, Clusters: a.Clusters,
		})
		if err != nil {
			return nil, "", err
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
				return nil, "", err
			}
			opts.KeySet = set
		}
		j, err := ca.NewJWTAuthenticator(opts)
		if err != nil {
			return nil, "", err
		}
		token = j
	case cfg.Dev:
		minter, err := devMinter(ctx, b.keys)
		if err != nil {
			return nil, "", err
		}
		set := minter.JWKS()
		j, err := ca.NewJWTAuthenticator(ca.JWTOptions{
			Issuer: devTokenIssuer, Audiences: a.Audiences, KeySet: &set, Leeway: time.Duration(a.JWT.Leeway),
			TrustDomain: cfg.TrustDomain, Clusters: a.Clusters,
		})
		if err != nil {
			return nil, "", err
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
			return nil, "", err
		}
		cert = c
	}
	if token == nil && cert == nil {
		return nil, "", errors.New("auth: no way to authenticate callers is configured")
	}
	return ca.NewMultiAuthenticator(cert, token), hint, nil
}

// devMinter returns the dev-mode token minter, creating its key on first
// use.
func devMinter(ctx context.Context, keys issuer.Keys) (*ca.TokenMinter, error) {
	if _, err := keys.EnsureKey(ctx, devTokenKey, issuer.KeyECDSAP256); err != nil {
		return nil, fmt.Errorf("dev token key: %w", err)
	}
	s, err := keys.Signer(ctx, devTokenKey, 0)
	if err != nil {
		return nil, fmt.Errorf("dev token key: %w", err)
	}
	return ca.NewTokenMinter(s, "dev-1", devTokenIssuer)
}

// writeRoots writes the trust bundle as PEM.
func writeRoots(path string, roots []*x509.Certificate) error {
	var data []byte
	for _, r := range roots {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	return atomicfile.Write(path, data, 0o644)
}

// watchRoots rewrites the root bundle file when the trust bundle changes.
func watchRoots(ctx context.Context, a *issuer.Authority, path string, log *slog.Logger) {
	last := bundleKey(a.Roots())
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		roots := a.Roots()
		if k := bundleKey(roots); k != last {
			if err := writeRoots(path, roots); err != nil {
				log.ErrorContext(ctx, "write root bundle", slog.Any("error", err))
				continue
			}
			last = k
		}
	}
}

func bundleKey(roots []*x509.Certificate) string {
	var k string
	for _, r := range roots {
		k += issuer.Fingerprint(r)
	}
	return k
}
