package issuer

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/transitca/transitca/internal/atomicfile"
)

// rotationSchema is the version of the RotationState encoding.
const rotationSchema = 1

// RotationState is the shared state of the CA's key hierarchy. Versions are
// key versions of the root key (Options.RootKey).
type RotationState struct {
	// Schema is the encoding version; a state with a newer one is refused.
	Schema int `json:"schema"`
	// Revision is the store's revision of this state: the KV version in
	// Vault, a counter kept in the file in dev mode. The store sets it.
	Revision int `json:"revision"`
	// ActiveRoot is the root version that certifies new intermediates.
	ActiveRoot int `json:"active_root"`
	// PreparedRoot is a root version in the trust bundle waiting to become
	// active (0: none), since PreparedAt.
	PreparedRoot int       `json:"prepared_root,omitempty"`
	PreparedAt   time.Time `json:"prepared_at,omitzero"`
	// BundleRoots are the root versions in the trust bundle: the active
	// one, the prepared one, and old ones still needed by live leaves.
	BundleRoots []int `json:"bundle_roots"`
	// CompromisedRoots are never trusted nor used again.
	CompromisedRoots []int `json:"compromised_roots,omitempty"`
	// CompromisedIntermediates are hex SHA-256 fingerprints (Fingerprint)
	// of intermediates the authority never signs with again, and through
	// which no certificate authenticates.
	CompromisedIntermediates []string `json:"compromised_intermediates,omitempty"`
	// Revoked describes entries of CompromisedIntermediates: the key each
	// certified, when it was known, and until when the entry is kept. A
	// fingerprint without a description (written by an older program) is
	// kept for good.
	Revoked []RevokedIntermediate `json:"revoked_intermediates,omitempty"`
	// UpdatedAt is when the state was last written.
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// RevokedIntermediate describes a compromised intermediate.
type RevokedIntermediate struct {
	// Fingerprint is the intermediate's, as in CompromisedIntermediates.
	Fingerprint string `json:"fingerprint"`
	// Key is KeyFingerprint of the key it certified, "" when unknown.
	// Every certificate for that key is compromised too: in the vault mode
	// a Transit key version is certified again at half its life.
	Key string `json:"key,omitempty"`
	// RevokedAt is when it was declared compromised.
	RevokedAt time.Time `json:"revoked_at"`
	// Until is when nothing can chain through it or its key any more: the
	// intermediate's NotAfter, and at least the longest life of an
	// intermediate certified before RevokedAt. The entry is dropped after
	// it.
	Until time.Time `json:"until"`
}

// MaxCompromisedIntermediates bounds CompromisedIntermediates. Only
// intermediates the CA issued can be revoked without force, and entries
// leave the list once nothing can chain through them, so it is reached
// only by many forced revocations; each entry is about 200 bytes of the
// state every replica reads at each poll.
const MaxCompromisedIntermediates = 1000

func (s *RotationState) clone() *RotationState {
	c := *s
	c.BundleRoots = slices.Clone(s.BundleRoots)
	c.CompromisedRoots = slices.Clone(s.CompromisedRoots)
	c.CompromisedIntermediates = slices.Clone(s.CompromisedIntermediates)
	c.Revoked = slices.Clone(s.Revoked)
	return &c
}

// KeyCompromised reports whether key (a KeyFingerprint) is the key of a
// compromised intermediate.
func (s *RotationState) KeyCompromised(key string) bool {
	if key == "" {
		return false
	}
	for _, r := range s.Revoked {
		if r.Key == key {
			return true
		}
	}
	return false
}

// CertCompromised reports whether cert is a compromised intermediate or
// certifies the key of one.
func (s *RotationState) CertCompromised(cert *x509.Certificate) bool {
	return s.IntermediateCompromised(Fingerprint(cert)) || s.KeyCompromised(KeyFingerprint(cert.PublicKey))
}

// pruneRevoked drops the compromised intermediates whose Until is before
// now: nothing chains through them any more.
func (s *RotationState) pruneRevoked(now time.Time) {
	gone := map[string]bool{}
	s.Revoked = slices.DeleteFunc(s.Revoked, func(r RevokedIntermediate) bool {
		if r.Until.Before(now) {
			gone[r.Fingerprint] = true
			return true
		}
		return false
	})
	s.CompromisedIntermediates = slices.DeleteFunc(s.CompromisedIntermediates, func(fp string) bool { return gone[fp] })
}

// InBundle reports whether root version v is in the trust bundle.
func (s *RotationState) InBundle(v int) bool { return slices.Contains(s.BundleRoots, v) }

// RootCompromised reports whether root version v was declared compromised.
func (s *RotationState) RootCompromised(v int) bool { return slices.Contains(s.CompromisedRoots, v) }

// IntermediateCompromised reports whether the intermediate with that
// fingerprint was declared compromised.
func (s *RotationState) IntermediateCompromised(fingerprint string) bool {
	return slices.Contains(s.CompromisedIntermediates, strings.ToLower(fingerprint))
}

// Validate checks the state's invariants.
func (s *RotationState) Validate() error {
	switch {
	case s.Schema > rotationSchema:
		return fmt.Errorf("rotation state schema %d is newer than this program's %d", s.Schema, rotationSchema)
	case s.ActiveRoot < 1:
		return fmt.Errorf("rotation state: active root version %d", s.ActiveRoot)
	case !s.InBundle(s.ActiveRoot):
		return fmt.Errorf("rotation state: active root version %d is not in the trust bundle %v", s.ActiveRoot, s.BundleRoots)
	case s.RootCompromised(s.ActiveRoot):
		return fmt.Errorf("rotation state: active root version %d is compromised", s.ActiveRoot)
	case s.PreparedRoot != 0 && (s.PreparedRoot == s.ActiveRoot || !s.InBundle(s.PreparedRoot)):
		return fmt.Errorf("rotation state: prepared root version %d is the active one or not in the trust bundle %v", s.PreparedRoot, s.BundleRoots)
	}
	for _, v := range s.BundleRoots {
		if s.RootCompromised(v) {
			return fmt.Errorf("rotation state: compromised root version %d is in the trust bundle", v)
		}
	}
	for _, fp := range s.CompromisedIntermediates {
		if err := CheckFingerprint(fp); err != nil {
			return fmt.Errorf("rotation state: compromised intermediate: %w", err)
		}
	}
	for _, r := range s.Revoked {
		if !s.IntermediateCompromised(r.Fingerprint) {
			return fmt.Errorf("rotation state: revoked intermediate %s is not among the compromised ones", r.Fingerprint)
		}
		if r.Key != "" {
			if err := CheckFingerprint(r.Key); err != nil {
				return fmt.Errorf("rotation state: key of revoked intermediate %s: %w", r.Fingerprint, err)
			}
		}
	}
	return nil
}

// CheckFingerprint returns an error wrapping ErrBadFingerprint unless fp
// is a lowercase hex SHA-256, as Fingerprint and KeyFingerprint write
// them.
func CheckFingerprint(fp string) error {
	if b, err := hex.DecodeString(fp); err != nil || len(b) != 32 || fp != strings.ToLower(fp) {
		return fmt.Errorf("%w: %q is not a lowercase hex SHA-256", ErrBadFingerprint, fp)
	}
	return nil
}

func decodeState(data []byte) (*RotationState, error) {
	var st RotationState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("rotation state: %w", err)
	}
	if err := st.Validate(); err != nil {
		return nil, err
	}
	return &st, nil
}

