package main

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/daemon"
	"github.com/transitca/transitca/issuer"
)

func runInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca init", stderr)
	var common commonFlags
	common.register(fs)
	keyType := fs.String("root-key-type", "", "root key type: "+strings.Join(config.CAKeyTypes(), ", ")+"; default "+config.Default().CA.RootKeyType+" (overrides ca.root_key_type)")
	mode := fs.String("intermediate-mode", "", "issuing intermediate: memory or vault (overrides ca.intermediate_mode)")
	enableTransit := fs.Bool("enable-transit", false, "mount a Transit secrets engine at vault.transit_mount when none is mounted there")
	enableKV := fs.Bool("enable-kv", false, "mount a KV version 2 secrets engine at vault.kv_mount when none is mounted there")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ca init [flags]")
		fmt.Fprintln(stderr, "\nCreates the non-exportable root key in Vault Transit and the self-signed root")
		fmt.Fprintln(stderr, "certificate, stored in Vault KV next to it. Running it again changes nothing.")
		fmt.Fprintln(stderr, "Vault is reached through the standard VAULT_ADDR and VAULT_TOKEN environment.")
		fmt.Fprintln(stderr, "It needs a Transit engine (vault.transit_mount) and a KV version 2 engine")
		fmt.Fprintln(stderr, "(vault.kv_mount); --enable-transit and --enable-kv mount them when missing.")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := common.loadWith(func(c *config.Config) {
		if *keyType != "" {
			c.CA.RootKeyType = *keyType
		}
		if *mode != "" {
			c.CA.IntermediateMode = *mode
		}
	})
	if err != nil {
		return err
	}
	log, err := common.logger(stderr)
	if err != nil {
		return err
	}
	if cfg.Dev && (*enableTransit || *enableKV) {
		return errors.New("--enable-transit and --enable-kv mount Vault secrets engines: dev mode has no Vault")
	}
	b, err := daemon.OpenBackend(ctx, cfg, log)
	if err != nil {
		return err
	}
	say := func(done bool, created, existed string) {
		if done {
			fmt.Fprintln(stdout, "created", created)
		} else {
			fmt.Fprintln(stdout, "unchanged:", existed)
		}
	}
	if !cfg.Dev {
		if err := ensureMounts(ctx, b, *enableTransit, *enableKV, stdout); err != nil {
			return err
		}
	}
	res, err := issuer.Init(ctx, b.Keys, b.Certs, cfg.IssuerOptions())
	if err != nil {
		return withMountHint(err, cfg)
	}
	kind := cfg.CA.RootKeyType + ", not exportable"
	if cfg.Dev {
		kind = cfg.CA.RootKeyType + ", " + issuer.DevOnlyLabel
	}
	say(res.KeyCreated, "root key "+cfg.CA.RootKey+" ("+kind+") in "+b.Keys.Describe(),
		"root key "+cfg.CA.RootKey+" exists in "+b.Keys.Describe())
	say(res.RootCreated, fmt.Sprintf("root certificate for key version %d", res.RootKeyVersion),
		fmt.Sprintf("root certificate for key version %d exists", res.RootKeyVersion))
	logKeyCreated, err := b.Keys.EnsureKey(ctx, cfg.Log.CheckpointKey, issuer.KeyEd25519)
	if err != nil {
		return withMountHint(fmt.Errorf("checkpoint key: %w", err), cfg)
	}
	say(logKeyCreated, "checkpoint signing key "+cfg.Log.CheckpointKey+" (ed25519)", "checkpoint signing key "+cfg.Log.CheckpointKey+" exists")
	if cfg.CA.IntermediateMode == string(issuer.ModeVault) {
		say(res.IntermediateKeyCreated, "intermediate key "+cfg.CA.IntermediateKey, "intermediate key "+cfg.CA.IntermediateKey+" exists")
	}
	if !res.KeyCreated && !res.RootCreated && !res.IntermediateKeyCreated && !logKeyCreated {
		fmt.Fprintln(stdout, "nothing changed: the CA was already initialized")
	}
	fmt.Fprintf(stdout, "root: %s, valid until %s, SHA-256 %s\n", res.Root.Subject, res.Root.NotAfter.UTC().Format("2006-01-02"), issuer.Fingerprint(res.Root))
	return pem.Encode(stdout, &pem.Block{Type: "CERTIFICATE", Bytes: res.Root.Raw})
}

// mounter is a Vault store that can check, and mount, its secrets engine.
type mounter interface {
	EnsureMount(ctx context.Context, enable bool) (created bool, err error)
	MountPath() string
}

// ensureMounts checks, before anything is written, that the Transit and KV
// engines ca init writes to are mounted, and mounts those the flags allow.
// It reports every missing engine at once.
func ensureMounts(ctx context.Context, b *daemon.Backend, enableTransit, enableKV bool, stdout io.Writer) error {
	kv, ok := b.Certs.(mounter)
	if !ok {
		return nil
	}
	var errs []error
	for _, m := range []struct {
		store  mounter
		engine issuer.Engine
		enable bool
		flag   string
	}{
		{b.Transit, issuer.EngineTransit, enableTransit, "--enable-transit"},
		{kv, issuer.EngineKV2, enableKV, "--enable-kv"},
	} {
		created, err := m.store.EnsureMount(ctx, m.enable)
		switch {
		case errors.Is(err, issuer.ErrMountNotFound):
			errs = append(errs, fmt.Errorf("%w, or run \"ca init %s\"", err, m.flag))
		case err != nil:
			errs = append(errs, err)
		case created:
			fmt.Fprintf(stdout, "created %s secrets engine at %s\n", m.engine, m.store.MountPath())
		}
	}
	return errors.Join(errs...)
}

// withMountHint adds, to an error saying that Vault has nothing mounted at
// a path (seen when the token may not read the mount table, so that
// ensureMounts could not tell), the commands that mount what ca init needs.
func withMountHint(err error, cfg *config.Config) error {
	if !errors.Is(err, issuer.ErrMountNotFound) {
		return err
	}
	return fmt.Errorf("%w\nca init needs a transit engine at %q and a kv version 2 engine at %q: "+
		"\"vault secrets enable -path=%s transit\" and \"vault secrets enable -path=%s -version=2 kv\" mount them",
		err, cfg.Vault.TransitMount, cfg.Vault.KVMount, cfg.Vault.TransitMount, cfg.Vault.KVMount)
}
