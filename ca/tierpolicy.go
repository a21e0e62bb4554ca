package ca

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// tierPolicyKey names, in the detail of a "start" admin entry, the longest
// lifetime each tier may grant when that daemon started: what an auditor
// checks every later issuance of the log against.
const tierPolicyKey = "tier_max_ttl="

// TierPolicyDetail formats the tiers' maximum lifetimes for a start entry:
// tier_max_ttl="istiod=24h0m0s privileged=168h0m0s …", sorted by tier.
func TierPolicyDetail(maxTTL map[string]time.Duration) string {
	parts := make([]string, 0, len(maxTTL))
	for _, name := range slices.Sorted(maps.Keys(maxTTL)) {
		parts = append(parts, name+"="+maxTTL[name].String())
	}
	return tierPolicyKey + strconv.Quote(strings.Join(parts, " "))
}

// ParseTierPolicy reads the tiers' maximum lifetimes back from a start
// entry's detail; ok is false when the detail records none (a log written
// before start entries did).
func ParseTierPolicy(detail string) (maxTTL map[string]time.Duration, ok bool, err error) {
	i := strings.Index(detail, tierPolicyKey)
	if i < 0 {
		return nil, false, nil
	}
	quoted, err := strconv.QuotedPrefix(detail[i+len(tierPolicyKey):])
	if err != nil {
		return nil, false, fmt.Errorf("start entry: %s is not a quoted string: %w", tierPolicyKey, err)
	}
	text, _ := strconv.Unquote(quoted)
	maxTTL = map[string]time.Duration{}
	for _, f := range strings.Fields(text) {
		name, v, found := strings.Cut(f, "=")
		d, perr := time.ParseDuration(v)
		if !found || perr != nil || name == "" {
			return nil, false, fmt.Errorf("start entry: %s%s: %q is not tier=duration", tierPolicyKey, quoted, f)
		}
		maxTTL[name] = d
	}
	return maxTTL, true, nil
}
