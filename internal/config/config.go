// Package config loads transitca's one YAML configuration file: decoded
// strictly (an unknown key is an error), filled with defaults, and checked by
// Validate, whose messages name the offending key.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/transitca/transitca/internal/spiffeid"
	"github.com/transitca/transitca/issuer"
)

// Config is the whole configuration file.
type Config struct {
	// Dev runs with local software keys in DataDir instead of Vault. It is
	// for development only.
	Dev bool `yaml:"dev"`
	// DataDir holds the issuance log, root-cert.pem and, in dev mode, the
	// dev-only keys.
	DataDir string `yaml:"data_dir"`
	// TrustDomain is the SPIFFE trust domain of the mesh.
	TrustDomain string `yaml:"trust_domain"`
	Vault       Vault  `yaml:"vault"`
	CA          CA     `yaml:"ca"`
	Server      Server `yaml:"server"`
	Auth        Auth   `yaml:"auth"`
	// Clusters lists each cluster served with its own token verifier and
	// pods (see clusters.go). Empty means the clusters of auth.clusters,
	// all checked by auth.jwt or auth.tokenreview.
	Clusters []Cluster `yaml:"clusters"`
	CSR      CSR       `yaml:"csr"`
	// Tiers are the certificate lifetime classes, by name.
	Tiers map[string]Tier `yaml:"tiers"`
	// DefaultTier is the tier of an identity no policy rule matches.
	DefaultTier string `yaml:"default_tier"`
	// Policy maps identities to tiers and to the DNS names they may ask
	// for; the first matching rule wins.
	Policy []Rule `yaml:"policy"`
	Log    Log    `yaml:"log"`
	Admin  Admin  `yaml:"admin"`
	Limits Limits `yaml:"limits"`
	// Rotation governs root rotation and drills.
	Rotation Rotation `yaml:"rotation"`
	// Kubernetes turns on what the daemon writes to the cluster: the
	// istio-ca-root-cert ConfigMaps, under leader election.
	Kubernetes Kubernetes `yaml:"kubernetes"`
}

// Kubernetes is the daemon's access to the Kubernetes API.
type Kubernetes struct {
	// Enabled turns the Kubernetes features on or off. Unset means auto:
	// on when the daemon runs in a pod (the in-cluster configuration) or
	// a kubeconfig is given.
	Enabled *bool `yaml:"enabled"`
	// Kubeconfig is a kubeconfig file used instead of the in-cluster
	// configuration ("ca serve --kubeconfig", or $KUBECONFIG).
	Kubeconfig string `yaml:"kubeconfig"`
	// TrustBundle distributes the root bundle as the istio-ca-root-cert
	// ConfigMap.
	TrustBundle TrustBundle `yaml:"trust_bundle"`
	// LeaderElection picks the one replica that writes.
	LeaderElection LeaderElection `yaml:"leader_election"`
	// Istiod is istiod's serving certificate (the istiod-tls Secret); see
	// istiod.go.
	Istiod Istiod `yaml:"istiod"`
}

// TrustBundle is the istio-ca-root-cert ConfigMap writer.
type TrustBundle struct {
	// Enabled writes the ConfigMaps (when the Kubernetes features are on).
	Enabled bool `yaml:"enabled"`
	// NamespaceSelector is a label selector ("istio-injection=enabled",
	// "env in (prod,staging)"); the ConfigMap goes to every namespace it
	// matches. Empty matches every namespace.
	NamespaceSelector string `yaml:"namespace_selector"`
	// Resync is how often every namespace is checked even when nothing
	// was seen to change; it also bounds how late a bundle change the
	// daemon was not told about reaches the cluster.
	Resync Duration `yaml:"resync"`
}

// LeaderElection configures the Lease that elects the writing replica.
// Every replica serves certificates; only the leader writes to the
// cluster.
type LeaderElection struct {
	// Namespace holds the Lease; empty means the daemon's own namespace
	// (the pod's, or the kubeconfig context's), else istio-system.
	Namespace string `yaml:"namespace"`
	// LeaseName is the Lease's name.
	LeaseName string `yaml:"lease_name"`
	// LeaseDuration is how long followers wait before taking over from a
	// leader that stopped renewing.
	LeaseDuration Duration `yaml:"lease_duration"`
	// RenewDeadline is how long the leader keeps trying to renew before it
	// stops writing.
	RenewDeadline Duration `yaml:"renew_deadline"`
	// RetryPeriod is how often candidates try to acquire or renew.
	RetryPeriod Duration `yaml:"retry_period"`
}

