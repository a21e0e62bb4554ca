package issuer_test

import (
	"testing"
	"time"

	"github.com/transitca/transitca/issuer"
)

func TestTierGrant(t *testing.T) {
	tier := issuer.Tier{Name: "service", MaxTTL: 30 * 24 * time.Hour, DefaultTTL: 24 * time.Hour}
	cases := []struct {
		name      string
		requested time.Duration
		want      time.Duration
	}{
		{"absent gets default", 0, 24 * time.Hour},
		{"negative gets default", -time.Second, 24 * time.Hour},
		{"short is kept", time.Hour, time.Hour},
		{"at max is kept", 30 * 24 * time.Hour, 30 * 24 * time.Hour},
		{"above max is clamped", 365 * 24 * time.Hour, 30 * 24 * time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tier.Grant(tc.requested); got != tc.want {
				t.Fatalf("Grant(%v) = %v, want %v", tc.requested, got, tc.want)
			}
		})
	}
}

func TestPolicyDecide(t *testing.T) {
	p := issuer.DefaultPolicy()
	p.Rules = append([]issuer.Rule{
		{Tier: issuer.TierPrivileged, SPIFFEIDs: []string{"spiffe://cluster.local/ns/payments/sa/*"}},
		{Tier: issuer.TierPrivileged, Namespaces: []string{"ops"}, Clusters: []string{"east-*"}},
		{Tier: issuer.TierPrivileged, Namespaces: []string{"istio-system"}, ServiceAccounts: []string{"istiod"}, DNSNames: []string{"istiod.istio-system.svc"}},
	}, p.Rules...)
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, id, ns, sa string
		cluster          string
		tier             string
		dns              int
	}{
		{"payments by spiffe pattern", "spiffe://cluster.local/ns/payments/sa/api", "payments", "api", "", issuer.TierPrivileged, 0},
		{"ops in an east cluster", "spiffe://cluster.local/ns/ops/sa/x", "ops", "x", "east-1", issuer.TierPrivileged, 0},
		{"ops in another cluster", "spiffe://cluster.local/ns/ops/sa/x", "ops", "x", "west-1", issuer.TierService, 0},
		{"ops in no cluster (the CA's own)", "spiffe://cluster.local/ns/ops/sa/x", "ops", "x", "", issuer.TierService, 0},
		{"istiod gets its DNS name", "spiffe://cluster.local/ns/istio-system/sa/istiod", "istio-system", "istiod", "Kubernetes", issuer.TierPrivileged, 1},
		{"istio-system gateway by namespace", "spiffe://cluster.local/ns/istio-system/sa/gw", "istio-system", "gw", "Kubernetes", issuer.TierPrivileged, 0},
		{"everything else is a service", "spiffe://cluster.local/ns/shop/sa/web", "shop", "web", "Kubernetes", issuer.TierService, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := p.Decide(tc.id, tc.ns, tc.sa, tc.cluster)
			if d.Tier.Name != tc.tier || len(d.DNSNames) != tc.dns {
				t.Fatalf("got tier %s dns %v", d.Tier.Name, d.DNSNames)
			}
		})
	}
	bad := &issuer.Policy{Tiers: p.Tiers, DefaultTier: "gold", Rules: []issuer.Rule{{Tier: "silver", Namespaces: []string{"[bad"}}}}
	if err := bad.Validate(); err == nil {
		t.Fatal("a policy with unknown tiers and a bad pattern validated")
	}
}
