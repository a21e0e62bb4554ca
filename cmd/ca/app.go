package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/transitca/transitca/internal/config"
)

// runFunc runs a command or subcommand with its arguments.
type runFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// command is one subcommand of ca.
type command struct {
	name    string
	summary string
	run     runFunc
}

func commands() []command {
	return []command{
		{"init", "create the root key in Vault Transit and the root certificate (idempotent)", runInit},
		{"serve", "serve Istio's CreateCertificate over gRPC/TLS", runServe},
		{"request", "request a certificate the way istio-agent does", runRequest},
		{"token", "mint a dev-mode service-account token (DEV-ONLY)", runToken},
		{"log", "query, export, verify and prove the issuance log", runLog},
		{"admin", "rotate the CA's keys and rehearse it on a running daemon", runAdmin},
		{"report", "reports for operators: which namespaces are ready for STRICT mTLS", runReport},
		{"version", "print the version", runVersion},
	}
}

// errUsage marks an error already explained on stderr by a flag set.
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		}
		fmt.Fprintf(stderr, "ca %s: %v\n", c.name, err)
		return 1
	}
	fmt.Fprintf(stderr, "ca: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: ca <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run \"ca <command> -h\" for a command's flags.")
}

// commonFlags are the flags every command that loads the configuration
// takes. Flags override the file.
type commonFlags struct {
	config      string
	dev         bool
	dataDir     string
	trustDomain string
	logLevel    string
}

func (f *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "configuration file (YAML); defaults apply when absent")
	fs.BoolVar(&f.dev, "dev", false, "development mode: local software keys in the data dir, no Vault (DEV-ONLY)")
	fs.StringVar(&f.dataDir, "data-dir", "", "data directory (overrides data_dir)")
	fs.StringVar(&f.trustDomain, "trust-domain", "", "SPIFFE trust domain (overrides trust_domain)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
}

// newFlagSet is the flag set of a command: errors are returned, not
// fatal, and usage goes to stderr.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args with fs and reports usage errors.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %v\n", fs.Args())
		return errUsage
	}
	return nil
}

// load reads the configuration, applies flags and validates it.
func (f *commonFlags) load() (*config.Config, error) { return f.loadWith(nil) }

// loadWith is load with a command's own overrides applied before
// validation.
func (f *commonFlags) loadWith(override func(*config.Config)) (*config.Config, error) {
	cfg, err := config.Load(f.config)
	if err != nil {
		return nil, err
	}
	if f.dev {
		cfg.Dev = true
		if f.config == "" && f.dataDir == "" {
			cfg.DataDir = "transitca-dev-data"
		}
	}
	if f.dataDir != "" {
		cfg.DataDir = f.dataDir
	}
	if f.trustDomain != "" {
		cfg.TrustDomain = f.trustDomain
	}
	if override != nil {
		override(cfg)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

func (f *commonFlags) logger(stderr io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})), nil
}