// Rotation governs the staged root rotation and the rehearsal drills.
type Rotation struct {
	// MinOverlap is how long a prepared root must be in the trust bundle
	// before ActivateRoot is allowed without force: agents refresh their
	// bundle only when they renew, at half a leaf's lifetime. Zero means
	// half the longest tier max_ttl (see MinOverlap).
	MinOverlap Duration `yaml:"min_overlap"`
	// AllowRootDrill lets "ca admin drill --root" run a full prepare and
	// activate cycle. For staging: in production it really rotates the root.
	AllowRootDrill bool `yaml:"allow_root_drill"`
	// DrillInterval runs a drill (intermediate only) on this schedule; zero
	// turns scheduled drills off.
	DrillInterval Duration `yaml:"drill_interval"`
	// DrillIdentity is the SPIFFE ID of a drill's probe certificates;
	// spiffe://<trust_domain>/ns/transitca/sa/drill when empty.
	DrillIdentity string `yaml:"drill_identity"`
	// Schedule prepares and activates roots automatically.
	Schedule RotationSchedule `yaml:"schedule"`
	// StatePollInterval is how often a replica reads the rotation state
	// shared in Vault, and so how soon it follows a step another replica
	// took (a new bundle, root or intermediate; a revoked intermediate).
	StatePollInterval Duration `yaml:"state_poll_interval"`
}

// RotationSchedule prepares a new root when the active root has
// PrepareAt of its lifetime left, and activates it at ActivateAt (SPIRE's
// fractions are 1/2 and 1/6). Activation still waits for min_overlap.
// Both zero turn the schedule off.
type RotationSchedule struct {
	PrepareAt  float64 `yaml:"prepare_at"`
	ActivateAt float64 `yaml:"activate_at"`
	// CheckEvery is how often the schedule looks.
	CheckEvery Duration `yaml:"check_every"`
}

// MinOverlap returns rotation.min_overlap, or half the longest tier
// max_ttl when it is not set.
func (c *Config) MinOverlap() time.Duration {
	if c.Rotation.MinOverlap > 0 {
		return time.Duration(c.Rotation.MinOverlap)
	}
	var longest time.Duration
	for _, t := range c.Tiers {
		longest = max(longest, time.Duration(t.MaxTTL))
	}
	return longest / 2
}

// DrillIdentity returns the SPIFFE ID of drill probes.
func (c *Config) DrillIdentity() string {
	if c.Rotation.DrillIdentity != "" {
		return c.Rotation.DrillIdentity
	}
	return spiffeid.Workload(c.TrustDomain, "transitca", "drill")
}

// Limits bound what callers can make the CA write. Denials within the
// per-peer rate are recorded one entry each; beyond it they are counted
// and written as one aggregated denial entry per kind, peer and window.
type Limits struct {
	// DenialsPerPeerPerSecond is the sustained rate of individually
	// recorded denials per peer address (IPv4 address or IPv6 /64).
	DenialsPerPeerPerSecond float64 `yaml:"denials_per_peer_per_second"`
	// DenialBurst is how many denials a peer may have recorded
	// individually at once.
	DenialBurst int `yaml:"denial_burst"`
	// DenialWindow is how often counted denials are written.
	DenialWindow Duration `yaml:"denial_window"`
	// DenialPeers caps the peers tracked at once; beyond it, new peers
	// share one bucket, recorded under the peer name "other".
	DenialPeers int `yaml:"denial_peers"`
	// MaxInFlight caps the certificate requests handled at once; beyond
	// it a request is refused at once with ResourceExhausted. 0 is no cap.
	MaxInFlight int `yaml:"max_in_flight"`
	// IdentityRequestsPerSecond is the sustained rate of certificate
	// requests one authenticated identity may make; beyond it (and
	// IdentityBurst) a request is refused with ResourceExhausted. 0 is no
	// limit.
	IdentityRequestsPerSecond float64 `yaml:"identity_requests_per_second"`
	// IdentityBurst is how many requests an identity may make at once.
	IdentityBurst int `yaml:"identity_burst"`
	// Identities caps the identities whose rate is tracked at once; beyond
	// it, new identities share one bucket.
	Identities int `yaml:"identities"`
}