// StateStore keeps the RotationState where every replica finds it. See
// "Durability and concurrency" above for what implementations MUST do.
type StateStore interface {
	// Load returns the stored state and its revision, or nil and 0 when no
	// state was stored yet.
	Load(ctx context.Context) (st *RotationState, rev int, err error)
	// Store writes st if the stored revision is still rev (0: none stored
	// yet) and returns the new revision. When another writer got there
	// first, it returns an error wrapping ErrStateConflict.
	Store(ctx context.Context, st *RotationState, rev int) (newRev int, err error)
}

// MemoryState is a StateStore in process memory, for tests. Open uses one
// when Options.State is nil.
type MemoryState struct {
	mu   sync.Mutex
	data []byte
	rev  int
}

// NewMemoryState returns an empty in-memory state store.
func NewMemoryState() *MemoryState { return &MemoryState{} }

// Load returns the stored state.
func (m *MemoryState) Load(context.Context) (*RotationState, int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data == nil {
		return nil, 0, nil
	}
	st, err := decodeState(m.data)
	return st, m.rev, err
}

// Store writes st if the revision is still rev.
func (m *MemoryState) Store(_ context.Context, st *RotationState, rev int) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rev != m.rev {
		return 0, fmt.Errorf("%w: revision %d, stored %d", ErrStateConflict, rev, m.rev)
	}
	c := st.clone()
	c.Revision = rev + 1
	data, err := json.Marshal(c)
	if err != nil {
		return 0, err
	}
	m.data, m.rev = data, rev+1
	return m.rev, nil
}

