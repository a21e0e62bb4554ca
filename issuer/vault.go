package issuer

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"path"
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
	kv     kv
	prefix string
}

var _ Certs = (*VaultCerts)(nil)

// NewVaultCerts returns a certificate store in the KV v2 engine at mount
// ("secret" when empty), under prefix ("transitca" when empty).
func NewVaultCerts(client *vault.Client, mount, prefix string, timeout time.Duration) *VaultCerts {
	k, prefix := newKV(client, mount, prefix, timeout)
	return &VaultCerts{kv: k, prefix: prefix}
}

func (c *VaultCerts) path(name string) string { return path.Join(c.prefix, name) }

// Load reads a certificate and its KV version.
func (c *VaultCerts) Load(ctx context.Context, name string) (*x509.Certificate, int, error) {
	p := c.path(name)
	text, rev, found, err := c.kv.get(ctx, "read certificate", p, "certificate")
	if err != nil {
		return nil, 0, err
	}
	if !found {
		return nil, 0, fmt.Errorf("%w: %s", ErrCertNotFound, c.kv.describe(p))
	}
	cert, err := parseCertPEM(text)
	if err != nil {
		return nil, 0, fmt.Errorf("certificate stored at %s: %w", c.kv.describe(p), err)
	}
	return cert, rev, nil
}

// Store writes cert if the stored KV version is still rev.
func (c *VaultCerts) Store(ctx context.Context, name string, cert *x509.Certificate, rev int) (*x509.Certificate, bool, error) {
	p := c.path(name)
	_, err := c.kv.put(ctx, p, "certificate", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})), rev)
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
	return nil, false, vaultErr("write certificate", c.kv.describe(p), 0, err)
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
