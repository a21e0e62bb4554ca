package issuer

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// KeyType is a Vault Transit key type that can sign.
type KeyType string

// The Transit key types transitca signs with.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyECDSAP384 KeyType = "ecdsa-p384"
	KeyRSA2048   KeyType = "rsa-2048"
	KeyRSA3072   KeyType = "rsa-3072"
	KeyRSA4096   KeyType = "rsa-4096"
	KeyEd25519   KeyType = "ed25519"
)

// caKeyTypes are the key types a CA certificate may have, in the order
// error messages list them.
var caKeyTypes = []KeyType{KeyECDSAP256, KeyECDSAP384, KeyRSA2048, KeyRSA3072, KeyRSA4096}

// Valid reports whether t is a key type transitca supports.
func (t KeyType) Valid() bool { return t == KeyEd25519 || t.CanCertify() }

// CanCertify reports whether a root or intermediate may have a key of type
// t: every supported type but Ed25519, which signs checkpoints only.
func (t KeyType) CanCertify() bool { return slices.Contains(caKeyTypes, t) }

// checkCAKeyType returns an error naming what (e.g. "root key type")
// unless t.CanCertify().
func checkCAKeyType(what string, t KeyType) error {
	if t.CanCertify() {
		return nil
	}
	names := make([]string, len(caKeyTypes))
	for i, k := range caKeyTypes {
		names[i] = string(k)
	}
	return fmt.Errorf("%s %q: want one of %s", what, t, strings.Join(names, ", "))
}

// DefaultVaultTimeout bounds every Vault call whose context has no earlier
// deadline.
const DefaultVaultTimeout = 10 * time.Second

// Transit is a Vault Transit secrets engine mounted at a path.
type Transit struct {
	client  *vault.Client
	mount   string
	timeout time.Duration
	observe func(op string, took time.Duration, err error)

	// life ends at Close: the batchers' workers stop and batch requests in
	// flight are cancelled.
	life context.Context
	stop context.CancelFunc
	// workers counts the batchers' goroutines, for Close to wait on.
	workers sync.WaitGroup

	mu     sync.Mutex
	closed bool
	// batchers group concurrent signatures by key version (see batch.go).
	batchers map[batchKey]*signBatcher
}

// SetObserver registers f to be told the duration and outcome of every sign
// call to Vault (for latency metrics). It must be called before the engine
// is used.
func (t *Transit) SetObserver(f func(op string, took time.Duration, err error)) { t.observe = f }

// NewTransit returns the Transit engine mounted at mount ("transit" when
// empty). Every call is bounded by timeout (DefaultVaultTimeout when zero).
func NewTransit(client *vault.Client, mount string, timeout time.Duration) *Transit {
	if mount == "" {
		mount = "transit"
	}
	if timeout <= 0 {
		timeout = DefaultVaultTimeout
	}
	life, stop := context.WithCancel(context.Background())
	return &Transit{client: client, mount: strings.Trim(mount, "/"), timeout: timeout, life: life, stop: stop}
}

// Close ends signing: it stops the goroutines that batch signatures,
// cancels the batches in flight and waits for the goroutines to end.
// Signatures in flight or asked for later fail with an error wrapping
// ErrClosed; the other methods are unaffected. The owner of the engine
// calls Close once it will sign no more (at shutdown); calling it again
// does nothing.
func (t *Transit) Close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.stop()
	t.workers.Wait()
}

// Mount returns the engine's mount path.
func (t *Transit) Mount() string { return t.mount }

// KeyInfo is what Vault reports about a Transit key.
type KeyInfo struct {
	Name          string
	Type          KeyType
	LatestVersion int
	Exportable    bool
	// AllowPlaintextBackup means the key can be backed up in plaintext
	// (transit/backup): the private key could leave Vault that way.
	AllowPlaintextBackup bool
	// DeletionAllowed means the key can be deleted (transit/keys/:name
	// DELETE), and every certificate under it with it.
	DeletionAllowed bool
	// MinAvailableVersion and MinDecryptionVersion are Vault's trimming
	// and decryption floors (0 and 1 when never changed).
	MinAvailableVersion, MinDecryptionVersion int
	// PublicKeys holds the public key of every version still kept, by version.
	PublicKeys map[int]crypto.PublicKey
}

