package issuer

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Mode is where the issuing intermediate's key lives.
type Mode string

// The intermediate modes.
const (
	// ModeMemory: an ECDSA P-256 key generated at start and never written
	// to disk; issuance needs no Vault round trip.
	ModeMemory Mode = "memory"
	// ModeVault: the intermediate key is a Transit key; every leaf is signed
	// in Vault.
	ModeVault Mode = "vault"
)

// Defaults for Options.
const (
	DefaultRootKey         = "transitca-root"
	DefaultIntermediateKey = "transitca-intermediate"
	DefaultRootTTL         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateTTL = 60 * 24 * time.Hour
	// DefaultStatePollInterval is how often Run reads the rotation state
	// for changes made by other replicas.
	DefaultStatePollInterval = 30 * time.Second
)

// Options configure the CA hierarchy.
type Options struct {
	RootKey             string  // Transit key name of the root; DefaultRootKey when empty
	RootKeyType         KeyType // KeyECDSAP256 when empty
	IntermediateKey     string  // Transit key name in ModeVault; DefaultIntermediateKey when empty
	IntermediateKeyType KeyType // in ModeVault; KeyECDSAP256 when empty
	Mode                Mode    // ModeMemory when empty
	Organization        string  // subject O of CA certificates; "transitca" when empty
	RootTTL             time.Duration
	// IntermediateTTL is the intermediate's lifetime. It is renewed at half
	// of it, so it should be at least twice the longest leaf TTL.
	IntermediateTTL time.Duration
	// Dev labels every CA certificate DEV-ONLY.
	Dev bool
	// OnIntermediate, when set, is told of every intermediate before it is
	// put to use (for the issuance log); an error keeps the previous one in
	// use (or fails Open).
	OnIntermediate func(ctx context.Context, in *Intermediate) error
	// State keeps the rotation state shared by replicas and restarts:
	// NewVaultState in production, NewFileState in dev mode. When nil, Open
	// keeps the state in memory (NewMemoryState); the authority then issues
	// as before but refuses every step that writes the state
	// (ErrNoStateStore), since a root rotation that a restart forgets
	// would put an unprepared root to use.
	State StateStore
	// StatePollInterval is how often Run re-reads the state (Reload);
	// DefaultStatePollInterval when zero.
	StatePollInterval time.Duration
	Now               func() time.Time
	Logger            *slog.Logger
}

