// Package config loads transitca's one YAML configuration file: decoded
// strictly (an unknown key is an error), filled with defaults, and checked by
// Validate, whose messages name the offending key.
package config

import "time"

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
	// MeshPolicy exports the mesh's mTLS policy as metrics; see
	// meshpolicy.go.
	MeshPolicy MeshPolicy `yaml:"mesh_policy"`
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
	// share one bucket, recorded under the peer name "other". Four times
	// as many distinct reasons of counted denials are held at once (see
	// ca.DenialLimits).
	DenialPeers int `yaml:"denial_peers"`
	// MaxInFlight caps the certificate requests handled at once; beyond
	// it a request waits in the queue (MaxQueued, QueueWait), and beyond
	// the queue it is refused at once with ResourceExhausted. 0 is no cap.
	MaxInFlight int `yaml:"max_in_flight"`
	// MaxQueued caps the certificate requests waiting, first come first
	// served, for a place among MaxInFlight. 0 refuses every request
	// beyond MaxInFlight at once.
	MaxQueued int `yaml:"max_queued"`
	// QueueWait is how long a queued request waits for a place before it
	// is refused with ResourceExhausted.
	QueueWait Duration `yaml:"queue_wait"`
	// IdentityRequestsPerSecond is the sustained rate of certificate
	// requests one authenticated identity may make; beyond it (and
	// IdentityBurst) a request is refused with ResourceExhausted. 0 is no
	// limit.
	IdentityRequestsPerSecond float64 `yaml:"identity_requests_per_second"`
	// IdentityBurst is how many requests an identity may make at once.
	IdentityBurst int `yaml:"identity_burst"`
	// Identities caps the identities whose rate is tracked at once; beyond
	// it, a new identity takes the place of the one that asked least
	// recently.
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

// Admin is the admin API listener and who may call it. A caller is
// authenticated by a client certificate that chains to transitca's roots;
// its SPIFFE ID gives its role. An admin identity is issued (by
// CreateCertificate) only to callers of the clusters of Clusters.
type Admin struct {
	// Listen is the admin gRPC address; loopback by default, "" disables.
	Listen string `yaml:"listen"`
	// Identities are the operators: the SPIFFE IDs whose client
	// certificates may call every admin method, those that change the CA
	// (rotation, revocation, drills) included.
	Identities []string `yaml:"identities"`
	// CallTimeout ends every admin call, a Backup stream included, this
	// long after it began; an admin connection is closed at twice this
	// age.
	CallTimeout Duration `yaml:"call_timeout"`
	// Readers are the SPIFFE IDs whose client certificates may call the
	// read-only admin methods: the log's queries, entries, checkpoints,
	// proofs, verification and backups, and the CA's status.
	Readers []string `yaml:"readers"`
	// Clusters are the cluster IDs whose callers may be issued a
	// certificate for an admin identity (of Identities or Readers). Empty
	// means the CA's own cluster: see AdminClusters.
	Clusters []string `yaml:"clusters"`
}

// Server is the gRPC and metrics listeners and the TLS they serve.
type Server struct {
	// Listen is the gRPC address of IstioCertificateService.
	Listen string `yaml:"listen"`
	// MetricsListen serves /metrics (Prometheus) and /healthz over HTTP;
	// empty disables it.
	MetricsListen string `yaml:"metrics_listen"`
	// Pprof adds Go's profiles under /debug/pprof/ to the metrics
	// listener, answered to loopback callers only. Off by default.
	Pprof bool `yaml:"pprof"`
	TLS   TLS  `yaml:"tls"`
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
	// AllowProtectedImpersonation are SPIFFE ID patterns (path.Match
	// syntax) of protected identities a trusted node agent may still ask
	// for. Protected are the admin identities, istiod's identities and the
	// identities of the privileged tier; a node agent is never issued one
	// that no pattern here matches.
	AllowProtectedImpersonation []string `yaml:"allow_protected_impersonation"`
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
	// Issuers are the iss values of the cluster's service-account tokens
	// (kube-apiserver's --service-account-issuer, all of them while it
	// changes). A token naming another issuer is refused without a
	// review; empty accepts any issuer. Every token must be a well-formed
	// signed JWT to be reviewed either way.
	Issuers []string `yaml:"issuers"`
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
