package issuer

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
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
	// RenewRetryInterval is how soon Run tries again after a failed
	// renewal (Vault unreachable or sealed); 30s when zero.
	RenewRetryInterval time.Duration
	Now                func() time.Time
	Logger             *slog.Logger
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
	if o.RenewRetryInterval <= 0 {
		o.RenewRetryInterval = 30 * time.Second
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

// rootCertName is the name under which Certs keeps the certificate of a
// root key version.
func rootCertName(key string, version int) string {
	return "root/" + key + "/v" + strconv.Itoa(version)
}

// rootSet is the root side of the hierarchy as one rotation state makes
// it: immutable once built, replaced whole when the state changes.
type rootSet struct {
	st     *RotationState
	certs  map[int]*x509.Certificate // by root version: bundle, active, prepared, and compromised ones still stored
	active *x509.Certificate
	signer KeySigner // the active root's pinned version
	// distrusted maps the fingerprints of compromised intermediates and
	// roots, and the KeyFingerprint of their keys where known, to what
	// they are, for CheckChain.
	distrusted map[string]string
}

// distrust indexes what st and certs declare compromised.
func distrust(st *RotationState, certs map[int]*x509.Certificate) map[string]string {
	m := make(map[string]string, len(st.CompromisedIntermediates)+len(st.Revoked)+2*len(st.CompromisedRoots))
	for _, fp := range st.CompromisedIntermediates {
		m[fp] = "compromised intermediate " + fp
	}
	for _, r := range st.Revoked {
		if r.Key != "" {
			m[r.Key] = "the key of compromised intermediate " + r.Fingerprint
		}
	}
	for _, v := range st.CompromisedRoots {
		if c := certs[v]; c != nil {
			what := "compromised root version " + strconv.Itoa(v)
			m[Fingerprint(c)] = what
			m[KeyFingerprint(c.PublicKey)] = "the key of " + what
		}
	}
	return m
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
	rs.distrusted = distrust(st, rs.certs)
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

// CheckChain returns an error wrapping ErrCompromised, naming the
// certificate, when a CA certificate of chain (every element after the
// leaf at chain[0]) is a compromised intermediate or root, or certifies
// the key of one. It reads the rotation state in use: a revocation made
// through another replica applies here once this authority has read the
// state again (Reload, every Options.StatePollInterval).
func (a *Authority) CheckChain(chain []*x509.Certificate) error {
	d := a.rootsNow().distrusted
	if len(d) == 0 {
		return nil
	}
	for i, c := range chain {
		if i == 0 || c == nil {
			continue
		}
		fp := Fingerprint(c)
		what, ok := d[fp]
		if !ok {
			what, ok = d[KeyFingerprint(c.PublicKey)]
		}
		if ok {
			return fmt.Errorf("%w: %s (%s) is %s", ErrCompromised, fp, c.Subject.CommonName, what)
		}
	}
	return nil
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

// Run renews the intermediate whenever it passes half its life, and reads
// the rotation state every Options.StatePollInterval (Reload), until ctx
// ends. A failed renewal is logged and retried; the current intermediate
// stays in use meanwhile.
func (a *Authority) Run(ctx context.Context) {
	retry := a.o.RenewRetryInterval
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
