package ca

import (
	"errors"
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
// before start entries did). A field that does not read as tier=duration
// is reported in err and the others are still returned: one odd tier name
// leaves the other tiers checked. A duration never holds "=", so a name
// that does is read up to the last "=".
func ParseTierPolicy(detail string) (maxTTL map[string]time.Duration, ok bool, err error) {
	text, ok := DetailFields(detail)[strings.TrimSuffix(tierPolicyKey, "=")]
	if !ok {
		if strings.Contains(detail, tierPolicyKey) {
			return nil, false, fmt.Errorf("start entry: %s is not a quoted string", tierPolicyKey)
		}
		return nil, false, nil
	}
	maxTTL = map[string]time.Duration{}
	var errs []error
	for _, f := range strings.Fields(text) {
		i := strings.LastIndexByte(f, '=')
		if i <= 0 {
			errs = append(errs, fmt.Errorf("start entry: %s: %q is not tier=duration", tierPolicyKey, f))
			continue
		}
		d, perr := time.ParseDuration(f[i+1:])
		if perr != nil {
			errs = append(errs, fmt.Errorf("start entry: %s: %q is not tier=duration", tierPolicyKey, f))
			continue
		}
		maxTTL[f[:i]] = d
	}
	return maxTTL, true, errors.Join(errs...)
}
