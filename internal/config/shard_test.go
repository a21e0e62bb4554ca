package config

import (
	"os"
	"strings"
	"testing"
)

// Each replica's log is named by its shard: the origin gets the shard's
// name, the checkpoint key's name stays the CA's, so one verifier key
// checks every shard.
func TestLogShard(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name       string
		yaml       string
		podName    string
		wantShard  string
		wantOrigin string
		wantKey    string
	}{
		{"no shard", "", "", "", "transitca/cluster.local", "transitca/cluster.local"},
		{"named", "log: {shard: transitca-1}", "", "transitca-1", "transitca/cluster.local/transitca-1", "transitca/cluster.local"},
		{"named with origin", "log: {shard: r2, origin: ca.example/mesh}", "", "r2", "ca.example/mesh/r2", "ca.example/mesh"},
		{"auto from the pod name", "log: {shard: auto}", "transitca-2", "transitca-2", "transitca/cluster.local/transitca-2", "transitca/cluster.local"},
		{"auto from the host name", "log: {shard: auto}", "", host, "transitca/cluster.local/" + host, "transitca/cluster.local"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("POD_NAME", tc.podName)
			c, err := load(t, tc.yaml)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			if got := c.LogShard(); got != tc.wantShard {
				t.Errorf("LogShard() = %q, want %q", got, tc.wantShard)
			}
			if got := c.LogOrigin(); got != tc.wantOrigin {
				t.Errorf("LogOrigin() = %q, want %q", got, tc.wantOrigin)
			}
			if got := c.LogKeyName(); got != tc.wantKey {
				t.Errorf("LogKeyName() = %q, want %q", got, tc.wantKey)
			}
		})
	}
}

func TestLogShardRejects(t *testing.T) {
	cases := []struct {
		name, yaml, podName, want string
	}{
		{"slash", "log: {shard: a/b}", "", `log.shard: "a/b" is not a shard name`},
		{"space", "log: {shard: \"a b\"}", "", `log.shard: "a b"`},
		{"plus", "log: {shard: a+b}", "", `log.shard: "a+b"`},
		{"too long", "log: {shard: " + strings.Repeat("a", 64) + "}", "", "is not a shard name"},
		{"leading dash", "log: {shard: -a}", "", `"-a" is not a shard name`},
		{"bad pod name", "log: {shard: auto}", "x/y", `"x/y" (from $POD_NAME or the host name)`},
		{"poll too often", "rotation: {state_poll_interval: 100ms}", "", "rotation.state_poll_interval: 100ms is not between 1s and 1h"},
		{"poll off", "rotation: {state_poll_interval: 0s}", "", "rotation.state_poll_interval: 0s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("POD_NAME", tc.podName)
			c, err := load(t, tc.yaml)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