func (t *Transit) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, t.timeout)
}

// ReadKey reads a key's type, versions and public keys. It returns an error
// wrapping ErrKeyNotFound when the key does not exist.
func (t *Transit) ReadKey(ctx context.Context, name string) (*KeyInfo, error) {
	ctx, cancel := t.ctx(ctx)
	defer cancel()
	sec, err := t.client.Logical().ReadWithContext(ctx, t.mount+"/keys/"+name)
	if err != nil {
		return nil, vaultErr("read key", t.mount+"/keys/"+name, 0, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("%w: %s/keys/%s", ErrKeyNotFound, t.mount, name)
	}
	return parseKeyInfo(name, sec.Data)
}

func parseKeyInfo(name string, d map[string]any) (*KeyInfo, error) {
	info := &KeyInfo{Name: name, PublicKeys: map[int]crypto.PublicKey{}}
	typ, _ := d["type"].(string)
	info.Type = KeyType(typ)
	info.Exportable, _ = d["exportable"].(bool)
	info.AllowPlaintextBackup, _ = d["allow_plaintext_backup"].(bool)
	info.DeletionAllowed, _ = d["deletion_allowed"].(bool)
	info.MinAvailableVersion, _ = jsonInt(d["min_available_version"])
	info.MinDecryptionVersion, _ = jsonInt(d["min_decryption_version"])
	lv, err := jsonInt(d["latest_version"])
	if err != nil {
		return nil, fmt.Errorf("key %s: latest_version: %w", name, err)
	}
	info.LatestVersion = lv
	keys, _ := d["keys"].(map[string]any)
	for v, raw := range keys {
		ver, err := strconv.Atoi(v)
		if err != nil {
			return nil, fmt.Errorf("key %s: version %q is not a number", name, v)
		}
		entry, ok := raw.(map[string]any)
		if !ok {
			// Symmetric keys list creation times only.
			continue
		}
		pubText, _ := entry["public_key"].(string)
		if pubText == "" {
			continue
		}
		pub, err := parsePublicKey(info.Type, pubText)
		if err != nil {
			return nil, fmt.Errorf("key %s version %d: %w", name, ver, err)
		}
		info.PublicKeys[ver] = pub
	}
	return info, nil
}

func jsonInt(v any) (int, error) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		return int(i), err
	case float64:
		return int(n), nil
	case int:
		return n, nil
	}
	return 0, fmt.Errorf("unexpected value %v", v)
}

// parsePublicKey decodes a Transit public key: PEM for ECDSA and RSA, bare
// base64 for Ed25519.
func parsePublicKey(typ KeyType, text string) (crypto.PublicKey, error) {
	if typ == KeyEd25519 {
		raw, err := base64.StdEncoding.DecodeString(text)
		if err != nil || len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("malformed ed25519 public key %q", text)
		}
		return ed25519.PublicKey(raw), nil
	}
	block, _ := pem.Decode([]byte(text))
	if block == nil {
		return nil, errors.New("public key is not PEM")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	return pub, nil
}

// EnsureKey creates a non-exportable signing key of the given type unless a
// key of that name exists already. It reports whether it created the key. An
// existing key of another type, or one that is exportable, is an error: the
// CA will not sign with a key that may have left Vault.
func (t *Transit) EnsureKey(ctx context.Context, name string, typ KeyType) (created bool, err error) {
	if !typ.Valid() {
		return false, fmt.Errorf("unsupported key type %q", typ)
	}
	info, err := t.ReadKey(ctx, name)
	switch {
	case err == nil:
		return false, checkExisting(info, typ)
	case !errors.Is(err, ErrKeyNotFound):
		return false, err
	}
	cctx, cancel := t.ctx(ctx)
	defer cancel()
	path := t.mount + "/keys/" + name
	_, err = t.client.Logical().WriteWithContext(cctx, path, map[string]any{
		"type":                   string(typ),
		"exportable":             false,
		"allow_plaintext_backup": false,
	})
	if err != nil {
		return false, vaultErr("create key", path, 0, err)
	}
	info, err = t.ReadKey(ctx, name)
	if err != nil {
		return false, err
	}
	return true, checkExisting(info, typ)
}

