// Package inproc runs transitca's certificate service in the calling
// process, started through the same package as "ca serve"
// (internal/daemon), so that a benchmark can take a CPU profile of the
// daemon that is shipped with "go test -cpuprofile".
package inproc

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/daemon"
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

// Start initializes the CA (as "ca init" does) and starts the daemon on a
// loopback port, with the configuration defaults of "ca serve" and tokens
// verified against o.JWKSFile. The Vault token is passed to the daemon the
// way "ca serve" takes it, through VAULT_TOKEN.
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
	cfg.Vault.Address = o.VaultAddr
	cfg.Vault.TransitMount, cfg.Vault.KVMount = o.TransitMount, o.KVMount
	cfg.Auth.JWT.Issuer, cfg.Auth.JWT.JWKSFile = o.Issuer, o.JWKSFile
	cfg.Server.Listen, cfg.Server.MetricsListen, cfg.Admin.Listen = "127.0.0.1:0", "", ""
	cfg.Server.TLS.DNSNames, cfg.Server.TLS.IPAddresses = []string{"localhost"}, []string{"127.0.0.1"}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.Setenv("VAULT_TOKEN", o.VaultToken); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}

	// What "ca init" does.
	b, err := daemon.OpenBackend(ctx, cfg, o.Logger)
	if err != nil {
		return nil, err
	}
	if _, err := issuer.Init(ctx, b.Keys, b.Certs, cfg.IssuerOptions()); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	if _, err := b.Keys.EnsureKey(ctx, cfg.Log.CheckpointKey, issuer.KeyEd25519); err != nil {
		return nil, err
	}

	d, err := daemon.New(ctx, cfg, daemon.Options{Logger: o.Logger, Version: "inproc", NoSync: o.NoSync})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.Run(runCtx); err != nil {
			o.Logger.ErrorContext(runCtx, "daemon", slog.Any("error", err))
		}
	}()
	return &Daemon{
		Addr: d.Addr(), RootFile: d.RootFile(), Log: d.Log(),
		stop: func() { cancel(); <-done; _ = d.Close() },
	}, nil
}
