package config

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/transitca/transitca/internal/spiffeid"
	"github.com/transitca/transitca/issuer"
)

// Validate checks the configuration and returns every problem found, each
// naming its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.DataDir == "" {
		bad("data_dir: must be set")
	}
	if err := spiffeid.ValidTrustDomain(c.TrustDomain); err != nil {
		bad("trust_domain: %v", err)
	}
	if !c.Dev {
		if err := c.VaultAuth().Validate(); err != nil {
			bad("vault.auth: %v", err)
		}
		if c.Vault.TransitMount == "" {
			bad("vault.transit_mount: must be set")
		}
		if c.Vault.KVMount == "" {
			bad("vault.kv_mount: must be set")
		}
	}
	if c.Vault.Timeout <= 0 {
		bad("vault.timeout: must be positive")
	}
	if err := checkCAKeyType("ca.root_key_type", c.CA.RootKeyType); err != nil {
		errs = append(errs, err)
	}
	switch issuer.Mode(c.CA.IntermediateMode) {
	case issuer.ModeMemory:
	case issuer.ModeVault:
		if c.Dev {
			bad("ca.intermediate_mode: %q needs Vault; dev mode supports %q only", issuer.ModeVault, issuer.ModeMemory)
		}
		if err := checkCAKeyType("ca.intermediate_key_type", c.CA.IntermediateKeyType); err != nil {
			errs = append(errs, err)
		}
	default:
		bad("ca.intermediate_mode: %q is not %q or %q", c.CA.IntermediateMode, issuer.ModeMemory, issuer.ModeVault)
	}
	if c.CA.RootKey == "" {
		bad("ca.root_key: must be set")
	}
	if c.CA.IntermediateKey == "" {
		bad("ca.intermediate_key: must be set")
	}
	if c.CA.RootTTL <= 0 {
		bad("ca.root_ttl: must be positive")
	}
	if c.CA.IntermediateTTL <= 0 {
		bad("ca.intermediate_ttl: must be positive")
	} else if c.CA.IntermediateTTL >= c.CA.RootTTL {
		bad("ca.intermediate_ttl: %v must be shorter than ca.root_ttl %v", c.CA.IntermediateTTL, c.CA.RootTTL)
	}
	errs = slices.Concat(errs, c.validateServer(), c.validateAuth(), c.validateLog(),
		c.validateRotation(), c.validateDenials(), c.validateOverload())
	errs = append(errs, c.validateKubernetes()...)
	errs = append(errs, c.validateIstiod()...)
	errs = append(errs, c.validateClusters()...)
	errs = append(errs, c.validateAdmin()...)
	if err := c.IssuancePolicy().Validate(); err != nil {
		bad("tiers/policy: %v", err)
	}
	maxLeaf := time.Duration(0)
	for _, t := range c.Tiers {
		maxLeaf = max(maxLeaf, time.Duration(t.MaxTTL))
	}
	if maxLeaf > 0 && time.Duration(c.CA.IntermediateTTL) < 2*maxLeaf {
		bad("ca.intermediate_ttl: %v is less than twice the longest tier max_ttl %v; the intermediate is renewed at half-life and must outlive every leaf", c.CA.IntermediateTTL, maxLeaf)
	}
	return errors.Join(errs...)
}

// keyTypes are the key types issuer declares, in the order error messages
// list them. Which of them a CA may have is issuer's rule,
// KeyType.CanCertify.
var keyTypes = []issuer.KeyType{
	issuer.KeyECDSAP256, issuer.KeyECDSAP384, issuer.KeyRSA2048, issuer.KeyRSA3072, issuer.KeyRSA4096, issuer.KeyEd25519,
}

// CAKeyTypes returns the values ca.root_key_type and
// ca.intermediate_key_type may have, in the order messages list them.
func CAKeyTypes() []string {
	var allowed []string
	for _, t := range keyTypes {
		if t.CanCertify() {
			allowed = append(allowed, string(t))
		}
	}
	return allowed
}