// Log is the issuance log.
type Log struct {
	// Path is the bbolt file; <data_dir>/issuance.db when empty.
	Path string `yaml:"path"`
	// CheckpointKey is the Transit ed25519 key that signs checkpoints
	// ("ca init" creates it).
	CheckpointKey string `yaml:"checkpoint_key"`
	// Origin is the log's name, the first line of every checkpoint;
	// "transitca/<trust_domain>" when empty. With Shard set, each
	// replica's log is named "<origin>/<shard>" (see shard.go).
	Origin string `yaml:"origin"`
	// Shard names this replica's log among the replicas that share a
	// Vault: "" for a single replica, ShardAuto for $POD_NAME, else the
	// host name.
	Shard              string   `yaml:"shard"`
	CheckpointEvery    int      `yaml:"checkpoint_every"`
	CheckpointInterval Duration `yaml:"checkpoint_interval"`
}

// Admin is the admin API listener.
type Admin struct {
	// Listen is the admin gRPC address; loopback by default, "" disables.
	Listen string `yaml:"listen"`
	// Identities are the SPIFFE IDs whose client certificates may call the
	// admin API.
	Identities []string `yaml:"identities"`
}

// LogPath returns where the issuance log lives.
func (c *Config) LogPath() string {
	if c.Log.Path != "" {
		return c.Log.Path
	}
	return filepath.Join(c.DataDir, "issuance.db")
}

// LogKeyName returns the name of the checkpoint signing key: the log
// origin without the shard, so that one verifier key checks every
// replica's checkpoints.
func (c *Config) LogKeyName() string {
	if c.Log.Origin != "" {
		return c.Log.Origin
	}
	return "transitca/" + c.TrustDomain
}

// DevAdminIdentity is the admin identity a dev CA accepts when none is
// configured.
func (c *Config) DevAdminIdentity() string {
	return spiffeid.Workload(c.TrustDomain, "transitca", "admin")
}

// Server is the gRPC and metrics listeners and the TLS they serve.
type Server struct {
	// Listen is the gRPC address of IstioCertificateService.
	Listen string `yaml:"listen"`
	// MetricsListen serves /metrics (Prometheus) and /healthz over HTTP;
	// empty disables it.
	MetricsListen string `yaml:"metrics_listen"`
	TLS           TLS    `yaml:"tls"`
	// ShutdownTimeout bounds a shutdown (SIGTERM) from the signal to the
	// exit: requests in flight finish, the log is flushed and closed.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
}

// TLS configures the serving certificate, which transitca issues to itself
// from its own intermediate and renews at half-life.
type TLS struct {
	// MinVersion is "1.3" (default) or "1.2"; with 1.2 only ECDHE key
	// exchange and AEAD ciphers are offered.
	MinVersion  string   `yaml:"min_version"`
	DNSNames    []string `yaml:"dns_names"`
	IPAddresses []string `yaml:"ip_addresses"`
	CertTTL     Duration `yaml:"cert_ttl"`
}

// Auth says how callers prove who they are.
type Auth struct {
	// Clusters are the accepted values of the clusterid header.
	Clusters []string `yaml:"clusters"`
	// Audiences a token must be issued for (any of them).
	Audiences []string `yaml:"audiences"`
	// JWT verifies service-account tokens offline against a JWKS.
	JWT JWT `yaml:"jwt"`
	// TokenReview checks service-account tokens with the Kubernetes API.
	TokenReview TokenReview `yaml:"tokenreview"`
	// ClientCertificates accepts client certificates that chain to
	// transitca's roots and carry one SPIFFE ID.
	ClientCertificates bool `yaml:"client_certificates"`
	// TrustedNodeAccounts are the service accounts ("<namespace>/<name>",
	// Istio's CA_TRUSTED_NODE_ACCOUNTS) of node agents (ztunnel) that may
	// ask for the identity of a pod on their node (ambient mode). Empty
	// turns impersonation off.
	TrustedNodeAccounts []string `yaml:"trusted_node_accounts"`
}

// JWT is offline token verification.
type JWT struct {
	// Issuer is the required iss claim; with Discovery, also where the
	// OIDC discovery document is fetched from.
	Issuer string `yaml:"issuer"`
	// JWKSFile is a JSON Web Key Set file.
	JWKSFile string `yaml:"jwks_file"`
	// Discovery fetches the JWKS through Issuer's OIDC discovery document.
	Discovery bool     `yaml:"discovery"`
	Leeway    Duration `yaml:"leeway"`
}

