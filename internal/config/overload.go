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
	if l.MaxQueued < 0 || l.MaxQueued > 1e6 {
		bad("limits.max_queued: %d is outside 0 (no queue) to 1000000", l.MaxQueued)
	}
	// A request must be done within 30 s of its arrival (the service's
	// request timeout): a queued one needs some of that left.
	if d := l.QueueWait; d < Duration(time.Millisecond) || d > Duration(20*time.Second) {
		bad("limits.queue_wait: %v is outside 1ms to 20s", d)
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
