package daemon

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/store"
)

// Replicas that share a Vault each keep their own log, named by its shard:
// their checkpoints carry their own origin, each has its own latest
// checkpoint in Vault, and they do not clash, while one verifier key
// checks them all. A replica's file opened under another shard's name is
// refused.
func TestShardsShareAVaultWithoutClashing(t *testing.T) {
	env := vaulttest.New(t)
	t.Setenv("VAULT_ADDR", env.Server.Addr)
	t.Setenv("VAULT_TOKEN", env.Server.RootToken)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	open := func(shard, dir string) (*config.Config, *Backend) {
		cfg, err := config.Load(writeConfig(t, env, "log:\n  shard: "+shard+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.DataDir = dir
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		b := openBackend(t, cfg, log)
		return cfg, b
	}
	dirs := map[string]string{"transitca-0": t.TempDir(), "transitca-1": t.TempDir()}
	vkeys := map[string]string{}
	// Both shards append in turn, each reopening its log: with one
	// witness for both, the second round of either would be refused.
	for round := range 2 {
		for shard, dir := range dirs {
			cfg, b := open(shard, dir)
			l, vkey, err := openLog(ctx, cfg, b, log, false)
			if err != nil {
				t.Fatalf("round %d, shard %s: %v", round, shard, err)
			}
			vkeys[shard] = vkey
			for range 2 + round {
				if _, err := l.Append(ctx, &store.Entry{Kind: store.KindAdmin, Action: "test", Actor: shard}); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if vkeys["transitca-0"] != vkeys["transitca-1"] || !strings.HasPrefix(vkeys["transitca-0"], "transitca/cluster.local+") {
		t.Fatalf("verifier keys %q: want one key, named after the CA, for every shard", vkeys)
	}
	v, err := note.NewVerifier(vkeys["transitca-0"])
	if err != nil {
		t.Fatal(err)
	}
	for shard := range dirs {
		sec, err := env.Client.KVv2(env.KV).Get(ctx, "transitca/log-checkpoint/transitca/cluster.local/"+shard)
		if err != nil {
			t.Fatalf("witness of shard %s: %v", shard, err)
		}
		text, _ := sec.Data["checkpoint"].(string)
		cp, err := store.OpenCheckpoint([]byte(text), v)
		if err != nil {
			t.Fatalf("witness of shard %s: %v", shard, err)
		}
		if cp.Origin != "transitca/cluster.local/"+shard || cp.Size != 5 {
			t.Fatalf("witness of shard %s holds %s, size %d", shard, cp.Origin, cp.Size)
		}
	}
	// transitca-1's file under transitca-0's name.
	cfg, b := open("transitca-0", t.TempDir())
	cfg.Log.Path = filepath.Join(dirs["transitca-1"], "issuance.db")
	_, _, err = openLog(ctx, cfg, b, log, false)
	if err == nil || !strings.Contains(err.Error(), `"transitca/cluster.local/transitca-1"`) {
		t.Fatalf("a shard's log opened as another shard: %v", err)
	}
	if errors.Is(err, store.ErrRolledBack) {
		t.Fatalf("refused as a rollback, want an origin mismatch: %v", err)
	}
}

// A log that predates shards keeps its origin and its witness when its
// replica is given a shard name (a release upgraded to the sharded chart),
// and goes on growing; a new file under that shard name is a new shard.
func TestShardAdoptsALogThatPredatesShards(t *testing.T) {
	env := vaulttest.New(t)
	t.Setenv("VAULT_ADDR", env.Server.Addr)
	t.Setenv("VAULT_TOKEN", env.Server.RootToken)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()
	appendTo := func(shard string) string {
		t.Helper()
		cfg, err := config.Load(writeConfig(t, env, "log:\n  shard: \""+shard+"\"\n"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.DataDir = dir
		b := openBackend(t, cfg, log)
		l, _, err := openLog(ctx, cfg, b, log, false)
		if err != nil {
			t.Fatalf("shard %q: %v", shard, err)
		}
		appendTestEntry(t, l)
		origin := l.Origin()
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		return origin
	}
	if got := appendTo(""); got != "transitca/cluster.local" {
		t.Fatalf("unsharded origin %q", got)
	}
	if got := appendTo("transitca-0"); got != "transitca/cluster.local" {
		t.Fatalf("a log that predates shards opened as shard transitca-0 has origin %q, want its own", got)
	}
	sec, err := env.Client.KVv2(env.KV).Get(ctx, "transitca/log-checkpoint/transitca/cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if text, _ := sec.Data["checkpoint"].(string); !strings.Contains(text, "\n2\n") {
		t.Fatalf("the witness of the adopted log holds %q, want its checkpoint of size 2", text)
	}
	dir = t.TempDir()
	if got := appendTo("transitca-0"); got != "transitca/cluster.local/transitca-0" {
		t.Fatalf("a new log as shard transitca-0 has origin %q", got)
	}
}