// checkCAKeyType returns an error naming key and the key types allowed
// unless value is a key type a root or intermediate may have.
func checkCAKeyType(key, value string) error {
	if issuer.KeyType(value).CanCertify() {
		return nil
	}
	return fmt.Errorf("%s: %q is not one of %s", key, value, strings.Join(CAKeyTypes(), ", "))
}

// validateServer checks the listeners and the serving certificate.
func (c *Config) validateServer() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Server.Listen == "" {
		bad("server.listen: must be set")
	}
	switch c.Server.TLS.MinVersion {
	case "1.2", "1.3":
	default:
		bad("server.tls.min_version: %q is not \"1.2\" or \"1.3\"", c.Server.TLS.MinVersion)
	}
	if len(c.Server.TLS.DNSNames) == 0 && len(c.Server.TLS.IPAddresses) == 0 {
		bad("server.tls: dns_names or ip_addresses must name the serving certificate")
	}
	for _, ip := range c.Server.TLS.IPAddresses {
		if net.ParseIP(ip) == nil {
			bad("server.tls.ip_addresses: %q is not an IP address", ip)
		}
	}
	if c.Server.TLS.CertTTL < Duration(time.Minute) {
		bad("server.tls.cert_ttl: %v is shorter than a minute", c.Server.TLS.CertTTL)
	}
	return errs
}

// validateAuth checks how callers prove who they are.
func (c *Config) validateAuth() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(c.Auth.Clusters) == 0 {
		bad("auth.clusters: must list at least one cluster ID")
	}
	if len(c.Auth.Audiences) == 0 {
		bad("auth.audiences: must list at least one audience")
	}
	jwt := c.Auth.JWT.Issuer != "" || c.Auth.JWT.JWKSFile != "" || c.Auth.JWT.Discovery
	if jwt && c.Auth.TokenReview.Enabled && len(c.Clusters) == 0 {
		bad("auth: configure either jwt or tokenreview for bearer tokens, not both")
	}
	if jwt {
		if c.Auth.JWT.Issuer == "" {
			bad("auth.jwt.issuer: must be set")
		}
		if (c.Auth.JWT.JWKSFile == "") == !c.Auth.JWT.Discovery {
			bad("auth.jwt: set exactly one of jwks_file and discovery")
		}
	}
	if c.Auth.TokenReview.Enabled && c.Auth.TokenReview.APIServer == "" {
		bad("auth.tokenreview.api_server: must be set")
	}
	if ttl := c.Auth.TokenReview.CacheTTL; ttl < 0 || ttl > Duration(MaxTokenReviewCacheTTL) {
		bad("auth.tokenreview.cache_ttl: %v is not between 0 (no cache) and %v", ttl, MaxTokenReviewCacheTTL)
	}
	if c.Auth.TokenReview.CacheSize < 1 {
		bad("auth.tokenreview.cache_size: must be at least 1")
	}
	errs = append(errs, validIssuers("auth.tokenreview.issuers", c.Auth.TokenReview.Issuers)...)
	if !jwt && !c.Auth.TokenReview.Enabled && !c.Auth.ClientCertificates && !c.Dev && len(c.Clusters) == 0 {
		bad("auth: no way to authenticate callers: configure jwt, tokenreview or client_certificates")
	}
	return errs
}

// validateLog checks the issuance log, its replicas' shards and the size
// of a certificate request.
func (c *Config) validateLog() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Log.CheckpointKey == "" {
		bad("log.checkpoint_key: must be set")
	}
	if c.Log.CheckpointEvery < 1 {
		bad("log.checkpoint_every: must be at least 1")
	}
	if c.Log.CheckpointInterval < Duration(time.Second) {
		bad("log.checkpoint_interval: %v is shorter than a second", c.Log.CheckpointInterval)
	}
	if strings.ContainsAny(c.LogKeyName(), " \t\n+") {
		bad("log.origin: %q must not contain spaces or '+'", c.LogKeyName())
	}
	errs = append(errs, c.validateReplicas()...)
	if d := c.Admin.CallTimeout; d < Duration(time.Second) || d > Duration(24*time.Hour) {
		bad("admin.call_timeout: %v is outside 1s to 24h", time.Duration(d))
	}
	if c.CSR.MaxBytes < 512 || c.CSR.MaxBytes > 1<<20 {
		bad("csr.max_bytes: %d is outside 512 to 1048576", c.CSR.MaxBytes)
	}
	return errs
}