func (o *Options) defaults() {
	if o.RootKey == "" {
		o.RootKey = DefaultRootKey
	}
	if o.RootKeyType == "" {
		o.RootKeyType = KeyECDSAP256
	}
	if o.IntermediateKey == "" {
		o.IntermediateKey = DefaultIntermediateKey
	}
	if o.IntermediateKeyType == "" {
		o.IntermediateKeyType = KeyECDSAP256
	}
	if o.Mode == "" {
		o.Mode = ModeMemory
	}
	if o.Organization == "" {
		o.Organization = "transitca"
	}
	if o.RootTTL <= 0 {
		o.RootTTL = DefaultRootTTL
	}
	if o.IntermediateTTL <= 0 {
		o.IntermediateTTL = DefaultIntermediateTTL
	}
	if o.StatePollInterval <= 0 {
		o.StatePollInterval = DefaultStatePollInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

func (o *Options) validate() error {
	if err := checkCAKeyType("root key type", o.RootKeyType); err != nil {
		return err
	}
	if o.Mode != ModeMemory && o.Mode != ModeVault {
		return fmt.Errorf("intermediate mode %q: want %q or %q", o.Mode, ModeMemory, ModeVault)
	}
	if o.Mode == ModeVault {
		if err := checkCAKeyType("intermediate key type", o.IntermediateKeyType); err != nil {
			return err
		}
	}
	if o.IntermediateTTL >= o.RootTTL {
		return fmt.Errorf("intermediate TTL %v must be shorter than the root TTL %v", o.IntermediateTTL, o.RootTTL)
	}
	return nil
}

func (o *Options) name(cn string) pkix.Name {
	org := o.Organization
	if o.Dev {
		cn = DevOnlyLabel + " " + cn
		org = DevOnlyLabel + " " + org
	}
	return pkix.Name{CommonName: cn, Organization: []string{org}}
}

func rootCertName(key string, version int) string {
	return "root/" + key + "/v" + strconv.Itoa(version)
}

func intermediateCertName(key string, version int) string {
	return "intermediate/" + key + "/v" + strconv.Itoa(version)
}

// InitResult says what Init did.
type InitResult struct {
	KeyCreated             bool // the root key was created
	RootCreated            bool // the root certificate was created
	IntermediateKeyCreated bool // ModeVault: the intermediate key was created
	Root                   *x509.Certificate
	RootKeyVersion         int
}

// Init makes the CA ready, idempotently: it creates the non-exportable root
// key unless it exists, builds the self-signed root certificate through the
// key store unless one is stored for the key's latest version, and in
// ModeVault creates the intermediate key. Running it again changes nothing.
func Init(ctx context.Context, keys Keys, certs Certs, o Options) (*InitResult, error) {
	o.defaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	res := &InitResult{}
	var err error
	if res.KeyCreated, err = keys.EnsureKey(ctx, o.RootKey, o.RootKeyType); err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	signer, err := keys.Signer(ctx, o.RootKey, 0)
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	res.RootKeyVersion = signer.KeyVersion()
	name := rootCertName(o.RootKey, signer.KeyVersion())
	root, _, err := certs.Load(ctx, name)
	switch {
	case err == nil:
		if err := matchesKey(root, signer.Public()); err != nil {
			return nil, fmt.Errorf("stored root certificate %s: %w", name, err)
		}
	case errors.Is(err, ErrCertNotFound):
		root, err = selfSign(ctx, signer, &o)
		if err != nil {
			return nil, err
		}
		root, res.RootCreated, err = certs.Store(ctx, name, root, 0)
		if err != nil {
			return nil, fmt.Errorf("store root certificate: %w", err)
		}
	default:
		return nil, err
	}
	res.Root = root
	if o.Mode == ModeVault {
		if res.IntermediateKeyCreated, err = keys.EnsureKey(ctx, o.IntermediateKey, o.IntermediateKeyType); err != nil {
			return nil, fmt.Errorf("intermediate key: %w", err)
		}
	}
	return res, nil
}

func selfSign(ctx context.Context, signer KeySigner, o *Options) (*x509.Certificate, error) {
	notBefore, notAfter := Validity(o.Now(), o.RootTTL)
	tmpl := &x509.Certificate{
		Subject:               o.name("transitca root CA"),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
		SubjectKeyId:          keyID(signer.Public()),
	}
	cert, err := createCert(ctx, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("self-sign root with key %s version %d: %w", signer.KeyName(), signer.KeyVersion(), err)
	}
	return cert, nil
}

// Intermediate is an issuing CA certificate and the signer for its key.
type Intermediate struct {
	Cert   *x509.Certificate
	Signer crypto.Signer
	Mode   Mode
	// KeyVersion is the Transit key version in ModeVault, 0 in ModeMemory.
	KeyVersion int
	// RootKeyVersion is the root key version that certified Cert.
	RootKeyVersion int
	// Fingerprint is the hex SHA-256 of Cert.Raw.
	Fingerprint string
	// RenewAt is when the intermediate is past half its life.
	RenewAt time.Time
}

// rootSet is the root side of the hierarchy as one rotation state makes
// it: immutable once built, replaced whole when the state changes.
type rootSet struct {
	st     *RotationState
	certs  map[int]*x509.Certificate // by root version: bundle, active, prepared, and compromised ones still stored
	active *x509.Certificate
	signer KeySigner // the active root's pinned version
}

// Authority is a running CA: the roots, the trust bundle and the current
// issuing intermediate. Its methods are safe for concurrent use; the steps
// that change the hierarchy run one at a time.
type Authority struct {
	keys      Keys
	certs     Certs
	state     StateStore
	ephemeral bool // state is the implicit in-memory store
	o         Options

	// op serializes the steps that change the hierarchy (Renew, Reload and
	// the rotation steps), so that each reads, decides and writes alone.
	op sync.Mutex

	mu    sync.RWMutex
	roots *rootSet
	cur   *Intermediate
}

// Open loads the rotation state (deriving and storing it on first use:
// the root key's latest version active, alone in the trust bundle), loads
// the root certificates it names (run Init first: Open returns an error
// wrapping ErrNotInitialized otherwise) and sets up an issuing intermediate
// under the active root.
func Open(ctx context.Context, keys Keys, certs Certs, o Options) (*Authority, error) {
	o.defaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	a := &Authority{keys: keys, certs: certs, state: o.State, o: o}
	if a.state == nil {
		a.state, a.ephemeral = NewMemoryState(), true
	}
	latest, err := keys.Signer(ctx, o.RootKey, 0)
	if errors.Is(err, ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: root key %s does not exist (%s); run \"ca init\"", ErrNotInitialized, o.RootKey, keys.Describe())
	}
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	rs, err := a.loadOrDerive(ctx, latest.KeyVersion())
	if err != nil {
		return nil, err
	}
	a.roots = rs
	a.op.Lock()
	defer a.op.Unlock()
	if err := a.renew(ctx, 0); err != nil {
		return nil, err
	}
	return a, nil
}

// loadOrDerive returns the stored state's roots, or derives the state of a
// CA that never rotated (latest active, alone in the bundle) and stores it.
func (a *Authority) loadOrDerive(ctx context.Context, latest int) (*rootSet, error) {
	for range 2 {
		st, _, err := a.state.Load(ctx)
		if err != nil {
			return nil, fmt.Errorf("load rotation state: %w", err)
		}
		if st != nil {
			return a.buildRoots(ctx, st, nil)
		}
		st = &RotationState{Schema: rotationSchema, ActiveRoot: latest, BundleRoots: []int{latest}, UpdatedAt: a.o.Now().UTC()}
		rs, err := a.buildRoots(ctx, st, nil)
		if err != nil {
			return nil, err
		}
		rev, err := a.state.Store(ctx, st, 0)
		if errors.Is(err, ErrStateConflict) {
			continue // another replica derived it first: use theirs
		}
		if err != nil {
			return nil, fmt.Errorf("store rotation state: %w", err)
		}
		st.Revision = rev
		a.o.Logger.InfoContext(ctx, "rotation state derived", slog.Int("active_root", latest))
		return rs, nil
	}
	return nil, fmt.Errorf("load rotation state: %w", ErrStateConflict)
}

// buildRoots loads and checks the root certificates st names, reusing
// those of prev.
func (a *Authority) buildRoots(ctx context.Context, st *RotationState, prev *rootSet) (*rootSet, error) {
	if err := st.Validate(); err != nil {
		return nil, err
	}
	rs := &rootSet{st: st, certs: map[int]*x509.Certificate{}}
	need := slices.Clone(st.BundleRoots)
	for _, v := range need {
		if prev != nil && prev.certs[v] != nil {
			rs.certs[v] = prev.certs[v]
			continue
		}
		cert, _, err := a.rootCert(ctx, v)
		if errors.Is(err, ErrCertNotFound) {
			return nil, fmt.Errorf("%w: no root certificate for key %s version %d; run \"ca init\"", ErrNotInitialized, a.o.RootKey, v)
		}
		if err != nil {
			return nil, err
		}
		rs.certs[v] = cert
	}
	for _, v := range st.CompromisedRoots {
		// Kept for Status only, when still stored; never trusted.
		if prev != nil && prev.certs[v] != nil {
			rs.certs[v] = prev.certs[v]
		} else if cert, _, err := a.rootCert(ctx, v); err == nil {
			rs.certs[v] = cert
		}
	}
	rs.active = rs.certs[st.ActiveRoot]
	if prev != nil && prev.st.ActiveRoot == st.ActiveRoot {
		rs.signer = prev.signer
	} else {
		signer, err := a.keys.Signer(ctx, a.o.RootKey, st.ActiveRoot)
		if err != nil {
			return nil, fmt.Errorf("root key: %w", err)
		}
		rs.signer = signer
	}
	return rs, nil
}

// rootCert loads the stored root certificate of root version v and checks
// that it certifies that key version.
func (a *Authority) rootCert(ctx context.Context, v int) (*x509.Certificate, KeySigner, error) {
	signer, err := a.keys.Signer(ctx, a.o.RootKey, v)
	if err != nil {
		return nil, nil, fmt.Errorf("root key: %w", err)
	}
	name := rootCertName(a.o.RootKey, v)
	cert, _, err := a.certs.Load(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	if err := matchesKey(cert, signer.Public()); err != nil {
		return nil, nil, fmt.Errorf("stored root certificate %s: %w", name, err)
	}
	return cert, signer, nil
}

func (a *Authority) rootsNow() *rootSet {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.roots
}

// Root returns the active root certificate: the one that certifies new
// intermediates.
func (a *Authority) Root() *x509.Certificate { return a.rootsNow().active }

// RootKeyVersion returns the root key version of the active root.
func (a *Authority) RootKeyVersion() int { return a.rootsNow().st.ActiveRoot }

// Roots returns the trust bundle: every root a relying party should trust.
// The order is stable: the active root, then the prepared one, then older
// roots still needed, newest first. A compromised root is never in it.
func (a *Authority) Roots() []*x509.Certificate {
	rs := a.rootsNow()
	out := make([]*x509.Certificate, 0, len(rs.st.BundleRoots))
	for _, v := range bundleOrder(rs.st) {
		out = append(out, rs.certs[v])
	}
	return out
}

// bundleOrder is the order of Roots: active, prepared, the rest newest
// first, compromised versions left out.
func bundleOrder(st *RotationState) []int {
	rest := slices.Clone(st.BundleRoots)
	slices.Sort(rest)
	slices.Reverse(rest)
	out := []int{st.ActiveRoot}
	if st.PreparedRoot != 0 {
		out = append(out, st.PreparedRoot)
	}
	for _, v := range rest {
		if v != st.ActiveRoot && v != st.PreparedRoot && !st.RootCompromised(v) {
			out = append(out, v)
		}
	}
	return out
}

// RootPool returns the trust bundle as a pool.
func (a *Authority) RootPool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range a.Roots() {
		p.AddCert(r)
	}
	return p
}

// Mode returns the intermediate mode.
func (a *Authority) Mode() Mode { return a.o.Mode }

// Describe says where the keys live.
func (a *Authority) Describe() string { return a.keys.Describe() }

// Intermediate returns the current issuing intermediate.
func (a *Authority) Intermediate() *Intermediate {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.cur
}

// Renew replaces the issuing intermediate with a fresh one under the active
// root. In ModeMemory it generates a new key; in ModeVault it reuses a
// certificate another replica stored for the key's latest version while
// that is under the active root, not compromised and not past half its
// life, and otherwise certifies the key anew.
func (a *Authority) Renew(ctx context.Context) error {
	a.op.Lock()
	defer a.op.Unlock()
	return a.renew(ctx, 0)
}

// renew makes and installs a new intermediate. In ModeVault, rotateFrom > 0
// asks for a key version newer than rotateFrom as well. a.op is held.
func (a *Authority) renew(ctx context.Context, rotateFrom int) error {
	rs := a.rootsNow()
	var (
		next *Intermediate
		err  error
	)
	if a.o.Mode == ModeVault {
		next, err = a.vaultIntermediate(ctx, rs, rotateFrom)
	} else {
		next, err = a.memoryIntermediate(ctx, rs)
	}
	if err != nil {
		return err
	}
	return a.install(ctx, next)
}

// install puts next to use once OnIntermediate has recorded it. Requests
// in flight keep the *Intermediate they read.
func (a *Authority) install(ctx context.Context, next *Intermediate) error {
	if a.o.OnIntermediate != nil {
		if err := a.o.OnIntermediate(ctx, next); err != nil {
			return fmt.Errorf("record intermediate: %w", err)
		}
	}
	a.mu.Lock()
	a.cur = next
	a.mu.Unlock()
	a.o.Logger.InfoContext(ctx, "issuing intermediate ready",
		slog.String("mode", string(next.Mode)),
		slog.String("subject", next.Cert.Subject.String()),
		slog.String("fingerprint", next.Fingerprint),
		slog.Int("root_key_version", next.RootKeyVersion),
		slog.Time("not_after", next.Cert.NotAfter),
		slog.Time("renew_at", next.RenewAt))
	return nil
}

func (a *Authority) memoryIntermediate(ctx context.Context, rs *rootSet) (*Intermediate, error) {
	key, err := GenerateKey(KeyECDSAP256)
	if err != nil {
		return nil, err
	}
	cert, err := a.certify(ctx, rs, key.Public())
	if err != nil {
		return nil, err
	}
	return newIntermediate(cert, key, ModeMemory, 0, rs.st.ActiveRoot), nil
}

// vaultIntermediate certifies the intermediate key's latest version, or
// reuses the certificate stored for it. When the latest version is not past
// rotateFrom (> 0), or its stored certificate is compromised, it first adds
// a key version.
func (a *Authority) vaultIntermediate(ctx context.Context, rs *rootSet, rotateFrom int) (*Intermediate, error) {
	signer, err := a.keys.Signer(ctx, a.o.IntermediateKey, 0)
	if errors.Is(err, ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: intermediate key %s does not exist; run \"ca init\" with the vault intermediate mode", ErrNotInitialized, a.o.IntermediateKey)
	}
	if err != nil {
		return nil, fmt.Errorf("intermediate key: %w", err)
	}
	if rotateFrom > 0 && signer.KeyVersion() <= rotateFrom {
		if signer, err = a.rotateFrom(ctx, a.o.IntermediateKey, signer.KeyVersion()); err != nil {
			return nil, err
		}
	}
	name := intermediateCertName(a.o.IntermediateKey, signer.KeyVersion())
	stored, rev, err := a.certs.Load(ctx, name)
	if err != nil && !errors.Is(err, ErrCertNotFound) {
		return nil, err
	}
	if err == nil && rs.st.IntermediateCompromised(Fingerprint(stored)) {
		// The certificate of this key version was declared compromised:
		// never certify this version again.
		a.o.Logger.WarnContext(ctx, "stored intermediate is compromised; rotating its key",
			slog.String("fingerprint", Fingerprint(stored)), slog.Int("key_version", signer.KeyVersion()))
		if signer, err = a.rotateFrom(ctx, a.o.IntermediateKey, signer.KeyVersion()); err != nil {
			return nil, err
		}
		name = intermediateCertName(a.o.IntermediateKey, signer.KeyVersion())
		if stored, rev, err = a.certs.Load(ctx, name); err != nil && !errors.Is(err, ErrCertNotFound) {
			return nil, err
		}
	}
	now := a.o.Now()
	if err == nil && a.usable(rs, stored, signer.Public(), now) {
		return newIntermediate(stored, signer, ModeVault, signer.KeyVersion(), rs.st.ActiveRoot), nil
	}
	cert, err := a.certify(ctx, rs, signer.Public())
	if err != nil {
		return nil, err
	}
	current, _, err := a.certs.Store(ctx, name, cert, rev)
	if err != nil {
		return nil, fmt.Errorf("store intermediate certificate: %w", err)
	}
	if !a.usable(rs, current, signer.Public(), now) {
		// Another replica stored one this replica cannot use (under
		// another root while the replicas' states differ, or compromised):
		// use our own, unshared. It is recorded like any other.
		current = cert
	}
	return newIntermediate(current, signer, ModeVault, signer.KeyVersion(), rs.st.ActiveRoot), nil
}

