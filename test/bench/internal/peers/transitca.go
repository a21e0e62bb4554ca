package peers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// TransitcaConfig configures one "ca serve" daemon.
type TransitcaConfig struct {
	Binary       string // the ca binary
	Dir          string // working directory: config, data dir (the issuance log)
	Addr         string // listen address
	Mode         string // ca.intermediate_mode: memory or vault
	VaultAddr    string
	VaultToken   string
	TransitMount string
	KVMount      string
	JWKSFile     string
	Issuer       string
	// Kubeconfig, when set, replaces the offline JWKS check: tokens are
	// checked by TokenReview against this kubeconfig's API server, which
	// the Kubernetes features (trust bundle, leader election) also use.
	Kubeconfig string
	// MetricsAddr, when set, serves /metrics and /debug/pprof there.
	MetricsAddr string
	// MaxInFlight, when set, replaces limits.max_in_flight (the requests
	// handled at once; beyond it they are refused with ResourceExhausted).
	MaxInFlight int
}

// Transitca is a running "ca serve".
type Transitca struct {
	*Process
	Addr     string
	RootFile string
	DataDir  string
	// MetricsAddr serves metrics and Go's profiles; empty when off.
	MetricsAddr string
}

// StartTransitca writes a configuration, runs "ca init" and starts "ca
// serve" with it: tokens verified offline against JWKSFile (or by
// TokenReview with Kubeconfig), the issuance log on (it always is: durable,
// fsync, group commit), no admin listener and, without MetricsAddr, no
// metrics listener.
func StartTransitca(ctx context.Context, c TransitcaConfig) (*Transitca, error) {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, err
	}
	dataDir := filepath.Join(c.Dir, "data")
	cfgFile := filepath.Join(c.Dir, "transitca.yaml")
	cfg := fmt.Sprintf(`data_dir: %s
trust_domain: cluster.local
vault:
  transit_mount: %s
  kv_mount: %s
  timeout: 10s
ca:
  intermediate_mode: %s
server:
  listen: %s
  metrics_listen: "%s"
  pprof: %t
  tls:
    dns_names: [localhost]
    ip_addresses: [127.0.0.1]
%s
admin:
  listen: ""
%s`, dataDir, c.TransitMount, c.KVMount, c.Mode, c.Addr, c.MetricsAddr, c.MetricsAddr != "", c.authConfig(), c.limitsConfig())
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	env := []string{"VAULT_ADDR=" + c.VaultAddr, "VAULT_TOKEN=" + c.VaultToken}
	ictx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	initCmd := exec.CommandContext(ictx, c.Binary, "init", "--config", cfgFile)
	initCmd.Env = append(os.Environ(), env...)
	if out, err := initCmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ca init (%s mode): %w\n%s", c.Mode, err, out)
	}
	p, err := StartProcess("transitca "+c.Mode, filepath.Join(c.Dir, "serve.log"), env, c.Binary, "serve", "--config", cfgFile)
	if err != nil {
		return nil, err
	}
	t := &Transitca{Process: p, Addr: c.Addr, RootFile: filepath.Join(dataDir, "root-cert.pem"), DataDir: dataDir, MetricsAddr: c.MetricsAddr}
	if err := p.WaitTLS(c.Addr, t.RootFile, 60*time.Second); err != nil {
		p.Stop()
		return nil, err
	}
	return t, nil
}

// authConfig is the auth section, and the kubernetes one with a kubeconfig.
func (c TransitcaConfig) authConfig() string {
	if c.Kubeconfig != "" {
		return fmt.Sprintf(`auth:
  tokenreview:
    enabled: true
kubernetes:
  kubeconfig: %s`, c.Kubeconfig)
	}
	return fmt.Sprintf(`auth:
  jwt:
    issuer: %s
    jwks_file: %s`, c.Issuer, c.JWKSFile)
}

// limitsConfig is the limits section, empty for the defaults.
func (c TransitcaConfig) limitsConfig() string {
	if c.MaxInFlight == 0 {
		return ""
	}
	return fmt.Sprintf("limits:\n  max_in_flight: %d\n", c.MaxInFlight)
}

// StartTransitcaOn starts "ca serve" with c on Transit and KV mounts of its
// own in v, named after name, listening on free loopback ports for gRPC
// and for metrics and profiles.
func StartTransitcaOn(ctx context.Context, v *Vault, name string, c TransitcaConfig) (*Transitca, error) {
	c.TransitMount, c.KVMount = "transit-"+name, "kv-"+name
	if err := v.Mount(ctx, c.TransitMount, "transit", nil); err != nil {
		return nil, err
	}
	if err := v.MountKV(ctx, c.KVMount); err != nil {
		return nil, err
	}
	var err error
	if c.Addr, err = FreeAddr(); err != nil {
		return nil, err
	}
	if c.MetricsAddr, err = FreeAddr(); err != nil {
		return nil, err
	}
	c.VaultAddr, c.VaultToken = v.Server.Addr, v.Server.RootToken
	return StartTransitca(ctx, c)
}
