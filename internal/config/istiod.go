package config

import (
	"fmt"
	"time"

	"github.com/transitca/transitca/internal/spiffeid"
	"github.com/transitca/transitca/issuer"
)

// Istiod is kubernetes.istiod: istiod's serving certificate. With
// ENABLE_CA_SERVER=false istiod issues itself nothing and reads its serving
// certificate from the Secret istiod-tls, which transitca's leader writes
// and keeps current (renewed at half-life, and when the trust bundle or the
// issuing intermediate changes; repaired when edited or deleted).
type Istiod struct {
	// Enabled writes the Secret. It takes effect only where the daemon has
	// a Kubernetes client, and only on the leader.
	Enabled bool `yaml:"enabled"`
	// Namespace is istiod's namespace, where the Secret is written.
	Namespace string `yaml:"namespace"`
	// ServiceAccount is istiod's service account, the certificate's
	// identity spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>.
	// The default, istiod, is the name the istiod chart gives it (a
	// revisioned control plane runs as istiod-<revision>; releases before
	// 1.10 used istiod-service-account).
	ServiceAccount string `yaml:"service_account"`
	// Revisions add istiod-<revision>.<namespace>.svc for each revisioned
	// control plane; istiod.<namespace>.svc (the default revision) is
	// always named.
	Revisions []string `yaml:"revisions"`
	// ExtraDNSNames are further DNS names for the certificate.
	ExtraDNSNames []string `yaml:"extra_dns_names"`
	// CertTTL is the certificate's lifetime, at most the privileged tier's
	// max_ttl.
	CertTTL Duration `yaml:"cert_ttl"`
}

// defaultIstiod returns the defaults of kubernetes.istiod.
func defaultIstiod() Istiod {
	return Istiod{
		Enabled:        true,
		Namespace:      "istio-system",
		ServiceAccount: "istiod",
		CertTTL:        Duration(24 * time.Hour),
	}
}

// IstiodSPIFFEID returns istiod's identity.
func (c *Config) IstiodSPIFFEID() string {
	i := c.Kubernetes.Istiod
	return spiffeid.Workload(c.TrustDomain, i.Namespace, i.ServiceAccount)
}

func (c *Config) validateIstiod() []error {
	i := c.Kubernetes.Istiod
	if !i.Enabled {
		return nil
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !isDNSLabel(i.Namespace) {
		bad("kubernetes.istiod.namespace: %q is not a namespace name (a lowercase DNS label)", i.Namespace)
	}
	if !isDNSName(i.ServiceAccount) {
		bad("kubernetes.istiod.service_account: %q is not a service account name (a lowercase DNS subdomain)", i.ServiceAccount)
	}
	seen := map[string]bool{}
	for _, r := range i.Revisions {
		switch {
		case !isDNSLabel("istiod-" + r):
			bad("kubernetes.istiod.revisions: %q does not make istiod-%s a Service name (a lowercase DNS label of at most 63 bytes)", r, r)
		case seen[r]:
			bad("kubernetes.istiod.revisions: %q is listed twice", r)
		}
		seen[r] = true
	}
	for _, n := range i.ExtraDNSNames {
		if !isDNSName(n) {
			bad("kubernetes.istiod.extra_dns_names: %q is not a lowercase DNS name", n)
		}
	}
	if i.CertTTL < Duration(time.Minute) {
		bad("kubernetes.istiod.cert_ttl: %v is shorter than a minute", i.CertTTL)
	}
	if t, ok := c.Tiers[issuer.TierPrivileged]; ok && i.CertTTL > t.MaxTTL {
		bad("kubernetes.istiod.cert_ttl: %v is longer than tiers.privileged.max_ttl %v", i.CertTTL, t.MaxTTL)
	}
	return errs
}

// isDNSLabel reports whether s matches [a-z0-9]([-a-z0-9]*[a-z0-9])? and is
// at most 63 bytes: a namespace or Service name. It is the namespace rule
// of spiffeid, which Service names share.
func isDNSLabel(s string) bool { return spiffeid.ValidNamespace(s) }

// isDNSName reports whether s is dot-separated DNS labels of at most 253
// bytes in all: the service account rule of spiffeid (an RFC 1123 DNS
// subdomain), which the DNS names of istiod's certificate share.
func isDNSName(s string) bool { return spiffeid.ValidServiceAccount(s) }