// validateRotation checks root rotation, its schedule and the drills.
func (c *Config) validateRotation() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Rotation.MinOverlap < 0 {
		bad("rotation.min_overlap: must not be negative")
	}
	if d := c.Rotation.DrillInterval; d < 0 || (d > 0 && d < Duration(time.Minute)) {
		bad("rotation.drill_interval: %v must be zero (off) or at least 1m", time.Duration(d))
	}
	if sc := c.Rotation.Schedule; sc.PrepareAt != 0 || sc.ActivateAt != 0 {
		if !(sc.PrepareAt > 0 && sc.PrepareAt < 1 && sc.ActivateAt > 0 && sc.ActivateAt < sc.PrepareAt) {
			bad("rotation.schedule: prepare_at %v and activate_at %v must satisfy 0 < activate_at < prepare_at < 1 (fractions of the root's lifetime left)", sc.PrepareAt, sc.ActivateAt)
		}
		if sc.CheckEvery < 0 {
			bad("rotation.schedule.check_every: must not be negative")
		}
	}
	// spiffeid.New with no path is the prefix of every ID in the trust domain.
	if id := c.Rotation.DrillIdentity; id != "" && !strings.HasPrefix(id, spiffeid.New(c.TrustDomain)) {
		bad("rotation.drill_identity: %q is not a SPIFFE ID in trust domain %s", id, c.TrustDomain)
	}
	return errs
}

// validateDenials checks how denials are recorded and counted.
func (c *Config) validateDenials() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if r := c.Limits.DenialsPerPeerPerSecond; !(r > 0 && r <= 1e6) {
		bad("limits.denials_per_peer_per_second: %v is outside (0, 1000000]", r)
	}
	if b := c.Limits.DenialBurst; b < 1 || b > 1e6 {
		bad("limits.denial_burst: %d is outside 1 to 1000000", b)
	}
	if w := c.Limits.DenialWindow; w < Duration(time.Second) || w > Duration(time.Hour) {
		bad("limits.denial_window: %v is outside 1s to 1h", w)
	}
	if p := c.Limits.DenialPeers; p < 1 || p > 1e6 {
		bad("limits.denial_peers: %d is outside 1 to 1000000", p)
	}
	return errs
}

func (c *Config) validateKubernetes() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	k := c.Kubernetes
	if _, err := labels.Parse(k.TrustBundle.NamespaceSelector); err != nil {
		bad("kubernetes.trust_bundle.namespace_selector: %v", err)
	}
	if k.TrustBundle.Resync < Duration(time.Second) {
		bad("kubernetes.trust_bundle.resync: %v is shorter than a second", k.TrustBundle.Resync)
	}
	le := k.LeaderElection
	if le.LeaseName == "" {
		bad("kubernetes.leader_election.lease_name: must be set")
	}
	if le.RetryPeriod <= 0 {
		bad("kubernetes.leader_election.retry_period: must be positive")
	}
	// client-go's own rules: a leader gives up before its lease ends, and
	// retries several times before it gives up.
	if float64(le.RenewDeadline) <= leaderelectionJitter*float64(le.RetryPeriod) {
		bad("kubernetes.leader_election.renew_deadline: %v must be longer than %.1f × retry_period %v", le.RenewDeadline, leaderelectionJitter, le.RetryPeriod)
	}
	if le.LeaseDuration <= le.RenewDeadline {
		bad("kubernetes.leader_election.lease_duration: %v must be longer than renew_deadline %v", le.LeaseDuration, le.RenewDeadline)
	}
	return errs
}

// leaderelectionJitter is client-go leaderelection.JitterFactor.
const leaderelectionJitter = 1.2
