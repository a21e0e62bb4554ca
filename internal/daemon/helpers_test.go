package daemon

import (
	"encoding/binary"
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

// damageNewerMeta flips a bit in the newer of the two bbolt meta pages of
// a copy of db (bbolt layout: a 16-byte page header, then magic, version,
// page size, flags, root bucket (16 bytes), freelist, pgid, txid,
// checksum) and returns the copy, the page and the newer txid.
func damageNewerMeta(t *testing.T, db string) (string, int, uint64) {
	t.Helper()
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	pageSize := int(le.Uint32(b[16+8:]))
	tx0, tx1 := le.Uint64(b[16+48:]), le.Uint64(b[pageSize+16+48:])
	page, txid := 0, tx0
	if tx1 > tx0 {
		page, txid = 1, tx1
	}
	b[page*pageSize+16+48] ^= 0x40
	out := filepath.Join(t.TempDir(), "rolled-back.db")
	if err := os.WriteFile(out, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return out, page, txid
}
