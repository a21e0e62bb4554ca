package spiffeid

import (
	"strings"
	"testing"
)

func TestBuild(t *testing.T) {
	if got := Workload("cluster.local", "shop", "web"); got != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("Workload = %s", got)
	}
	if got := New("cluster.local", "transitca", "serving"); got != "spiffe://cluster.local/transitca/serving" {
		t.Errorf("New = %s", got)
	}
}

func TestValidTrustDomain(t *testing.T) {
	for _, td := range []string{"cluster.local", "mesh-1.example_corp"} {
		if err := ValidTrustDomain(td); err != nil {
			t.Errorf("%s: %v", td, err)
		}
	}
	for td, want := range map[string]string{
		"":                       "empty",
		"Cluster.local":          "'C'",
		"a/b":                    "'/'",
		strings.Repeat("a", 256): "more than 255",
	} {
		if err := ValidTrustDomain(td); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidTrustDomain(%.20q) = %v; want an error naming %s", td, err, want)
		}
	}
}

func TestNames(t *testing.T) {
	if !ValidNamespace("istio-system") || ValidNamespace("-x") || ValidNamespace("a.b") || ValidNamespace(strings.Repeat("a", 64)) {
		t.Error("namespace rules: an RFC 1123 DNS label")
	}
	if !ValidServiceAccount("a.b-c") || ValidServiceAccount("a..b") || ValidServiceAccount("A") || ValidServiceAccount("") {
		t.Error("service account rules: an RFC 1123 DNS subdomain")
	}
}
