package issuer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/transitca/transitca/internal/atomicfile"
	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
)

// DevOnlyLabel marks everything made by the local software key store. It
// appears in certificate subjects, logs and status output.
const DevOnlyLabel = "DEV-ONLY"

// LocalKeys is a software key store for development: private keys live in
// process memory and, when a directory is given, in files in it (mode 0600)
// so that a dev CA keeps its root across restarts. It is not for
// production: the keys are only as safe as that directory.
type LocalKeys struct {
	dir  string
	mu   sync.Mutex
	keys map[string][]crypto.Signer // by name; index i is version i+1
}

var _ Keys = (*LocalKeys)(nil)

// NewLocalKeys returns a dev-only key store keeping its keys in dir, or in
// memory only when dir is empty.
func NewLocalKeys(dir string) *LocalKeys {
	return &LocalKeys{dir: dir, keys: map[string][]crypto.Signer{}}
}

// Describe says the keys are local and dev-only.
func (k *LocalKeys) Describe() string {
	if k.dir == "" {
		return "local software keys in memory (" + DevOnlyLabel + ")"
	}
	return "local software keys in " + k.dir + " (" + DevOnlyLabel + ")"
}

func (k *LocalKeys) file(name string, version int) string {
	return filepath.Join(k.dir, fmt.Sprintf("%s.v%d.dev-only-key.pem", name, version))
}

// load reads the versions of a key kept on disk; k.mu is held.
func (k *LocalKeys) load(name string) ([]crypto.Signer, error) {
	if s, ok := k.keys[name]; ok || k.dir == "" {
		return s, nil
	}
	var out []crypto.Signer
	for v := 1; ; v++ {
		data, err := os.ReadFile(k.file(name, v))
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return nil, err
		}
		key, err := pemutil.Parse(data, pemutil.WithFilename(k.file(name, v)))
		if err != nil {
			return nil, err
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: not a signing key", k.file(name, v))
		}
		out = append(out, signer)
	}
	if len(out) > 0 {
		k.keys[name] = out
	}
	return out, nil
}

// EnsureKey generates a key unless one of that name exists.
func (k *LocalKeys) EnsureKey(_ context.Context, name string, typ KeyType) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	existing, err := k.load(name)
	if err != nil {
		return false, err
	}
	if len(existing) > 0 {
		if got := keyTypeOf(existing[0].Public()); got != typ {
			return false, fmt.Errorf("local key %s exists with type %s, want %s", name, got, typ)
		}
		return false, nil
	}
	return true, k.add(name, typ)
}

// Rotate adds a new version of a key and returns it.
func (k *LocalKeys) Rotate(_ context.Context, name string) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	existing, err := k.load(name)
	if err != nil {
		return 0, err
	}
	if len(existing) == 0 {
		return 0, fmt.Errorf("%w: local key %s", ErrKeyNotFound, name)
	}
	if err := k.add(name, keyTypeOf(existing[0].Public())); err != nil {
		return 0, err
	}
	return len(k.keys[name]), nil
}

