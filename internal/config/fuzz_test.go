package config

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecode feeds the configuration loader arbitrary YAML: it must never
// panic; a file it accepts validates or names what is wrong, and decoding
// is strict (an unknown key is an error).
func FuzzDecode(f *testing.F) {
	for _, name := range []string{"dev.yaml", "vault-kubernetes.yaml", "vault-intermediate.yaml"} {
		if b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "config", name)); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("dev: true\ndata_dir: /tmp/x\n"))
	f.Add([]byte("limits:\n  max_in_flight: -1\n  identity_requests_per_second: .nan\n"))
	f.Add([]byte("server:\n  shutdown_timeout: 1ns\n"))
	f.Add([]byte("unknown_key: 1\n"))
	f.Add([]byte("tiers:\n  service: {max_ttl: 1h, default_ttl: 2h}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Default()
		if err := Decode(bytes.NewReader(data), c); err != nil {
			return
		}
		c.applyPolicyDefaults()
		_ = c.Validate()
	})
}
