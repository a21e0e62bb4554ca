package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/daemon"
)

func runToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca token", stderr)
	var common commonFlags
	common.register(fs)
	ns := fs.String("namespace", "default", "Kubernetes namespace of the workload")
	sa := fs.String("service-account", "default", "Kubernetes service account of the workload")
	aud := fs.String("audience", ca.DefaultAudience, "token audience")
	ttl := fs.Duration("ttl", time.Hour, "token lifetime")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ca token --dev [flags]")
		fmt.Fprintln(stderr, "\nMints a token shaped like a projected Kubernetes service-account token, signed by")
		fmt.Fprintln(stderr, "the dev CA's local token key, which \"ca serve --dev\" trusts. DEV-ONLY.")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := common.load()
	if err != nil {
		return err
	}
	if !cfg.Dev {
		return fmt.Errorf("tokens can only be minted in dev mode (--dev); in a cluster, Kubernetes issues them")
	}
	log, err := common.logger(io.Discard)
	if err != nil {
		return err
	}
	b, err := daemon.OpenBackend(ctx, cfg, log)
	if err != nil {
		return err
	}
	m, err := daemon.DevMinter(ctx, b.Keys)
	if err != nil {
		return err
	}
	tok, err := m.Mint(*ns, *sa, []string{*aud}, *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
