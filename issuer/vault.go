package issuer

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
	"go.step.sm/crypto/pemutil"
)

// VaultKeys adapts a Transit engine to Keys.
type VaultKeys struct{ *Transit }

var _ Keys = VaultKeys{}

// Signer returns a Transit signer pinned to a key version.
func (v VaultKeys) Signer(ctx context.Context, name string, version int) (KeySigner, error) {
	return v.Transit.Signer(ctx, name, version)
}

// Describe says which Vault and mount hold the keys.
func (v VaultKeys) Describe() string {
	return "vault transit " + v.client.Address() + " mount " + v.mount
}

// VaultCerts stores certificates in a Vault KV version 2 engine, under
// <mount>/data/<prefix>/<name>, with check-and-set so that replicas racing
// to write the same certificate agree on one.
type VaultCerts struct {
	client  *vault.Client
	mount   string
	prefix  string
	timeout time.Duration
}

var _ Certs = (*VaultCerts)(nil)

// NewVaultCerts returns a certificate store in the KV v2 engine at mount
// ("secret" when empty), under prefix ("transitca" when empty).
func NewVaultCerts(client *vault.Client, mount, prefix string, timeout time.Duration) *VaultCerts {
	if mount == "" {
		mount = "secret"
	}
	if prefix == "" {
		prefix = "transitca"
	}
	if timeout <= 0 {
		timeout = DefaultVaultTimeout
	}
	return &VaultCerts{client: client, mount: strings.Trim(mount, "/"), prefix: strings.Trim(prefix, "/"), timeout: timeout}
}

func (c *VaultCerts) path(name string) string { return path.Join(c.prefix, name) }

// Load reads a certificate and its KV version.
func (c *VaultCerts) Load(ctx context.Context, name string) (*x509.Certificate, int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	p := c.path(name)
	sec, err := c.client.KVv2(c.mount).Get(ctx, p)
	if errors.Is(err, vault.ErrSecretNotFound) {
		return nil, 0, fmt.Errorf("%w: %s/%s", ErrCertNotFound, c.mount, p)
	}
	if err != nil {
		return nil, 0, vaultErr("read certificate", c.mount+"/"+p, 0, err)
	}
	text, _ := sec.Data["certificate"].(string)
	cert, err := parseCertPEM(text)
	if err != nil {
		return nil, 0, fmt.Errorf("certificate stored at %s/%s: %w", c.mount, p, err)
	}
	rev := 0
	if sec.VersionMetadata != nil {
		rev = sec.VersionMetadata.Version
	}
	return cert, rev, nil
}

// Store writes cert if the stored KV version is still rev.
func (c *VaultCerts) Store(ctx context.Context, name string, cert *x509.Certificate, rev int) (*x509.Certificate, bool, error) {
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	p := c.path(name)
	_, err := c.client.KVv2(c.mount).Put(cctx, p, map[string]any{
		"certificate": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})),
	}, vault.WithCheckAndSet(rev))
	if err == nil {
		return cert, true, nil
	}
	if casConflict(err) {
		current, _, lerr := c.Load(ctx, name)
		if lerr != nil {
			return nil, false, lerr
		}
		return current, false, nil
	}
	return nil, false, vaultErr("write certificate", c.mount+"/"+p, 0, err)
}

// parseCertPEM parses one PEM certificate; anything after it is an error.
func parseCertPEM(text string) (*x509.Certificate, error) {
	v, err := pemutil.Parse([]byte(text))
	if err != nil {
		return nil, err
	}
	cert, ok := v.(*x509.Certificate)
	if !ok {
		return nil, fmt.Errorf("PEM holds a %T, not a certificate", v)
	}
	return cert, nil
}