// TokenReview is Kubernetes TokenReview authentication.
type TokenReview struct {
	Enabled   bool   `yaml:"enabled"`
	APIServer string `yaml:"api_server"`
	CAFile    string `yaml:"ca_file"`
	TokenFile string `yaml:"token_file"`
	// CacheTTL is how long an accepted token is trusted without a new
	// review (never beyond the token's expiry); 0 disables the cache. It
	// adds to the revocation delay: a deleted pod's token keeps working for
	// up to CacheTTL plus kube-apiserver's own 10s cache.
	CacheTTL Duration `yaml:"cache_ttl"`
	// CacheSize bounds the number of cached reviews.
	CacheSize int `yaml:"cache_size"`
}

// MaxTokenReviewCacheTTL bounds auth.tokenreview.cache_ttl: the point of
// TokenReview is to see revocation.
const MaxTokenReviewCacheTTL = time.Minute

// CSR limits what a certificate request may be.
type CSR struct {
	MaxBytes     int  `yaml:"max_bytes"`
	AllowEd25519 bool `yaml:"allow_ed25519"`
}

// Tier is a certificate lifetime class.
type Tier struct {
	MaxTTL     Duration `yaml:"max_ttl"`
	DefaultTTL Duration `yaml:"default_ttl"`
}

// Rule maps identities to a tier. Every non-empty list must have a pattern
// matching the caller (path.Match syntax).
type Rule struct {
	Tier            string   `yaml:"tier"`
	Namespaces      []string `yaml:"namespaces"`
	ServiceAccounts []string `yaml:"service_accounts"`
	SPIFFEIDs       []string `yaml:"spiffe_ids"`
	DNSNames        []string `yaml:"dns_names"`
	// Clusters are cluster ID patterns: the rule applies only to callers
	// of these clusters.
	Clusters []string `yaml:"clusters"`
}

// Vault says how to reach Vault and where the CA's keys and certificates
// live in it.
type Vault struct {
	// Address overrides VAULT_ADDR.
	Address      string    `yaml:"address"`
	Auth         VaultAuth `yaml:"auth"`
	TransitMount string    `yaml:"transit_mount"`
	KVMount      string    `yaml:"kv_mount"`
	KVPrefix     string    `yaml:"kv_prefix"`
	Timeout      Duration  `yaml:"timeout"`
	// CheckInterval is how often the daemon checks that Vault answers, is
	// unsealed and accepts its token (transitca_vault_up, /healthz).
	CheckInterval Duration `yaml:"check_interval"`
}

// VaultAuth is how the daemon logs in to Vault.
type VaultAuth struct {
	Method       string `yaml:"method"`
	Mount        string `yaml:"mount"`
	RoleID       string `yaml:"role_id"`
	SecretIDFile string `yaml:"secret_id_file"`
	Role         string `yaml:"role"`
	TokenFile    string `yaml:"token_file"`
}

// CA is the key hierarchy.
type CA struct {
	RootKey             string   `yaml:"root_key"`
	RootKeyType         string   `yaml:"root_key_type"`
	IntermediateMode    string   `yaml:"intermediate_mode"`
	IntermediateKey     string   `yaml:"intermediate_key"`
	IntermediateKeyType string   `yaml:"intermediate_key_type"`
	Organization        string   `yaml:"organization"`
	RootTTL             Duration `yaml:"root_ttl"`
	IntermediateTTL     Duration `yaml:"intermediate_ttl"`
}

