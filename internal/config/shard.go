package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"time"
)

// ShardAuto is the log.shard that names a replica's shard after its pod
// ($POD_NAME, which the Helm chart sets from the pod's name) or, outside
// Kubernetes, after the host name.
const ShardAuto = "auto"

// shardName is what a shard name may be: a DNS label or a host name, which
// is what pod names and host names are.
var shardName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

// LogShard returns this replica's shard name, "" when the log is not
// sharded (one replica).
func (c *Config) LogShard() string {
	if c.Log.Shard != ShardAuto {
		return c.Log.Shard
	}
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	n, err := os.Hostname()
	if err != nil {
		return ""
	}
	return n
}

// LogOrigin returns the origin line of this replica's log checkpoints:
// LogKeyName, then "/<shard>" when the log is a shard. Each replica's log
// thus has its own name, and its own latest checkpoint in the witness,
// which is kept under the origin.
func (c *Config) LogOrigin() string {
	if s := c.LogShard(); s != "" {
		return c.LogKeyName() + "/" + s
	}
	return c.LogKeyName()
}

// validateReplicas checks the settings that let replicas share a Vault:
// the shard name and how often the shared rotation state is read.
func (c *Config) validateReplicas() []error {
	var errs []error
	if err := c.validateShard(); err != nil {
		errs = append(errs, err)
	}
	if p := c.Rotation.StatePollInterval; p < Duration(time.Second) || p > Duration(time.Hour) {
		errs = append(errs, fmt.Errorf("rotation.state_poll_interval: %v is not between 1s and 1h", time.Duration(p)))
	}
	return errs
}

func (c *Config) validateShard() error {
	if c.Log.Shard == "" {
		return nil
	}
	s := c.LogShard()
	if s == "" {
		return errors.New("log.shard: auto, but neither $POD_NAME nor the host name is set")
	}
	if !shardName.MatchString(s) {
		from := ""
		if c.Log.Shard == ShardAuto {
			from = " (from $POD_NAME or the host name)"
		}
		return fmt.Errorf("log.shard: %q%s is not a shard name: 1 to 63 letters, digits, '.', '-' or '_', starting and ending with a letter or digit", s, from)
	}
	return nil
}
