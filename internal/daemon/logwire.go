package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"golang.org/x/mod/sumdb/note"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

// checkpointKeys returns the checkpoint signer (the latest version of the
// log key), a verifier for every version of it (so that checkpoints signed
// before a rotation still verify), and the current verifier key text. The
// note key is named after the log without its shard (LogKeyName): every
// replica signs with the same Transit key, and one verifier key checks the
// checkpoints of every shard.
func checkpointKeys(ctx context.Context, cfg *config.Config, keys issuer.Keys) (*store.NoteSigner, note.Verifiers, string, error) {
	name, origin := cfg.Log.CheckpointKey, cfg.LogKeyName()
	latest, err := keys.Signer(ctx, name, 0)
	if errors.Is(err, issuer.ErrKeyNotFound) {
		return nil, nil, "", fmt.Errorf("%w: checkpoint key %s does not exist; run \"ca init\"", issuer.ErrNotInitialized, name)
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("checkpoint key: %w", err)
	}
	if _, ok := latest.Public().(ed25519.PublicKey); !ok {
		return nil, nil, "", fmt.Errorf("checkpoint key %s is not ed25519", name)
	}
	signer, err := store.NewNoteSigner(origin, latest)
	if err != nil {
		return nil, nil, "", err
	}
	var vs []note.Verifier
	for v := 1; v <= latest.KeyVersion(); v++ {
		s, err := keys.Signer(ctx, name, v)
		if errors.Is(err, issuer.ErrKeyNotFound) {
			continue // trimmed versions sign nothing anymore
		}
		if err != nil {
			// Anything else (Vault unreachable, denied) is not a trimmed
			// key: checkpoints of that version would fail to verify.
			return nil, nil, "", fmt.Errorf("checkpoint key %s version %d: %w", name, v, err)
		}
		ver, err := store.NewNoteVerifier(origin, s.Public().(ed25519.PublicKey))
		if err != nil {
			return nil, nil, "", err
		}
		vs = append(vs, ver)
	}
	vkey, err := store.VerifierKey(origin, latest.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, nil, "", err
	}
	return signer, note.VerifierList(vs...), vkey, nil
}

// logWitness returns where the latest checkpoint is kept outside the log:
// Vault KV (check-and-set) with Vault, under the log's origin, which names
// the shard, so that replicas sharing a Vault each keep their own; a file
// in the data directory in dev mode.
func logWitness(cfg *config.Config, b *Backend, origin string) store.Witness {
	if b.Session == nil {
		return store.NewFileWitness(filepath.Join(cfg.DataDir, WitnessFileName))
	}
	return issuer.NewVaultWitness(b.Session.Client, cfg.Vault.KVMount, cfg.Vault.KVPrefix, origin, cfg.Vault.Timeout.Std())
}

// logOrigin returns the origin this replica's log is opened with:
// cfg.LogOrigin(), except for a log file that predates shards (its
// checkpoints carry the unsharded origin, LogKeyName): a replica given a
// shard name, such as the one pod of a release upgraded to a sharded
// chart, keeps appending to that log under its origin and witness, while
// new replicas start shards of their own.
func logOrigin(ctx context.Context, cfg *config.Config, log *slog.Logger) string {
	origin := cfg.LogOrigin()
	if origin == cfg.LogKeyName() {
		return origin
	}
	have, err := store.FileOrigin(cfg.LogPath())
	if err != nil || have != cfg.LogKeyName() {
		return origin // Open reports what is wrong with the file
	}
	log.WarnContext(ctx, "this issuance log predates log shards: it keeps its origin, and no other replica may run without a shard name",
		slog.String("log", cfg.LogPath()), slog.String("origin", have), slog.String("shard", cfg.LogShard()))
	return have
}

// openLog opens the issuance log for appending, checking it against its
// last signed checkpoint and against the checkpoint last published to the
// witness.
func openLog(ctx context.Context, cfg *config.Config, b *Backend, log *slog.Logger, noSync bool) (*store.Log, string, error) {
	signer, verifiers, vkey, err := checkpointKeys(ctx, cfg, b.Keys)
	if err != nil {
		return nil, "", err
	}
	origin := logOrigin(ctx, cfg, log)
	l, err := store.Open(cfg.LogPath(), store.Options{
		Signer:             signer,
		Verifiers:          verifiers,
		Origin:             origin,
		CheckpointEvery:    cfg.Log.CheckpointEvery,
		CheckpointInterval: cfg.Log.CheckpointInterval.Std(),
		Witness:            logWitness(cfg, b, origin),
		Logger:             log,
		NoSync:             noSync,
		RecoverInterval:    logRecoverInterval,
		CloseTimeout:       logCloseTimeout(cfg),
	})
	if me, ok := errors.AsType[*store.MetaDamageError](err); ok {
		return nil, "", fmt.Errorf("%w\nthe daemon will not append to this log; after review (if the machine stopped during that commit, its entries were never acknowledged to a caller), accept the loss with: ca log accept-damage --db %s --confirm-txid %d", err, me.Path, me.MayBeLost)
	}
	if errors.Is(err, store.ErrRolledBack) {
		where := "the witness file " + filepath.Join(cfg.DataDir, WitnessFileName)
		if w, ok := logWitness(cfg, b, origin).(*issuer.VaultWitness); ok {
			where = w.Describe() + " (replicas that share a Vault, each with its own log file, need distinct log.shard names)"
		}
		return nil, "", fmt.Errorf("%w\nthe daemon will not append to this log: the last checkpoint it published is kept in %s; restore the log file that extends it, or, to start a new log deliberately, remove that checkpoint after review", err, where)
	}
	if err != nil {
		return nil, "", err
	}
	return l, vkey, nil
}

// WitnessFileName is the file, in the data directory, that keeps the latest
// checkpoint outside the log in dev mode.
const WitnessFileName = "log-witness.checkpoint"

// CheckpointSigner returns the signer of the log's checkpoint key (its
// latest version) and the verifier key text, for what else the log's key
// signs: the evidence reports ("ca report evidence --sign").
func CheckpointSigner(ctx context.Context, cfg *config.Config, b *Backend) (*store.NoteSigner, string, error) {
	signer, _, vkey, err := checkpointKeys(ctx, cfg, b.Keys)
	return signer, vkey, err
}