// Default returns the configuration used when no file is given.
func Default() *Config {
	return &Config{
		DataDir:     "/var/lib/transitca",
		TrustDomain: "cluster.local",
		Vault: Vault{
			Auth:          VaultAuth{Method: issuer.VaultAuthToken},
			TransitMount:  "transit",
			KVMount:       "secret",
			KVPrefix:      "transitca",
			Timeout:       Duration(issuer.DefaultVaultTimeout),
			CheckInterval: Duration(5 * time.Second),
		},
		CA: CA{
			RootKey:             issuer.DefaultRootKey,
			RootKeyType:         string(issuer.KeyECDSAP256),
			IntermediateMode:    string(issuer.ModeMemory),
			IntermediateKey:     issuer.DefaultIntermediateKey,
			IntermediateKeyType: string(issuer.KeyECDSAP256),
			Organization:        "transitca",
			RootTTL:             Duration(issuer.DefaultRootTTL),
			IntermediateTTL:     Duration(issuer.DefaultIntermediateTTL),
		},
		Server: Server{
			Listen:        ":15012",
			MetricsListen: ":15014",
			TLS: TLS{
				MinVersion:  "1.3",
				DNSNames:    []string{"transitca.istio-system.svc", "localhost"},
				IPAddresses: []string{"127.0.0.1"},
				CertTTL:     Duration(24 * time.Hour),
			},
			ShutdownTimeout: Duration(15 * time.Second),
		},
		Auth: Auth{
			Clusters:  []string{"Kubernetes"},
			Audiences: []string{"istio-ca"},
			JWT:       JWT{Leeway: Duration(30 * time.Second)},
			TokenReview: TokenReview{
				APIServer: "https://kubernetes.default.svc",
				CAFile:    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
				TokenFile: "/var/run/secrets/kubernetes.io/serviceaccount/token",
				CacheTTL:  Duration(10 * time.Second),
				CacheSize: 10000,
			},
			ClientCertificates: true,
		},
		CSR: CSR{MaxBytes: 8 << 10},
		Log: Log{
			CheckpointKey:      "transitca-log",
			CheckpointEvery:    4096,
			CheckpointInterval: Duration(30 * time.Second),
		},
		Admin: Admin{Listen: "127.0.0.1:15015"},
		Kubernetes: Kubernetes{
			TrustBundle: TrustBundle{Enabled: true, Resync: Duration(time.Minute)},
			LeaderElection: LeaderElection{
				LeaseName:     "transitca",
				LeaseDuration: Duration(15 * time.Second),
				RenewDeadline: Duration(10 * time.Second),
				RetryPeriod:   Duration(2 * time.Second),
			},
			Istiod: defaultIstiod(),
		},
		Rotation: Rotation{
			Schedule:          RotationSchedule{CheckEvery: Duration(time.Hour)},
			StatePollInterval: Duration(issuer.DefaultStatePollInterval),
		},
		Limits: Limits{
			DenialsPerPeerPerSecond: 5,
			DenialBurst:             20,
			DenialWindow:            Duration(10 * time.Second),
			DenialPeers:             10000,
			MaxInFlight:             1024,
			IdentityBurst:           100,
			Identities:              10000,
		},
	}
}

// applyPolicyDefaults fills in the built-in tiers and rules when the file
// defines none.
func (c *Config) applyPolicyDefaults() {
	def := issuer.DefaultPolicy()
	if len(c.Tiers) == 0 {
		c.Tiers = map[string]Tier{}
		for name, t := range def.Tiers {
			c.Tiers[name] = Tier{MaxTTL: Duration(t.MaxTTL), DefaultTTL: Duration(t.DefaultTTL)}
		}
		if c.Policy == nil {
			for _, r := range def.Rules {
				c.Policy = append(c.Policy, Rule{Tier: r.Tier, Namespaces: r.Namespaces})
			}
		}
	}
	if c.DefaultTier == "" {
		c.DefaultTier = def.DefaultTier
	}
}

// IssuancePolicy returns the tier policy.
func (c *Config) IssuancePolicy() *issuer.Policy {
	p := &issuer.Policy{Tiers: map[string]issuer.Tier{}, DefaultTier: c.DefaultTier}
	for name, t := range c.Tiers {
		p.Tiers[name] = issuer.Tier{Name: name, MaxTTL: time.Duration(t.MaxTTL), DefaultTTL: time.Duration(t.DefaultTTL)}
	}
	for _, r := range c.Policy {
		p.Rules = append(p.Rules, issuer.Rule{
			Tier: r.Tier, Namespaces: r.Namespaces, ServiceAccounts: r.ServiceAccounts,
			SPIFFEIDs: r.SPIFFEIDs, DNSNames: r.DNSNames, Clusters: r.Clusters,
		})
	}
	return p
}

