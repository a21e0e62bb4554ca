package daemon

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
	"github.com/transitca/transitca/store/storetest"
	"golang.org/x/mod/sumdb/note"
)

// fakeKeys holds ed25519 versions of one key; errs overrides the answer
// for a version.
type fakeKeys struct {
	versions []ed25519.PrivateKey
	errs     map[int]error
}

type fakeKeySigner struct {
	crypto.Signer
	name    string
	version int
}

func (s fakeKeySigner) KeyName() string { return s.name }
func (s fakeKeySigner) KeyVersion() int { return s.version }

func (k *fakeKeys) EnsureKey(context.Context, string, issuer.KeyType) (bool, error) {
	return false, nil
}

func (k *fakeKeys) Signer(_ context.Context, name string, version int) (issuer.KeySigner, error) {
	if version == 0 {
		version = len(k.versions)
	}
	if err := k.errs[version]; err != nil {
		return nil, err
	}
	return fakeKeySigner{Signer: k.versions[version-1], name: name, version: version}, nil
}

func (k *fakeKeys) Describe() string { return "fake keys" }

func TestCheckpointKeysVersions(t *testing.T) {
	keys := func(errs map[int]error) *fakeKeys {
		k := &fakeKeys{errs: errs}
		for i := range 3 {
			k.versions = append(k.versions, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{byte(i + 1)}, ed25519.SeedSize)))
		}
		return k
	}
	cases := []struct {
		name    string
		errs    map[int]error
		wantErr string
	}{
		{"all versions", nil, ""},
		{"version 1 trimmed", map[int]error{1: fmt.Errorf("%w: version 1", issuer.ErrKeyNotFound)}, ""},
		{"vault unreachable for version 1", map[int]error{1: errors.New("dial tcp 127.0.0.1:8200: connection refused")}, "connection refused"},
	}
	cfg := config.Default()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, vs, _, err := checkpointKeys(context.Background(), cfg, keys(tc.errs))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "version 1") {
					t.Fatalf("checkpointKeys: %v, want an error naming version 1 and %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Checkpoints signed by every version still present verify.
			for v := 1; v <= 3; v++ {
				if tc.errs[v] != nil {
					continue
				}
				s, err := store.NewNoteSigner(cfg.LogOrigin(), keys(nil).versions[v-1])
				if err != nil {
					t.Fatal(err)
				}
				msg, err := note.Sign(&note.Note{Text: "checkpoint\n"}, s)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := note.Open(msg, vs); err != nil {
					t.Fatalf("checkpoint signed by version %d: %v", v, err)
				}
			}
		})
	}
}