// rotateFrom adds a version to key unless its latest version is already
// past from (another replica, or a run cut short, rotated it), and returns
// a signer for the latest version.
func (a *Authority) rotateFrom(ctx context.Context, key string, from int) (KeySigner, error) {
	latest, err := a.keys.Signer(ctx, key, 0)
	if err != nil {
		return nil, err
	}
	if latest.KeyVersion() > from {
		return latest, nil
	}
	r, ok := a.keys.(KeyRotator)
	if !ok {
		return nil, fmt.Errorf("key store %s cannot rotate keys", a.keys.Describe())
	}
	v, err := r.Rotate(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("rotate key %s: %w", key, err)
	}
	return a.keys.Signer(ctx, key, v)
}

// usable reports whether a stored intermediate was issued by the active
// root for pub, is not compromised and is not yet past half its life.
func (a *Authority) usable(rs *rootSet, cert *x509.Certificate, pub crypto.PublicKey, now time.Time) bool {
	if cert == nil || matchesKey(cert, pub) != nil || cert.CheckSignatureFrom(rs.active) != nil {
		return false
	}
	if rs.st.IntermediateCompromised(Fingerprint(cert)) {
		return false
	}
	return now.Before(HalfLife(cert))
}

// certify signs an intermediate certificate for pub with the active root
// key. Its validity period is the intermediate TTL, cut short at the root's
// NotAfter.
func (a *Authority) certify(ctx context.Context, rs *rootSet, pub crypto.PublicKey) (*x509.Certificate, error) {
	ski := keyID(pub)
	notBefore, notAfter := Validity(a.o.Now(), a.o.IntermediateTTL)
	if notAfter.After(rs.active.NotAfter) {
		notAfter = rs.active.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:               a.o.name("transitca issuing CA " + hex.EncodeToString(ski[:4])),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
	}
	cert, err := createCert(ctx, tmpl, rs.active, pub, rs.signer)
	if err != nil {
		return nil, fmt.Errorf("certify intermediate with root key %s version %d: %w", rs.signer.KeyName(), rs.signer.KeyVersion(), err)
	}
	return cert, nil
}

