// Command benchdriver measures transitca against its peers side by side on
// this machine and writes docs/benchmarks.md: the in-process crypto bound,
// Istio's own CA server (ECDSA and RSA), Vault PKI (with and without
// no_store), Vault Transit's raw sign rate, and transitca in both
// intermediate modes, all under the same load from the same load
// generator; then open-loop latency at half of the peak and a restart
// storm. "make bench" runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/transitca/transitca/test/bench/internal/driver"
	"github.com/transitca/transitca/test/bench/internal/peers"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "benchdriver:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == driver.IstioCAServerCommand {
		return serveIstioCA(ctx, args[1:])
	}
	cfg := driver.DefaultConfig()
	fs := flag.NewFlagSet("benchdriver", flag.ContinueOnError)
	fs.StringVar(&cfg.Out, "out", "", "Markdown file to write the results into (between its result markers)")
	fs.StringVar(&cfg.Command, "command", "", "how the run was invoked, for the report, such as \"make bench\" (default: this command line)")
	fs.StringVar(&cfg.CABinary, "ca", "", "the ca binary (default: build it)")
	fs.StringVar(&cfg.CandidateCA, "candidate-ca", "", "a second ca binary (a build with a proposed change) measured side by side with the current one in every scenario")
	fs.StringVar(&cfg.WorkDir, "workdir", "", "directory for data dirs and logs, kept afterwards (default: a temporary one, removed)")
	fs.IntVar(&cfg.Clients, "clients", cfg.Clients, "simulated agents (concurrent connections)")
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "interleaved closed-loop rounds; the report takes medians")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "warm-up before each measured window")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "closed-loop measured window")
	fs.DurationVar(&cfg.OpenDuration, "open-duration", cfg.OpenDuration, "open-loop measured window")
	fs.IntVar(&cfg.StormServices, "storm-services", cfg.StormServices, "services restarting in the storm")
	fs.IntVar(&cfg.StormReplicas, "storm-replicas", cfg.StormReplicas, "replicas per service in the storm")
	fs.DurationVar(&cfg.StormSpread, "storm-spread", cfg.StormSpread, "window the storm's workloads start in")
	fs.IntVar(&cfg.KubeServices, "kube-services", cfg.KubeServices, "services restarting in the Kubernetes storm")
	fs.IntVar(&cfg.KubeReplicas, "kube-replicas", cfg.KubeReplicas, "replicas per service in the Kubernetes storm")
	fs.IntVar(&cfg.LogEntries, "log-entries", cfg.LogEntries, "entries of the large issuance log (generated once, then cached)")
	fs.IntVar(&cfg.LogAppends, "log-appends", cfg.LogAppends, "durable appends measured into the large log and into a new one")
	fs.StringVar(&cfg.LogCache, "log-cache", "", "directory of the cached large log (default: ${XDG_CACHE_HOME:-$HOME/.cache}/transitca)")
	fs.IntVar(&cfg.Identities, "identities", cfg.Identities, "service accounts in the steady-state runs")
	fs.IntVar(&cfg.Pool, "csrs", cfg.Pool, "ECDSA P-256 CSRs generated before timing, cycled")
	fs.IntVar(&cfg.RSAPool, "rsa-csrs", cfg.RSAPool, "RSA-2048 CSRs generated before timing, cycled")
	only := fs.String("only", "", "comma-separated system ids to run (crypto, istio-ecdsa, istio-rsa, vault-pki, vault-pki-nostore, vault-transit, transitca-memory, transitca-vault)")
	skip := fs.String("skip", "", "comma-separated parts to leave out: profile, rsa, open, storm, kubestorm, logscale")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	if *skip != "" {
		cfg.Skip = strings.Split(*skip, ",")
	}
	quoted := []string{"go run ./cmd/benchdriver"}
	for _, a := range args {
		if strings.ContainsAny(a, " \t'\"$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		quoted = append(quoted, a)
	}
	cfg.Args = strings.Join(quoted, " ")
	if cfg.Command == "" {
		cfg.Command = "cd test/bench && " + cfg.Args
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.Self = self
	cfg.Log = os.Stderr
	if !*quiet {
		cfg.Progress = os.Stderr
	}
	return driver.Run(ctx, cfg)
}

// serveIstioCA is the child process that serves Istio's CA.
func serveIstioCA(ctx context.Context, args []string) error {
	var c peers.IstioCAConfig
	fs := flag.NewFlagSet(driver.IstioCAServerCommand, flag.ContinueOnError)
	fs.StringVar(&c.Dir, "dir", "", "working directory")
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:0", "listen address")
	fs.StringVar(&c.Mode, "mode", peers.IstioPluggedECDSA, "ecdsa (plugged P-256 CA) or rsa (self-signed RSA-2048)")
	fs.StringVar(&c.JWKSFile, "jwks", "", "JWKS file that verifies tokens")
	fs.StringVar(&c.Issuer, "issuer", "", "token issuer")
	fs.StringVar(&c.PprofAddr, "pprof", "", "address to serve Go's profiles of the server at (/debug/pprof/)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return peers.ServeIstioCA(ctx, c)
}