// FileState is the dev-mode StateStore: one JSON file, the revision inside
// it, replaced atomically (internal/atomicfile: temporary file, fsync,
// rename, then fsync of the directory). Store holds an advisory lock on
// "<path>.lock" (on Unix) around its compare-and-set, so that two processes
// on one data directory cannot both win.
type FileState struct {
	path string
	mu   sync.Mutex
}

// NewFileState returns the state store kept in the file at path, e.g.
// <data_dir>/rotation.json.
func NewFileState(path string) *FileState { return &FileState{path: path} }

// Describe names the file.
func (f *FileState) Describe() string { return "file " + f.path }

func (f *FileState) read() (*RotationState, int, error) {
	data, err := os.ReadFile(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	st, err := decodeState(data)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", f.path, err)
	}
	if st.Revision < 1 {
		return nil, 0, fmt.Errorf("%s: rotation state has revision %d", f.path, st.Revision)
	}
	return st, st.Revision, nil
}

// Load reads the file.
func (f *FileState) Load(context.Context) (*RotationState, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.read()
}

// Store replaces the file if its revision is still rev.
func (f *FileState) Store(_ context.Context, st *RotationState, rev int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
		return 0, err
	}
	unlock, err := lockFile(f.path + ".lock")
	if err != nil {
		return 0, fmt.Errorf("lock %s: %w", f.path, err)
	}
	defer unlock()
	_, cur, err := f.read()
	if err != nil {
		return 0, err
	}
	if cur != rev {
		return 0, fmt.Errorf("%w: %s has revision %d, not %d", ErrStateConflict, f.path, cur, rev)
	}
	c := st.clone()
	c.Revision = rev + 1
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return 0, err
	}
	if err := atomicfile.Write(f.path, append(data, '\n'), 0o600); err != nil {
		return 0, err
	}
	return c.Revision, nil
}

// VaultState keeps the rotation state in a Vault KV version 2 engine, at
// <mount>/data/<prefix>/rotation (the same mount and prefix as
// VaultCerts), as JSON under the key "state". Its revision is the KV
// version; Store writes with check-and-set on it.
type VaultState struct {
	kv   kv
	path string
}

// NewVaultState returns the state store in the KV v2 engine at mount
// ("secret" when empty), under prefix ("transitca" when empty).
func NewVaultState(client *vault.Client, mount, prefix string, timeout time.Duration) *VaultState {
	k, prefix := newKV(client, mount, prefix, timeout)
	return &VaultState{kv: k, path: path.Join(prefix, "rotation")}
}

// Describe names the KV path.
func (v *VaultState) Describe() string { return "vault kv " + v.kv.describe(v.path) }

// Load reads the state and its KV version.
func (v *VaultState) Load(ctx context.Context) (*RotationState, int, error) {
	text, rev, found, err := v.kv.get(ctx, "read rotation state", v.path, "state")
	if err != nil || !found {
		return nil, 0, err
	}
	st, err := decodeState([]byte(text))
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", v.kv.describe(v.path), err)
	}
	st.Revision = rev
	return st, rev, nil
}

// Store writes st with check-and-set on KV version rev.
func (v *VaultState) Store(ctx context.Context, st *RotationState, rev int) (int, error) {
	c := st.clone()
	c.Revision = rev + 1
	data, err := json.Marshal(c)
	if err != nil {
		return 0, err
	}
	next, err := v.kv.put(ctx, v.path, "state", string(data), rev)
	if casConflict(err) {
		return 0, fmt.Errorf("%w: %s is past KV version %d", ErrStateConflict, v.kv.describe(v.path), rev)
	}
	if err != nil {
		return 0, vaultErr("write rotation state", v.kv.describe(v.path), 0, err)
	}
	return next, nil
}
