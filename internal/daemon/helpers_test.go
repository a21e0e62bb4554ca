package daemon

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
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

// openBackend opens cfg's key backend and makes sure its checkpoint key
// exists.
func openBackend(t *testing.T, cfg *config.Config, log *slog.Logger) *Backend {
	t.Helper()
	ctx := context.Background()
	b, err := OpenBackend(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Keys.EnsureKey(ctx, cfg.Log.CheckpointKey, issuer.KeyEd25519); err != nil {
		t.Fatal(err)
	}
	return b
}

// appendTestEntry appends an admin entry to l.
func appendTestEntry(t *testing.T, l *store.Log) {
	t.Helper()
	if _, err := l.Append(context.Background(), &store.Entry{Kind: store.KindAdmin, Action: "test", Actor: "alice"}); err != nil {
		t.Fatal(err)
	}
}
