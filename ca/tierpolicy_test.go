package ca

import (
	"maps"
	"strings"
	"testing"
	"time"
)

// The tier policy recorded in a start entry reads back as written, from
// among the other fields of the detail.
func TestTierPolicyRoundTrip(t *testing.T) {
	want := map[string]time.Duration{"service": 720 * time.Hour, "privileged": 168 * time.Hour, "serving": 24 * time.Hour}
	detail := `version=v1 keys="a b" ` + TierPolicyDetail(want) + ` root=abc`
	if !strings.Contains(detail, `tier_max_ttl="privileged=168h0m0s service=720h0m0s serving=24h0m0s"`) {
		t.Fatalf("detail %q", detail)
	}
	got, ok, err := ParseTierPolicy(detail)
	if err != nil || !ok || !maps.Equal(got, want) {
		t.Fatalf("ParseTierPolicy = %v, %v, %v; want %v", got, ok, err, want)
	}
	if _, ok, err := ParseTierPolicy("version=v0 root=abc"); ok || err != nil {
		t.Fatalf("a detail without a policy: ok=%v err=%v", ok, err)
	}
	for _, bad := range []string{`tier_max_ttl="service=forever"`, `tier_max_ttl=service`, `tier_max_ttl="=1h"`} {
		if _, _, err := ParseTierPolicy(bad); err == nil {
			t.Errorf("ParseTierPolicy(%q) accepted it", bad)
		}
	}
}