func checkExisting(info *KeyInfo, typ KeyType) error {
	if info.Type != typ {
		return fmt.Errorf("transit key %s exists with type %s, want %s", info.Name, info.Type, typ)
	}
	if info.Exportable {
		return fmt.Errorf("transit key %s is exportable: its private key may have left Vault; refusing to use it", info.Name)
	}
	return nil
}

// Rotate adds a new version to a key and returns it. Old versions keep
// signing and verifying until they are trimmed.
func (t *Transit) Rotate(ctx context.Context, name string) (int, error) {
	cctx, cancel := t.ctx(ctx)
	defer cancel()
	path := t.mount + "/keys/" + name + "/rotate"
	if _, err := t.client.Logical().WriteWithContext(cctx, path, nil); err != nil {
		return 0, vaultErr("rotate key", t.mount+"/keys/"+name, 0, err)
	}
	info, err := t.ReadKey(ctx, name)
	if err != nil {
		return 0, err
	}
	return info.LatestVersion, nil
}

// Signer returns a crypto.Signer for one version of a Transit key; version 0
// means the latest version, resolved now and pinned from then on, so that a
// rotation in Vault never changes the key under a certificate being built.
func (t *Transit) Signer(ctx context.Context, name string, version int) (*TransitSigner, error) {
	info, err := t.ReadKey(ctx, name)
	if err != nil {
		return nil, err
	}
	if info.Exportable {
		return nil, fmt.Errorf("transit key %s is exportable: its private key may have left Vault; refusing to use it", name)
	}
	if version == 0 {
		version = info.LatestVersion
	}
	pub, ok := info.PublicKeys[version]
	if !ok {
		return nil, fmt.Errorf("%w: transit key %s has no version %d (latest is %d)", ErrKeyNotFound, name, version, info.LatestVersion)
	}
	if !info.Type.Valid() {
		return nil, fmt.Errorf("transit key %s has type %s, which cannot sign certificates", name, info.Type)
	}
	return &TransitSigner{transit: t, name: name, version: version, typ: info.Type, pub: pub}, nil
}

// TransitSigner is a crypto.Signer whose private key is one pinned version of
// a Vault Transit key. Every signature is made by Vault.
type TransitSigner struct {
	transit *Transit
	name    string
	version int
	typ     KeyType
	pub     crypto.PublicKey
	ctx     context.Context
}

var _ crypto.Signer = (*TransitSigner)(nil)

// Public returns the public key of the pinned version.
func (s *TransitSigner) Public() crypto.PublicKey { return s.pub }

// KeyName returns the Transit key name.
func (s *TransitSigner) KeyName() string { return s.name }

// KeyVersion returns the pinned key version.
func (s *TransitSigner) KeyVersion() int { return s.version }

// KeyType returns the Transit key type.
func (s *TransitSigner) KeyType() KeyType { return s.typ }

// WithContext returns a copy of s whose Sign calls are bound to ctx (and to
// the engine's timeout), so that a cancelled request stops waiting for Vault.
func (s *TransitSigner) WithContext(ctx context.Context) *TransitSigner {
	c := *s
	c.ctx = ctx
	return &c
}

// Sign signs digest with the pinned key version in Vault. For ECDSA and RSA,
// digest is a hash made with opts.HashFunc(); *rsa.PSSOptions selects RSA-PSS
// with the salt length equal to the hash length (the only PSS salt length
// Go's x509 verifies), otherwise RSA signs PKCS #1 v1.5. For Ed25519, digest
// is the whole message and opts.HashFunc() must be zero.
func (s *TransitSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx := s.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	return s.SignContext(ctx, digest, opts)
}

