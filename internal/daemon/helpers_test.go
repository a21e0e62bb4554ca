package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/transitca/transitca/internal/vaulttest"
)

func TestMain(m *testing.M) { vaulttest.Main(m) }

// writeConfig writes a configuration file that points at env's mounts.
func writeConfig(t *testing.T, env *vaulttest.Env, extra string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "transitca.yaml")
	cfg := "data_dir: " + t.TempDir() + "\nvault:\n  transit_mount: " + env.Transit + "\n  kv_mount: " + env.KV + "\n" + extra
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
