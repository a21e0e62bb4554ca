package issuer

import (
	"errors"
	"fmt"
	"net"
	"path"
	"time"
)

// Tier is a class of workload with its own certificate lifetime.
type Tier struct {
	Name string
	// MaxTTL caps the lifetime a caller may ask for.
	MaxTTL time.Duration
	// DefaultTTL is granted when the caller asks for none.
	DefaultTTL time.Duration
}

// Grant returns the lifetime granted for a requested one: the tier's default
// when none is requested (zero or negative), else the request clamped to the
// tier's maximum.
func (t Tier) Grant(requested time.Duration) time.Duration {
	if requested <= 0 {
		return min(t.DefaultTTL, t.MaxTTL)
	}
	return min(requested, t.MaxTTL)
}

// Rule maps identities to a tier and to the DNS names they may ask for. A
// rule matches when every non-empty list has a pattern matching the caller
// (path.Match syntax: "*" matches within one name).
type Rule struct {
	Tier            string
	Namespaces      []string
	ServiceAccounts []string
	SPIFFEIDs       []string
	// Clusters are the cluster IDs (the clusterid a caller presented) the
	// rule applies to. The CA's own certificates have no cluster: a rule
	// that lists clusters never matches them.
	Clusters []string
	// DNSNames lists the DNS SANs that matching identities may ask for
	// (for example istiod's serving certificate). Patterns are compared
	// literally: a CSR may carry "*.example" only if "*.example" is listed.
	DNSNames []string
}

func (r *Rule) matches(spiffeID, ns, sa, cluster string) bool {
	return anyMatch(r.Namespaces, ns) && anyMatch(r.ServiceAccounts, sa) && anyMatch(r.SPIFFEIDs, spiffeID) && anyMatch(r.Clusters, cluster)
}

func anyMatch(patterns []string, s string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if ok, _ := path.Match(p, s); ok {
			return true
		}
	}
	return false
}

// Policy chooses a workload's tier: the first matching rule wins, and a
// caller no rule matches gets DefaultTier.
type Policy struct {
	Tiers       map[string]Tier
	Rules       []Rule
	DefaultTier string
}

// The default tiers.
const (
	TierService    = "service"
	TierPrivileged = "privileged"
)

// DefaultPolicy returns the built-in policy: the istio-system namespace is
// privileged (7 days at most), everything else is a service (30 days at
// most); both default to 24 hours, istio-agent's own default request.
func DefaultPolicy() *Policy {
	return &Policy{
		Tiers: map[string]Tier{
			TierService:    {Name: TierService, MaxTTL: 30 * 24 * time.Hour, DefaultTTL: 24 * time.Hour},
			TierPrivileged: {Name: TierPrivileged, MaxTTL: 7 * 24 * time.Hour, DefaultTTL: 24 * time.Hour},
		},
		Rules:       []Rule{{Tier: TierPrivileged, Namespaces: []string{"istio-system"}}},
		DefaultTier: TierService,
	}
}

// Validate checks that every rule names a known tier and every pattern is
// well-formed.
func (p *Policy) Validate() error {
	var errs []error
	if len(p.Tiers) == 0 {
		errs = append(errs, errors.New("no tiers defined"))
	}
	for name, t := range p.Tiers {
		if t.MaxTTL <= 0 {
			errs = append(errs, fmt.Errorf("tier %q: max_ttl must be positive", name))
		}
		if t.DefaultTTL <= 0 || t.DefaultTTL > t.MaxTTL {
			errs = append(errs, fmt.Errorf("tier %q: default_ttl must be positive and at most max_ttl", name))
		}
	}
	if _, ok := p.Tiers[p.DefaultTier]; !ok {
		errs = append(errs, fmt.Errorf("default tier %q is not defined", p.DefaultTier))
	}
	for i, r := range p.Rules {
		if _, ok := p.Tiers[r.Tier]; !ok {
			errs = append(errs, fmt.Errorf("rule %d: tier %q is not defined", i, r.Tier))
		}
		for _, list := range [][]string{r.Namespaces, r.ServiceAccounts, r.SPIFFEIDs, r.Clusters} {
			for _, pat := range list {
				if _, err := path.Match(pat, ""); err != nil {
					errs = append(errs, fmt.Errorf("rule %d: bad pattern %q", i, pat))
				}
			}
		}
		for _, d := range r.DNSNames {
			if d == "" || net.ParseIP(d) != nil {
				errs = append(errs, fmt.Errorf("rule %d: %q is not a DNS name", i, d))
			}
		}
	}
	return errors.Join(errs...)
}

// Decision is what the policy grants an identity.
type Decision struct {
	Tier Tier
	// DNSNames are the DNS SANs the identity may ask for.
	DNSNames []string
}

// Decide returns the tier and permissions for an identity of a cluster
// (empty for the CA's own certificates).
func (p *Policy) Decide(spiffeID, namespace, serviceAccount, cluster string) Decision {
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.matches(spiffeID, namespace, serviceAccount, cluster) {
			return Decision{Tier: p.Tiers[r.Tier], DNSNames: r.DNSNames}
		}
	}
	return Decision{Tier: p.Tiers[p.DefaultTier]}
}
