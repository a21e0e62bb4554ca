package config

import (
	"time"

	"github.com/transitca/transitca/issuer"
)

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
		Admin: Admin{Listen: "127.0.0.1:15015", CallTimeout: Duration(10 * time.Minute)},
		Kubernetes: Kubernetes{
			TrustBundle: TrustBundle{Enabled: true, Resync: Duration(time.Minute)},
			LeaderElection: LeaderElection{
				LeaseName:     "transitca",
				LeaseDuration: Duration(15 * time.Second),
				RenewDeadline: Duration(10 * time.Second),
				RetryPeriod:   Duration(2 * time.Second),
			},
			Istiod:     defaultIstiod(),
			MeshPolicy: defaultMeshPolicy(),
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
			MaxQueued:               1024,
			QueueWait:               Duration(10 * time.Second),
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
