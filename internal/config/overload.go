package config

import (
	"fmt"
	"time"
)

// validateOverload checks the settings that bound what the daemon takes on
// and how it lets go: the overload limits, the Vault check and the
// shutdown budget.
func (c *Config) validateOverload() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	l := c.Limits
	if l.MaxInFlight < 0 || l.MaxInFlight > 1e6 {
		bad("limits.max_in_flight: %d is outside 0 (no cap) to 1000000", l.MaxInFlight)
	}
	if r := l.IdentityRequestsPerSecond; !(r >= 0 && r <= 1e6) {
		bad("limits.identity_requests_per_second: %v is outside 0 (no limit) to 1000000", r)
	}
	if b := l.IdentityBurst; b < 1 || b > 1e6 {
		bad("limits.identity_burst: %d is outside 1 to 1000000", b)
	}
	if n := l.Identities; n < 1 || n > 1e6 {
		bad("limits.identities: %d is outside 1 to 1000000", n)
	}
	if d := c.Vault.CheckInterval; d < Duration(time.Second) || d > Duration(10*time.Minute) {
		bad("vault.check_interval: %v is outside 1s to 10m", d)
	}
	if d := c.Server.ShutdownTimeout; d < Duration(time.Second) || d > Duration(10*time.Minute) {
		bad("server.shutdown_timeout: %v is outside 1s to 10m", d)
	}
	return errs
}