// Load reads a configuration file over the defaults. An empty path returns
// the defaults.
func Load(path string) (*Config, error) {
	c := Default()
	if path == "" {
		c.applyPolicyDefaults()
		return c, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	if err := Decode(f, c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c.applyPolicyDefaults()
	return c, nil
}

// Decode decodes YAML into c strictly: an unknown key is an error.
func Decode(r io.Reader, c *Config) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		return err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document")
	}
	return nil
}

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
	if t := issuer.KeyType(c.CA.RootKeyType); !t.Valid() || t == issuer.KeyEd25519 {
		bad("ca.root_key_type: %q is not one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096", c.CA.RootKeyType)
	}
	switch issuer.Mode(c.CA.IntermediateMode) {
	case issuer.ModeMemory:
	case issuer.ModeVault:
		if c.Dev {
			bad("ca.intermediate_mode: %q needs Vault; dev mode supports %q only", issuer.ModeVault, issuer.ModeMemory)
		}
		if t := issuer.KeyType(c.CA.IntermediateKeyType); !t.Valid() || t == issuer.KeyEd25519 {
			bad("ca.intermediate_key_type: %q is not one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096", c.CA.IntermediateKeyType)
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
	errs = append(errs, c.validateServing()...)
	errs = append(errs, c.validateKubernetes()...)
	errs = append(errs, c.validateIstiod()...)
	errs = append(errs, c.validateClusters()...)
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

func (c *Config) validateServing() []error {
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
	if !jwt && !c.Auth.TokenReview.Enabled && !c.Auth.ClientCertificates && !c.Dev && len(c.Clusters) == 0 {
		bad("auth: no way to authenticate callers: configure jwt, tokenreview or client_certificates")
	}
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
	for _, id := range c.Admin.Identities {
		if !strings.HasPrefix(id, "spiffe://") {
			bad("admin.identities: %q is not a SPIFFE ID", id)
		}
	}
	if c.CSR.MaxBytes < 512 || c.CSR.MaxBytes > 1<<20 {
		bad("csr.max_bytes: %d is outside 512 to 1048576", c.CSR.MaxBytes)
	}
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
	if id := c.Rotation.DrillIdentity; id != "" && !strings.HasPrefix(id, "spiffe://"+c.TrustDomain+"/") {
		bad("rotation.drill_identity: %q is not a SPIFFE ID in trust domain %s", id, c.TrustDomain)
	}
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
	return append(errs, c.validateOverload()...)
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

// KubernetesEnabled reports whether the Kubernetes features are on: as
// kubernetes.enabled says, or, when it is unset, when a kubeconfig is
// given or the daemon runs in a pod.
func (c *Config) KubernetesEnabled(inCluster bool) bool {
	if e := c.Kubernetes.Enabled; e != nil {
		return *e
	}
	return c.Kubernetes.Kubeconfig != "" || inCluster
}

// VaultAuth returns the issuer's view of the Vault auth settings.
func (c *Config) VaultAuth() issuer.VaultAuth {
	a := c.Vault.Auth
	return issuer.VaultAuth{
		Method:       a.Method,
		Mount:        a.Mount,
		RoleID:       a.RoleID,
		SecretIDFile: a.SecretIDFile,
		Role:         a.Role,
		TokenFile:    a.TokenFile,
	}
}

// IssuerOptions returns the CA hierarchy options.
func (c *Config) IssuerOptions() issuer.Options {
	return issuer.Options{
		RootKey:             c.CA.RootKey,
		RootKeyType:         issuer.KeyType(c.CA.RootKeyType),
		IntermediateKey:     c.CA.IntermediateKey,
		IntermediateKeyType: issuer.KeyType(c.CA.IntermediateKeyType),
		Mode:                issuer.Mode(c.CA.IntermediateMode),
		Organization:        c.CA.Organization,
		RootTTL:             time.Duration(c.CA.RootTTL),
		IntermediateTTL:     time.Duration(c.CA.IntermediateTTL),
		StatePollInterval:   time.Duration(c.Rotation.StatePollInterval),
		Dev:                 c.Dev,
	}
}

// Duration is a time.Duration written in YAML as Go duration text, with
// "d" for days allowed as well: "720h", "30d", "1d12h".
type Duration time.Duration

// UnmarshalYAML parses duration text.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes duration text.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Std returns the time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String returns duration text.
func (d Duration) String() string { return time.Duration(d).String() }

// ParseDuration parses Go duration text with an optional leading "<n>d".
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n < 0 {
			return 0, fmt.Errorf("duration %q: bad day count", s)
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want Go duration text such as 720h, 30d or 1d12h", s)
	}
	return days + v, nil
}
