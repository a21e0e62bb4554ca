package issuer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
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
	client  *vault.Client
	mount   string
	path    string
	timeout time.Duration
}

// NewVaultWitness returns the witness of the log named origin in the KV v2
// engine at mount ("secret" when empty), under prefix ("transitca" when
// empty), the same settings as NewVaultCerts.
func NewVaultWitness(client *vault.Client, mount, prefix, origin string, timeout time.Duration) *VaultWitness {
	if mount == "" {
		mount = "secret"
	}
	if prefix == "" {
		prefix = "transitca"
	}
	if timeout <= 0 {
		timeout = DefaultVaultTimeout
	}
	return &VaultWitness{client: client, mount: strings.Trim(mount, "/"), path: path.Join(strings.Trim(prefix, "/"), "log-checkpoint", origin), timeout: timeout}
}

// Describe says where the checkpoint is kept.
func (w *VaultWitness) Describe() string { return "vault kv " + w.mount + "/" + w.path }

// read returns the stored checkpoint and its KV version (nil, 0 when none).
func (w *VaultWitness) read(ctx context.Context) ([]byte, int, error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	sec, err := w.client.KVv2(w.mount).Get(ctx, w.path)
	if errors.Is(err, vault.ErrSecretNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, vaultErr("read log checkpoint", w.mount+"/"+w.path, 0, err)
	}
	text, ok := sec.Data["checkpoint"].(string)
	if !ok || text == "" {
		return nil, 0, fmt.Errorf("%s/%s holds no checkpoint", w.mount, w.path)
	}
	rev := 0
	if sec.VersionMetadata != nil {
		rev = sec.VersionMetadata.Version
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
		return fmt.Errorf("%s/%s holds another checkpoint than expected (KV version %d)", w.mount, w.path, rev)
	}
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	_, err = w.client.KVv2(w.mount).Put(ctx, w.path, map[string]any{"checkpoint": string(next)}, vault.WithCheckAndSet(rev))
	if err != nil {
		return vaultErr("write log checkpoint", w.mount+"/"+w.path, rev, err)
	}
	return nil
}