// SignContext is Sign bound to ctx.
func (s *TransitSigner) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	input := base64.StdEncoding.EncodeToString(digest)
	path := s.transit.mount + "/sign/" + s.name
	if s.typ != KeyEd25519 {
		alg, err := vaultHashName(opts.HashFunc())
		if err != nil {
			return nil, fmt.Errorf("transit key %s version %d: %w", s.name, s.version, err)
		}
		if len(digest) != opts.HashFunc().Size() {
			return nil, fmt.Errorf("transit key %s version %d: digest is %d bytes, want %d for %v", s.name, s.version, len(digest), opts.HashFunc().Size(), opts.HashFunc())
		}
		key := batchKey{path: path + "/" + alg, version: s.version}
		if _, isRSA := s.pub.(*rsa.PublicKey); isRSA {
			key.sigAlg = "pkcs1v15"
			if pss, ok := opts.(*rsa.PSSOptions); ok {
				if pss.SaltLength != rsa.PSSSaltLengthEqualsHash && pss.SaltLength != pss.Hash.Size() {
					return nil, fmt.Errorf("transit key %s version %d: only PSS with salt length equal to the hash length is supported", s.name, s.version)
				}
				key.sigAlg = "pss"
			}
		}
		b, err := s.transit.batcher(s.name, key)
		if err != nil {
			return nil, err
		}
		cctx, cancel := s.transit.ctx(ctx)
		defer cancel()
		return b.sign(cctx, input)
	}
	// Ed25519 signs the whole message, one request each (checkpoints are
	// rare).
	if opts.HashFunc() != 0 {
		return nil, fmt.Errorf("transit key %s version %d: ed25519 signs whole messages, got a %v digest", s.name, s.version, opts.HashFunc())
	}
	if s.transit.life.Err() != nil {
		return nil, vaultErr("sign with", s.transit.mount+"/keys/"+s.name, s.version, ErrClosed)
	}
	body := map[string]any{"input": input, "key_version": s.version}
	cctx, cancel := s.transit.ctx(ctx)
	defer cancel()
	defer context.AfterFunc(s.transit.life, cancel)()
	start := time.Now()
	sec, err := s.transit.client.Logical().WriteWithContext(cctx, path, body)
	if o := s.transit.observe; o != nil {
		o("sign", time.Since(start), err)
	}
	if err != nil && s.transit.life.Err() != nil {
		err = ErrClosed
	}
	if err != nil {
		return nil, vaultErr("sign with", s.transit.mount+"/keys/"+s.name, s.version, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, vaultErr("sign with", s.transit.mount+"/keys/"+s.name, s.version, errors.New("empty response"))
	}
	text, _ := sec.Data["signature"].(string)
	ver, sig, err := ParseTransitSignature(text)
	if err != nil {
		return nil, vaultErr("sign with", s.transit.mount+"/keys/"+s.name, s.version, err)
	}
	if ver != s.version {
		return nil, vaultErr("sign with", s.transit.mount+"/keys/"+s.name, s.version,
			fmt.Errorf("vault signed with version %d, not the pinned version", ver))
	}
	return sig, nil
}

// ParseTransitSignature parses Vault's "vault:v<N>:<base64>" signature
// format, for any N ≥ 1.
func ParseTransitSignature(s string) (version int, sig []byte, err error) {
	rest, ok := strings.CutPrefix(s, "vault:v")
	if !ok {
		return 0, nil, fmt.Errorf("signature %q does not start with vault:v", truncate(s))
	}
	num, b64, ok := strings.Cut(rest, ":")
	if !ok {
		return 0, nil, fmt.Errorf("signature %q has no version separator", truncate(s))
	}
	version, err = strconv.Atoi(num)
	if err != nil || version < 1 || num != strconv.Itoa(version) {
		return 0, nil, fmt.Errorf("signature %q has a malformed version %q", truncate(s), num)
	}
	sig, err = base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sig) == 0 {
		return 0, nil, fmt.Errorf("signature %q is not base64", truncate(s))
	}
	return version, sig, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

func vaultHashName(h crypto.Hash) (string, error) {
	switch h {
	case crypto.SHA256:
		return "sha2-256", nil
	case crypto.SHA384:
		return "sha2-384", nil
	case crypto.SHA512:
		return "sha2-512", nil
	}
	return "", fmt.Errorf("unsupported hash %v", h)
}