func newIntermediate(cert *x509.Certificate, signer crypto.Signer, mode Mode, version, rootVersion int) *Intermediate {
	return &Intermediate{
		Cert:           cert,
		Signer:         signer,
		Mode:           mode,
		KeyVersion:     version,
		RootKeyVersion: rootVersion,
		Fingerprint:    Fingerprint(cert),
		RenewAt:        HalfLife(cert),
	}
}

// HalfLife returns the middle of cert's validity period: when transitca
// renews a certificate it issued itself (intermediates, the serving
// certificate).
func HalfLife(cert *x509.Certificate) time.Time {
	return cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 2)
}

// Run renews the intermediate whenever it passes half its life, and reads
// the rotation state every Options.StatePollInterval (Reload), until ctx
// ends. A failed renewal is logged and retried; the current intermediate
// stays in use meanwhile.
func (a *Authority) Run(ctx context.Context) {
	const retry = 30 * time.Second
	poll := time.NewTicker(a.o.StatePollInterval)
	defer poll.Stop()
	var retryAt time.Time
	for {
		at := a.Intermediate().RenewAt
		if !retryAt.IsZero() {
			at = retryAt
		}
		t := time.NewTimer(max(time.Until(at), 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-poll.C:
			t.Stop()
			if err := a.Reload(ctx); err != nil {
				a.o.Logger.ErrorContext(ctx, "reload rotation state", slog.Any("error", err))
			}
			continue
		case <-t.C:
		}
		if err := a.Renew(ctx); err != nil {
			a.o.Logger.ErrorContext(ctx, "renew issuing intermediate", slog.Any("error", err))
			retryAt = time.Now().Add(retry)
			continue
		}
		retryAt = time.Time{}
	}
}

// Issued is a signed leaf and what it was signed with.
type Issued struct {
	Cert   *x509.Certificate
	Issuer *Intermediate
	// RootKeyVersion is the root key version that certified Issuer.
	RootKeyVersion int
}

// SignLeaf signs a leaf certificate for pub with the current intermediate.
// It sets a fresh 128-bit random serial, the subject key identifier of pub
// and the authority key identifier of the intermediate, and caps NotAfter
// at the intermediate's NotAfter: an intermediate outlives every leaf it
// signs. Build tmpl with LeafTemplate or ServingTemplate.
func (a *Authority) SignLeaf(ctx context.Context, tmpl *x509.Certificate, pub crypto.PublicKey) (*Issued, error) {
	in := a.Intermediate()
	t := *tmpl
	t.SubjectKeyId = keyID(pub)
	if t.NotAfter.After(in.Cert.NotAfter) {
		t.NotAfter = in.Cert.NotAfter
	}
	if t.IsCA {
		return nil, errors.New("refusing to sign a CA certificate as a leaf")
	}
	cert, err := createCert(ctx, &t, in.Cert, pub, in.Signer)
	if err != nil {
		return nil, fmt.Errorf("sign leaf with %s: %w", in.Cert.Subject.CommonName, err)
	}
	return &Issued{Cert: cert, Issuer: in, RootKeyVersion: in.RootKeyVersion}, nil
}

// createCert signs tmpl with a fresh serial, binding signer to ctx.
func createCert(ctx context.Context, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	t := *tmpl
	t.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, &t, parent, pub, bind(ctx, signer))
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// NewSerial returns a positive serial number with 128 random bits.
func NewSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

// Fingerprint returns the hex SHA-256 of a certificate's DER.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// keyID is the subject key identifier for pub: the SHA-256 of its DER
// SubjectPublicKeyInfo, truncated to 160 bits.
func keyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(der)
	return sum[:20]
}

// matchesKey reports an error unless cert certifies pub.
func matchesKey(cert *x509.Certificate, pub crypto.PublicKey) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := cert.PublicKey.(equaler)
	if !ok || !e.Equal(pub) {
		return errors.New("certificate public key does not match the key")
	}
	return nil
}
