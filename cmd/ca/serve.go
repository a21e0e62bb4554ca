package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/daemon"
)

type serveFlags struct {
	common        commonFlags
	listen        string
	metricsListen string
	adminListen   string
	jwks          string
	jwtIssuer     string
	kubeconfig    string
	shard         string
	checkConfig   bool
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca serve", stderr)
	var f serveFlags
	f.common.register(fs)
	fs.StringVar(&f.listen, "listen", "", "gRPC listen address (overrides server.listen)")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "metrics listen address (overrides server.metrics_listen)")
	fs.StringVar(&f.adminListen, "admin-listen", "", "admin API listen address (overrides admin.listen)")
	fs.StringVar(&f.jwks, "jwks", "", "JWKS file that verifies service-account tokens (overrides auth.jwt.jwks_file)")
	fs.StringVar(&f.jwtIssuer, "jwt-issuer", "", "required token issuer (overrides auth.jwt.issuer)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file for the Kubernetes API outside a pod (overrides kubernetes.kubeconfig; default $KUBECONFIG)")
	fs.StringVar(&f.shard, "shard", "", "this replica's log shard name, or \"auto\" for $POD_NAME, else the host name (overrides log.shard)")
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
		if f.adminListen != "" {
			c.Admin.Listen = f.adminListen
		}
		if f.jwks != "" {
			c.Auth.JWT.JWKSFile = f.jwks
			c.Auth.JWT.Discovery = false
		}
		if f.jwtIssuer != "" {
			c.Auth.JWT.Issuer = f.jwtIssuer
		}
		if f.shard != "" {
			c.Log.Shard = f.shard
		}
		switch {
		case f.kubeconfig != "":
			c.Kubernetes.Kubeconfig = f.kubeconfig
		case c.Kubernetes.Kubeconfig == "":
			c.Kubernetes.Kubeconfig = os.Getenv("KUBECONFIG")
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
	d, err := daemon.New(ctx, cfg, daemon.Options{Logger: log, Version: versionString()})
	if err != nil {
		return err
	}
	if hint := d.DevHint(); hint != "" {
		fmt.Fprintln(stderr, hint)
	}
	runErr := d.Run(ctx)
	if err := d.Close(); err != nil {
		log.ErrorContext(ctx, "close", slog.Any("error", err))
	}
	return runErr
}
