// Package inproc runs transitca's certificate service in the calling
// process, wired from the ca, issuer and store packages the way "ca serve"
// wires them (the same configuration defaults, Vault client, authenticator,
// issuance log, serving certificate and gRPC server), so that a benchmark
// can take a CPU profile of it with "go test -cpuprofile". "ca serve"
// itself exposes no pprof endpoint.
package inproc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

// Options configure an in-process daemon.
type Options struct {
	Mode         string // memory or vault
	Dir          string // data directory (the issuance log)
	VaultAddr    string
	VaultToken   string
	TransitMount string
	KVMount      string
	JWKSFile     string
	Issuer       string
	// NoSync turns fsync off in the issuance log. For diagnosis only: it
	// breaks the durability promise.
	NoSync bool
	Logger *slog.Logger
}

// Daemon is a running in-process certificate service.
type Daemon struct {
	Addr     string
	RootFile string
	Log      *store.Log
	stop     func()
}

// Stop stops serving and closes the log.
func (d *Daemon) Stop() { d.stop() }

// Start initializes the CA (as "ca init" does) and serves it on a loopback
// port.
func Start(ctx context.Context, o Options) (*Daemon, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := config.Load("")
	if err != nil {
		return nil, err
	}
	cfg.DataDir = o.Dir
	cfg.CA.IntermediateMode = o.Mode
	cfg.Vault.TransitMount, cfg.Vault.KVMount = o.TransitMount, o.KVMount
	cfg.Auth.JWT.Issuer, cfg.Auth.JWT.JWKSFile = o.Issuer, o.JWKSFile
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}

	// The Vault client and login exactly as "ca serve" makes them.
	sess, err := issuer.NewVaultSession(ctx, o.VaultAddr, issuer.VaultAuth{Method: issuer.VaultAuthToken, Token: o.VaultToken}, o.Logger)
	if err != nil {
		return nil, err
	}
	vc := sess.Client
	timeout := time.Duration(cfg.Vault.Timeout)
	tr := issuer.NewTransit(vc, cfg.Vault.TransitMount, timeout)
	keys := issuer.VaultKeys{Transit: tr}
	certs := issuer.NewVaultCerts(vc, cfg.Vault.KVMount, cfg.Vault.KVPrefix, timeout)

	opts := cfg.IssuerOptions()
	opts.Logger = o.Logger
	if _, err := issuer.Init(ctx, keys, certs, opts); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	if _, err := keys.EnsureKey(ctx, cfg.Log.CheckpointKey, issuer.KeyEd25519); err != nil {
		return nil, err
	}
	authority, err := issuer.Open(ctx, keys, certs, opts)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	metrics := ca.NewMetrics(reg, map[string]func() *x509.Certificate{
		"root":         authority.Root,
		"intermediate": func() *x509.Certificate { return authority.Intermediate().Cert },
	})
	tr.SetObserver(metrics.ObserveVault)

	cpKey, err := keys.Signer(ctx, cfg.Log.CheckpointKey, 0)
	if err != nil {
		return nil, err
	}
	noteSigner, err := store.NewNoteSigner(cfg.LogOrigin(), cpKey)
	if err != nil {
		return nil, err
	}
	issuanceLog, err := store.Open(cfg.LogPath(), store.Options{
		Signer: noteSigner, Origin: cfg.LogOrigin(), NoSync: o.NoSync,
		CheckpointEvery: cfg.Log.CheckpointEvery, CheckpointInterval: cfg.Log.CheckpointInterval.Std(),
		Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	recorder := ca.LogRecorder{Log: issuanceLog}

	set, err := ca.LoadJWKSFile(cfg.Auth.JWT.JWKSFile)
	if err != nil {
		return nil, err
	}
	jwtAuth, err := ca.NewJWTAuthenticator(ca.JWTOptions{
		Issuer: cfg.Auth.JWT.Issuer, Audiences: cfg.Auth.Audiences, Leeway: time.Duration(cfg.Auth.JWT.Leeway),
		TrustDomain: cfg.TrustDomain, Clusters: cfg.Auth.Clusters, KeySet: set,
	})
	if err != nil {
		return nil, err
	}
	certAuth, err := ca.NewCertAuthenticator(authority.RootPool, cfg.TrustDomain, cfg.Auth.Clusters)
	if err != nil {
		return nil, err
	}
	svc, err := ca.NewService(ca.ServiceOptions{
		Authenticator: ca.NewMultiAuthenticator(certAuth, jwtAuth),
		Authority:     authority,
		Policy:        cfg.IssuancePolicy(),
		CSR:           ca.CSRPolicy{MaxBytes: cfg.CSR.MaxBytes, AllowEd25519: cfg.CSR.AllowEd25519},
		Recorder:      recorder,
		Metrics:       metrics,
		Logger:        o.Logger,
	})
	if err != nil {
		return nil, err
	}
	selfID := "spiffe://" + cfg.TrustDomain + "/transitca/serving"
	sc, err := ca.NewServingCert(ctx, authority, ca.ServingCertOptions{
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		TTL: time.Duration(cfg.Server.TLS.CertTTL), Logger: o.Logger, SPIFFEID: selfID,
		Record: func(ctx context.Context, is *issuer.Issued) error {
			return recorder.RecordSelfIssued(ctx, selfID, "serving", is)
		},
	})
	if err != nil {
		return nil, err
	}
	rootFile := filepath.Join(cfg.DataDir, "root-cert.pem")
	var roots []byte
	for _, r := range authority.Roots() {
		roots = append(roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	if err := os.WriteFile(rootFile, roots, 0o644); err != nil {
		return nil, err
	}
	grpcSrv, _ := ca.NewGRPCServer(ca.TLSConfig(sc, tls.VersionTLS13), svc, reg)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() { _ = grpcSrv.Serve(lis) }()
	return &Daemon{
		Addr: lis.Addr().String(), RootFile: rootFile, Log: issuanceLog,
		stop: func() { grpcSrv.Stop(); _ = issuanceLog.Close() },
	}, nil
}