// add generates and keeps a new version; k.mu is held.
func (k *LocalKeys) add(name string, typ KeyType) error {
	key, err := GenerateKey(typ)
	if err != nil {
		return err
	}
	version := len(k.keys[name]) + 1
	if k.dir != "" {
		block, err := pemutil.Serialize(key, pemutil.WithPKCS8(true))
		if err != nil {
			return err
		}
		block.Headers = map[string]string{"Comment": DevOnlyLabel + " transitca development key; never use in production"}
		if err := os.MkdirAll(k.dir, 0o700); err != nil {
			return err
		}
		if err := atomicfile.Write(k.file(name, version), pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
	}
	k.keys[name] = append(k.keys[name], key)
	return nil
}

// Signer returns a local signer for a key version.
func (k *LocalKeys) Signer(_ context.Context, name string, version int) (KeySigner, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	versions, err := k.load(name)
	if err != nil {
		return nil, err
	}
	if len(versions) == 0 {
		return nil, fmt.Errorf("%w: local key %s", ErrKeyNotFound, name)
	}
	if version == 0 {
		version = len(versions)
	}
	if version < 1 || version > len(versions) {
		return nil, fmt.Errorf("%w: local key %s has no version %d (latest is %d)", ErrKeyNotFound, name, version, len(versions))
	}
	return &localSigner{Signer: versions[version-1], name: name, version: version}, nil
}

type localSigner struct {
	crypto.Signer
	name    string
	version int
}

func (s *localSigner) KeyName() string { return s.name }
func (s *localSigner) KeyVersion() int { return s.version }

// keyParams names each key type as keyutil does: key type, curve and RSA
// size.
var keyParams = map[KeyType]struct {
	kty, crv string
	size     int
}{
	KeyECDSAP256: {"EC", "P-256", 0},
	KeyECDSAP384: {"EC", "P-384", 0},
	KeyRSA2048:   {"RSA", "", 2048},
	KeyRSA3072:   {"RSA", "", 3072},
	KeyRSA4096:   {"RSA", "", 4096},
	KeyEd25519:   {"OKP", "Ed25519", 0},
}

// GenerateKey makes a software key of a Transit key type.
func GenerateKey(typ KeyType) (crypto.Signer, error) {
	p, ok := keyParams[typ]
	if !ok {
		return nil, fmt.Errorf("unsupported key type %q", typ)
	}
	return keyutil.GenerateSigner(p.kty, p.crv, p.size)
}

func keyTypeOf(pub crypto.PublicKey) KeyType {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		switch p.Curve {
		case elliptic.P256():
			return KeyECDSAP256
		case elliptic.P384():
			return KeyECDSAP384
		}
	case *rsa.PublicKey:
		switch p.N.BitLen() {
		case 2048:
			return KeyRSA2048
		case 3072:
			return KeyRSA3072
		case 4096:
			return KeyRSA4096
		}
	case ed25519.PublicKey:
		return KeyEd25519
	}
	return KeyType(fmt.Sprintf("%T", pub))
}

// LocalCerts stores certificates as PEM files in a directory, or in memory
// when the directory is empty. It is the dev-mode counterpart of VaultCerts.
type LocalCerts struct {
	dir   string
	mu    sync.Mutex
	certs map[string]*x509.Certificate
	revs  map[string]int
}

var _ Certs = (*LocalCerts)(nil)

// NewLocalCerts returns a certificate store in dir (memory only when empty).
func NewLocalCerts(dir string) *LocalCerts {
	return &LocalCerts{dir: dir, certs: map[string]*x509.Certificate{}, revs: map[string]int{}}
}

func (c *LocalCerts) file(name string) string {
	return filepath.Join(c.dir, "certs", strings.ReplaceAll(name, "/", "_")+".pem")
}

// Load returns the stored certificate and its revision.
func (c *LocalCerts) Load(_ context.Context, name string) (*x509.Certificate, int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.load(name)
}

func (c *LocalCerts) load(name string) (*x509.Certificate, int, error) {
	if cert, ok := c.certs[name]; ok {
		return cert, c.revs[name], nil
	}
	if c.dir != "" {
		data, err := os.ReadFile(c.file(name))
		if err == nil {
			cert, err := parseCertPEM(string(data))
			if err != nil {
				return nil, 0, fmt.Errorf("%s: %w", c.file(name), err)
			}
			c.certs[name], c.revs[name] = cert, 1
			return cert, 1, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, 0, err
		}
	}
	return nil, 0, fmt.Errorf("%w: %s", ErrCertNotFound, name)
}

// Store writes cert if the stored revision is still rev.
func (c *LocalCerts) Store(_ context.Context, name string, cert *x509.Certificate, rev int) (*x509.Certificate, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	current, cur, err := c.load(name)
	if err != nil && !errors.Is(err, ErrCertNotFound) {
		return nil, false, err
	}
	if cur != rev {
		return current, false, nil
	}
	if c.dir != "" {
		if err := os.MkdirAll(filepath.Dir(c.file(name)), 0o700); err != nil {
			return nil, false, err
		}
		data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
		if err := atomicfile.Write(c.file(name), data, 0o644); err != nil {
			return nil, false, err
		}
	}
	c.certs[name], c.revs[name] = cert, cur+1
	return cert, true, nil
}