// checkRollbackRefused appends to the log through openLog twice, puts the
// file of the first round back and checks openLog refuses it. published
// returns what the witness holds.
func checkRollbackRefused(t *testing.T, cfg *config.Config, b *Backend, published func() string) {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	if _, err := b.Keys.EnsureKey(ctx, cfg.Log.CheckpointKey, issuer.KeyEd25519); err != nil {
		t.Fatal(err)
	}
	appendN := func(n int) {
		l, _, err := openLog(ctx, cfg, b, log, false)
		if err != nil {
			t.Fatal(err)
		}
		for range n {
			appendTestEntry(t, l)
		}
		if err := l.Close(); err != nil { // the final checkpoint is published
			t.Fatal(err)
		}
	}
	appendN(3)
	old, err := os.ReadFile(cfg.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	appendN(4)
	if got := published(); !strings.Contains(got, "\n7\n") {
		t.Fatalf("the witness holds %q, want the checkpoint of size 7", got)
	}
	if err := os.WriteFile(cfg.LogPath(), old, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = openLog(ctx, cfg, b, log, false)
	if !errors.Is(err, store.ErrRolledBack) || !strings.Contains(err.Error(), "it has 3 entries") {
		t.Fatalf("openLog of a log put back: %v, want ErrRolledBack", err)
	}
}

// In dev mode the daemon publishes its checkpoints to a witness file in
// the data directory and refuses a log put back from an older copy.
func TestOpenLogDevWitness(t *testing.T) {
	cfg := config.Default()
	cfg.Dev = true
	cfg.DataDir = t.TempDir()
	b, err := OpenBackend(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	checkRollbackRefused(t, cfg, b, func() string {
		got, _ := os.ReadFile(filepath.Join(cfg.DataDir, WitnessFileName))
		return string(got)
	})
}

// With Vault, the witness is the KV secret
// <kv_mount>/<kv_prefix>/log-checkpoint/<log origin>.
func TestOpenLogVaultWitness(t *testing.T) {
	env := vaulttest.New(t)
	t.Setenv("VAULT_ADDR", env.Server.Addr)
	t.Setenv("VAULT_TOKEN", env.Server.RootToken)
	cfg, err := config.Load(writeConfig(t, env, ""))
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenBackend(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	checkRollbackRefused(t, cfg, b, func() string {
		sec, err := env.Client.KVv2(env.KV).Get(context.Background(), cfg.Vault.KVPrefix+"/log-checkpoint/"+cfg.LogOrigin())
		if err != nil {
			t.Fatal(err)
		}
		s, _ := sec.Data["checkpoint"].(string)
		return s
	})
}

// The daemon does not start on a log whose newer meta page is damaged, and
// says how to accept the loss.
func TestOpenLogRefusesDamagedMeta(t *testing.T) {
	ctx := context.Background()
	cfg := config.Default()
	cfg.Dev = true
	cfg.DataDir = t.TempDir()
	log := slog.New(slog.DiscardHandler)
	b := openBackend(t, cfg, log)
	l, _, err := openLog(ctx, cfg, b, log, false)
	if err != nil {
		t.Fatal(err)
	}
	appendTestEntry(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	damaged, page, txid := storetest.DamageNewerMeta(t, cfg.LogPath())
	if err := os.Rename(damaged, cfg.LogPath()); err != nil {
		t.Fatal(err)
	}
	_, _, err = openLog(ctx, cfg, b, log, false)
	for _, want := range []string{fmt.Sprintf("meta page %d", page), fmt.Sprintf("ca log accept-damage --db %s --confirm-txid %d", cfg.LogPath(), txid)} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("openLog of a log with a damaged meta page: %v\nwant %q", err, want)
		}
	}
}

// Checkpoint key versions trimmed in Vault are skipped (they sign nothing
// anymore): the daemon still starts.
func TestCheckpointKeysTrimmedInVault(t *testing.T) {
	ctx := context.Background()
	env := vaulttest.New(t)
	tr := issuer.NewTransit(env.Client, env.Transit, 10*time.Second)
	cfg := config.Default()
	name := cfg.Log.CheckpointKey
	if _, err := tr.EnsureKey(ctx, name, issuer.KeyEd25519); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := tr.Rotate(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	keyPath := env.Transit + "/keys/" + name
	if _, err := env.Client.Logical().WriteWithContext(ctx, keyPath+"/config", map[string]any{"min_decryption_version": 2, "min_encryption_version": 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.Logical().WriteWithContext(ctx, keyPath+"/trim", map[string]any{"min_available_version": 2}); err != nil {
		t.Fatal(err)
	}
	keys := issuer.VaultKeys{Transit: tr}
	signer, vs, _, err := checkpointKeys(ctx, cfg, keys)
	if err != nil {
		t.Fatalf("checkpointKeys with version 1 trimmed: %v", err)
	}
	msg, err := note.Sign(&note.Note{Text: "checkpoint\n"}, signer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(msg, vs); err != nil {
		t.Fatalf("checkpoint signed by the latest version: %v", err)
	}
}

// Shutting down with Vault gone neither hangs nor fails: the final
// checkpoint is left for the next start.
func TestCloseLogWithVaultStopped(t *testing.T) {
	ctx := context.Background()
	srv := vaulttest.Own(t)
	env := vaulttest.NewOn(t, srv)
	t.Setenv("VAULT_ADDR", srv.Addr)
	t.Setenv("VAULT_TOKEN", srv.RootToken)
	cfg, err := config.Load(writeConfig(t, env, ""))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	b := openBackend(t, cfg, log)
	l, _, err := openLog(ctx, cfg, b, log, false)
	if err != nil {
		t.Fatal(err)
	}
	appendTestEntry(t, l)
	srv.Stop()
	start := time.Now()
	if err := l.Close(); err != nil {
		t.Fatalf("Close with Vault stopped: %v", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("Close took %v with Vault stopped", d)
	}
	if !strings.Contains(logs.String(), "closing without a final checkpoint") {
		t.Fatalf("Close did not log the missing checkpoint:\n%s", logs.String())
	}
	ro, err := store.Open(cfg.LogPath(), store.Options{ReadOnly: true, Logger: log})
	if err != nil {
		t.Fatalf("the log after a close without Vault: %v", err)
	}
	defer ro.Close()
	if _, err := ro.Verify(ctx, nil); err != nil {
		t.Fatalf("the log after a close without Vault: %v", err)
	}
}

// Close closes the issuance log before the Transit engine: the final
// checkpoint, signed through Transit, covers the last entry, and signing
// afterwards fails with issuer.ErrClosed (the batching goroutines ended).
func TestCloseSignsTheFinalCheckpointThenClosesTransit(t *testing.T) {
	ctx := context.Background()
	env := vaulttest.New(t)
	t.Setenv("VAULT_ADDR", env.Server.Addr)
	t.Setenv("VAULT_TOKEN", env.Server.RootToken)
	cfg, err := config.Load(writeConfig(t, env, ""))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	b := openBackend(t, cfg, log)
	if _, err := b.Keys.EnsureKey(ctx, "close-test", issuer.KeyECDSAP256); err != nil {
		t.Fatal(err)
	}
	l, vkey, err := openLog(ctx, cfg, b, log, false)
	if err != nil {
		t.Fatal(err)
	}
	appendTestEntry(t, l)
	signer, err := b.Transit.Signer(ctx, "close-test", 0)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("x"))
	if _, err := signer.SignContext(ctx, digest[:], crypto.SHA256); err != nil {
		t.Fatalf("sign before Close: %v", err)
	}

	d := &Daemon{cfg: cfg, log: log, backend: b, ilog: l}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := signer.SignContext(ctx, digest[:], crypto.SHA256); !errors.Is(err, issuer.ErrClosed) {
		t.Fatalf("sign after Close = %v, want issuer.ErrClosed", err)
	}

	ro, err := store.Open(cfg.LogPath(), store.Options{ReadOnly: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	signed, err := ro.LatestCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := store.OpenCheckpoint(signed, v)
	if err != nil {
		t.Fatalf("final checkpoint: %v", err)
	}
	if cp.Size != ro.Size() {
		t.Fatalf("final checkpoint covers %d entries, the log has %d: it was not signed before Transit closed", cp.Size, ro.Size())
	}
}
