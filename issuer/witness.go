package issuer

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// VaultWitness keeps the issuance log's latest signed checkpoint in a Vault
// KV version 2 engine, under <mount>/data/<prefix>/log-checkpoint/<origin>,
// outside the log file: a log file rolled back (an old backup put back) is then
// refused, because it does not extend the checkpoint kept here. Writes use
// check-and-set, so that a writer that did not see the current checkpoint
// cannot replace it. It implements store.Witness.
//
// One secret serves one log: replicas that share a Vault, each with its own
// log file, need distinct log origins, which their shard names give them
// (log.shard: the origin is "<origin>/<shard>").
type VaultWitness struct {
	kv   kv
	path string
}

// NewVaultWitness returns the witness of the log named origin in the KV v2
// engine at mount ("secret" when empty), under prefix ("transitca" when
// empty), the same settings as NewVaultCerts.
func NewVaultWitness(client *vault.Client, mount, prefix, origin string, timeout time.Duration) *VaultWitness {
	k, prefix := newKV(client, mount, prefix, timeout)
	return &VaultWitness{kv: k, path: path.Join(prefix, "log-checkpoint", origin)}
}

// Describe says where the checkpoint is kept.
func (w *VaultWitness) Describe() string { return "vault kv " + w.kv.describe(w.path) }

// read returns the stored checkpoint and its KV version (nil, 0 when none).
func (w *VaultWitness) read(ctx context.Context) ([]byte, int, error) {
	text, rev, found, err := w.kv.get(ctx, "read log checkpoint", w.path, "checkpoint")
	if err != nil || !found {
		return nil, 0, err
	}
	if text == "" {
		return nil, 0, fmt.Errorf("%s holds no checkpoint", w.kv.describe(w.path))
	}
	return []byte(text), rev, nil
}

// Latest returns the checkpoint last published, or nil when none was.
func (w *VaultWitness) Latest(ctx context.Context) ([]byte, error) {
	cp, _, err := w.read(ctx)
	return cp, err
}

// Publish writes next if the stored checkpoint is still prev (nil: none),
// with check-and-set on the KV version read.
func (w *VaultWitness) Publish(ctx context.Context, prev, next []byte) error {
	cur, rev, err := w.read(ctx)
	if err != nil {
		return err
	}
	if !bytes.Equal(cur, prev) {
		return fmt.Errorf("%s holds another checkpoint than expected (KV version %d)", w.kv.describe(w.path), rev)
	}
	if _, err := w.kv.put(ctx, w.path, "checkpoint", string(next), rev); err != nil {
		return vaultErr("write log checkpoint", w.kv.describe(w.path), rev, err)
	}
	return nil
}
