package issuer

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// kv reads and writes one field of secrets in a Vault KV version 2 engine,
// with their KV version, each call bounded by timeout: what VaultCerts,
// VaultState and VaultWitness share.
type kv struct {
	client  *vault.Client
	mount   string
	timeout time.Duration
}

// newKV returns the engine at mount ("secret" when empty) and prefix
// trimmed ("transitca" when empty); timeout is DefaultVaultTimeout when
// zero.
func newKV(client *vault.Client, mount, prefix string, timeout time.Duration) (kv, string) {
	if mount == "" {
		mount = "secret"
	}
	if prefix == "" {
		prefix = "transitca"
	}
	if timeout <= 0 {
		timeout = DefaultVaultTimeout
	}
	return kv{client: client, mount: strings.Trim(mount, "/"), timeout: timeout}, strings.Trim(prefix, "/")
}

// describe names the secret at p.
func (k kv) describe(p string) string { return k.mount + "/" + p }

// get returns field of the secret at p and the secret's KV version; found
// is false when there is no secret. A Vault error is a *VaultError for op.
func (k kv) get(ctx context.Context, op, p, field string) (text string, rev int, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	sec, err := k.client.KVv2(k.mount).Get(ctx, p)
	if errors.Is(err, vault.ErrSecretNotFound) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, vaultErr(op, k.describe(p), 0, err)
	}
	text, _ = sec.Data[field].(string)
	if sec.VersionMetadata != nil {
		rev = sec.VersionMetadata.Version
	}
	return text, rev, true, nil
}

// put writes field of the secret at p with check-and-set on KV version
// rev (0: only if there is none) and returns the new version. Its error is
// Vault's, unwrapped: casConflict tells a failed check-and-set.
func (k kv) put(ctx context.Context, p, field, text string, rev int) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	sec, err := k.client.KVv2(k.mount).Put(ctx, p, map[string]any{field: text}, vault.WithCheckAndSet(rev))
	if err != nil {
		return 0, err
	}
	if sec == nil || sec.VersionMetadata == nil {
		return rev + 1, nil
	}
	return sec.VersionMetadata.Version, nil
}

// casConflict reports whether a KV v2 write failed its check-and-set.
func casConflict(err error) bool {
	var re *vault.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusBadRequest && strings.Contains(strings.Join(re.Errors, " "), "check-and-set")
}
