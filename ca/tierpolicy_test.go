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

// A tier name holding "=" reads back, and does not stop the other tiers
// from reading back.
func TestTierPolicyNameWithEquals(t *testing.T) {
	want := map[string]time.Duration{"a=b": 1080 * time.Hour, "service": 720 * time.Hour, "privileged": 168 * time.Hour}
	got, ok, err := ParseTierPolicy(`version=v1 ` + TierPolicyDetail(want) + ` root=abc`)
	if err != nil || !ok || !maps.Equal(got, want) {
		t.Fatalf("ParseTierPolicy = %v, %v, %v; want %v", got, ok, err, want)
	}
	got, _, err = ParseTierPolicy(`tier_max_ttl="service=720h0m0s odd privileged=168h0m0s"`)
	if err == nil || got["service"] != 720*time.Hour || got["privileged"] != 168*time.Hour {
		t.Fatalf("one bad field: %v, %v; want the error and the other tiers", got, err)
	}
}

// DetailFields reads quoted, JSON and bare values, and a start record
// round-trips through a detail with odd tier names.
func TestStartRecordDetail(t *testing.T) {
	f := DetailFields(`a=1 b="x y \"z\"" word c={"k":"v } w=2"} d=4`)
	if f["a"] != "1" || f["b"] != `x y "z"` || f["c"] != `{"k":"v } w=2"}` || f["d"] != "4" || len(f) != 4 {
		t.Fatalf("DetailFields = %q", f)
	}
	r := &StartRecord{Version: "v1", Tiers: map[string]TierRecord{`x'$(touch${IFS}/tmp/p)'`: {MaxTTL: "1h0m0s"}, "a=b c": {MaxTTL: "2h0m0s"}},
		Rules: []RuleRecord{{Tier: "a=b c", Namespaces: []string{"record={"}}}}
	detail, err := r.Detail(`version=v1 ` + TierPolicyDetail(map[string]time.Duration{"a=b c": 2 * time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := ParseStartRecord(detail)
	if err != nil || !ok || got.Tiers["a=b c"].MaxTTL != "2h0m0s" || got.Rules[0].Namespaces[0] != "record={" {
		t.Fatalf("ParseStartRecord(%s) = %+v, %v, %v", detail, got, ok, err)
	}
	if ttl, err := got.MaxTTLs(); err != nil || ttl[`x'$(touch${IFS}/tmp/p)'`] != time.Hour {
		t.Fatalf("MaxTTLs = %v, %v", ttl, err)
	}
}
