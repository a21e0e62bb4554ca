package issuer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// KeyRotator is implemented by key stores that can add a version to a key
// (Transit, through VaultKeys, and LocalKeys). It is an optional capability
// found by type assertion rather than a method of Keys: issuing needs none
// of it, only the rotation steps do, and a key store that cannot rotate
// (a test fake, a read-only view) still serves everything else. A step
// that needs it and does not find it fails with an error naming the store.
type KeyRotator interface {
	// Rotate adds a new version to the named key and returns its number.
	// Older versions keep signing and verifying.
	Rotate(ctx context.Context, name string) (newVersion int, err error)
}

var (
	_ KeyRotator = (*Transit)(nil)
	_ KeyRotator = VaultKeys{}
	_ KeyRotator = (*LocalKeys)(nil)
)

// errNoChange tells update that the step has nothing to write.
var errNoChange = errors.New("no change")

// update applies change to a copy of the stored state and stores it with
// compare-and-set, reading and applying again when another replica wrote
// in between. change may do Vault work first; it MUST be idempotent. It
// returns the state now stored. a.op is held.
func (a *Authority) update(ctx context.Context, change func(st *RotationState) error) (*RotationState, error) {
	if a.ephemeral {
		return nil, fmt.Errorf("%w: set Options.State (NewVaultState, or NewFileState in dev mode)", ErrNoStateStore)
	}
	const attempts = 5
	for range attempts {
		st, rev, err := a.state.Load(ctx)
		if err != nil {
			return nil, fmt.Errorf("load rotation state: %w", err)
		}
		if st == nil {
			return nil, errors.New("rotation state is gone from the store; restart the CA to derive it again")
		}
		next := st.clone()
		err = change(next)
		if errors.Is(err, errNoChange) {
			return st, nil
		}
		if err != nil {
			return nil, err
		}
		next.UpdatedAt = a.o.Now().UTC()
		if err := next.Validate(); err != nil {
			return nil, err
		}
		newRev, err := a.state.Store(ctx, next, rev)
		if errors.Is(err, ErrStateConflict) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("store rotation state: %w", err)
		}
		next.Revision = newRev
		return next, nil
	}
	return nil, fmt.Errorf("rotation state: %w %d times in a row", ErrStateConflict, attempts)
}

// adopt makes st the authority's state: the roots it names, and a new
// intermediate when the current one is not under the active root or is
// compromised. a.op is held.
func (a *Authority) adopt(ctx context.Context, st *RotationState) error {
	if prev := a.rootsNow(); st.Revision != prev.st.Revision {
		rs, err := a.buildRoots(ctx, st, prev)
		if err != nil {
			return err
		}
		a.mu.Lock()
		a.roots = rs
		a.mu.Unlock()
	}
	cur := a.Intermediate()
	switch {
	case st.CertCompromised(cur.Cert):
		a.o.Logger.WarnContext(ctx, "issuing intermediate is compromised; replacing it", slog.String("fingerprint", cur.Fingerprint))
		return a.renew(ctx, cur.KeyVersion)
	case cur.RootKeyVersion != st.ActiveRoot:
		a.o.Logger.InfoContext(ctx, "active root changed; new issuing intermediate",
			slog.Int("from_root", cur.RootKeyVersion), slog.Int("to_root", st.ActiveRoot))
		return a.renew(ctx, 0)
	}
	return nil
}

// Reload reads the rotation state and adopts it: another replica, or an
// earlier step cut short, may have changed it. A new trust bundle is served
// at once; a new active root, or a compromised current intermediate, gets a
// new intermediate. In ModeVault, a newer intermediate key version (another
// replica rotated it) is put to use too. Run calls it every
// Options.StatePollInterval.
func (a *Authority) Reload(ctx context.Context) error {
	a.op.Lock()
	defer a.op.Unlock()
	st, _, err := a.state.Load(ctx)
	if err != nil {
		return fmt.Errorf("load rotation state: %w", err)
	}
	if st == nil {
		return nil
	}
	if err := a.adopt(ctx, st); err != nil {
		return err
	}
	if a.o.Mode == ModeVault {
		latest, err := a.keys.Signer(ctx, a.o.IntermediateKey, 0)
		if err != nil {
			return fmt.Errorf("intermediate key: %w", err)
		}
		if latest.KeyVersion() > a.Intermediate().KeyVersion {
			return a.renew(ctx, 0)
		}
	}
	return nil
}

// PrepareRoot starts a root rotation: it adds a version to the root key (a
// Transit rotate), self-signs a root certificate for it through the key
// store, stores that under the version's name, and puts the new root in the
// trust bundle. Issuance stays under the active root until ActivateRoot.
//
// The new root is a new version of the same Transit key, not a new key:
// every signature pins its key version, so an old root keeps verifying and
// the two never mix, and the daemon's Vault policy names one key path
// instead of growing with each rotation.
//
// It is idempotent: with a root already prepared it returns that one; after
// a crash that left a key version or certificate behind, it uses them
// rather than rotating again. A compromised version is never reused.
func (a *Authority) PrepareRoot(ctx context.Context) (*RootInfo, error) {
	a.op.Lock()
	defer a.op.Unlock()
	st, err := a.update(ctx, func(st *RotationState) error {
		if st.PreparedRoot != 0 {
			return errNoChange
		}
		v, err := a.prepareRootVersion(ctx, st)
		if err != nil {
			return err
		}
		st.PreparedRoot, st.PreparedAt = v, a.o.Now().UTC()
		st.BundleRoots = append(st.BundleRoots, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := a.adopt(ctx, st); err != nil {
		return nil, err
	}
	a.o.Logger.InfoContext(ctx, "root prepared", slog.Int("version", st.PreparedRoot), slog.Time("prepared_at", st.PreparedAt))
	return a.rootInfo(a.rootsNow(), st.PreparedRoot), nil
}

// prepareRootVersion returns a root key version with a stored root
// certificate that no state names yet: the latest version when it is such
// a leftover of a step cut short, a new one otherwise.
func (a *Authority) prepareRootVersion(ctx context.Context, st *RotationState) (int, error) {
	latest, err := a.keys.Signer(ctx, a.o.RootKey, 0)
	if err != nil {
		return 0, fmt.Errorf("root key: %w", err)
	}
	v := latest.KeyVersion()
	if v <= st.ActiveRoot || st.InBundle(v) || st.RootCompromised(v) {
		r, ok := a.keys.(KeyRotator)
		if !ok {
			return 0, fmt.Errorf("key store %s cannot rotate keys", a.keys.Describe())
		}
		if v, err = r.Rotate(ctx, a.o.RootKey); err != nil {
			return 0, fmt.Errorf("rotate root key %s: %w", a.o.RootKey, err)
		}
	}
	signer, err := a.keys.Signer(ctx, a.o.RootKey, v)
	if err != nil {
		return 0, fmt.Errorf("root key: %w", err)
	}
	name := rootCertName(a.o.RootKey, v)
	cert, _, err := a.certs.Load(ctx, name)
	switch {
	case err == nil:
		if err := matchesKey(cert, signer.Public()); err != nil {
			return 0, fmt.Errorf("stored root certificate %s: %w", name, err)
		}
		return v, nil
	case !errors.Is(err, ErrCertNotFound):
		return 0, err
	}
	if cert, err = selfSign(ctx, signer, &a.o); err != nil {
		return 0, err
	}
	current, _, err := a.certs.Store(ctx, name, cert, 0)
	if err != nil {
		return 0, fmt.Errorf("store root certificate: %w", err)
	}
	if err := matchesKey(current, signer.Public()); err != nil {
		return 0, fmt.Errorf("stored root certificate %s: %w", name, err)
	}
	return v, nil
}

// ActivateRoot moves issuance to the prepared root: it becomes the active
// root, and a new intermediate under it is put to use at once. The old
// active root stays in the trust bundle, for the leaves issued under it,
// until RetireRoot.
//
// It is refused with an error wrapping ErrRotationRefused, which says how
// long is left, until the prepared root has been in the trust bundle for
// minOverlap: Istio's clients take the bundle only when they renew, at
// half of their leaf's lifetime, so minOverlap should be at least the
// longest leaf TTL. force skips that check (compromise response). Without
// a prepared root it returns an error wrapping ErrNoPreparedRoot.
func (a *Authority) ActivateRoot(ctx context.Context, minOverlap time.Duration, force bool) error {
	a.op.Lock()
	defer a.op.Unlock()
	now := a.o.Now()
	st, err := a.update(ctx, func(st *RotationState) error {
		if st.PreparedRoot == 0 {
			return fmt.Errorf("%w: the active root is version %d; prepare a root first", ErrNoPreparedRoot, st.ActiveRoot)
		}
		inBundle := now.Sub(st.PreparedAt)
		if !force && inBundle < minOverlap {
			return fmt.Errorf("%w: root version %d has been in the trust bundle for %v of the %v overlap; %v left (until %s), or force",
				ErrRotationRefused, st.PreparedRoot, inBundle.Round(time.Second), minOverlap, (minOverlap - inBundle).Round(time.Second),
				st.PreparedAt.Add(minOverlap).UTC().Format(time.RFC3339))
		}
		st.ActiveRoot, st.PreparedRoot, st.PreparedAt = st.PreparedRoot, 0, time.Time{}
		return nil
	})
	if err != nil {
		return err
	}
	a.o.Logger.InfoContext(ctx, "root activated", slog.Int("version", st.ActiveRoot), slog.Bool("forced", force))
	return a.adopt(ctx, st)
}

// RetireRoot drops root version from the trust bundle; with compromised it
// also records the version as compromised, so that it is never trusted nor
// used again, also after a restart. Retiring the prepared root abandons the
// rotation. The active root cannot be retired (ErrRotationRefused). A
// version already out of the bundle is a no-op (unless it is now declared
// compromised).
//
// RetireRoot does not check that no live certificate still chains to the
// root: the caller does, from the issuance log (the ca layer), before
// calling it. The key version stays in Transit; the daemon's policy cannot
// trim it, and it is never used again.
func (a *Authority) RetireRoot(ctx context.Context, version int, compromised bool) error {
	a.op.Lock()
	defer a.op.Unlock()
	if _, err := a.keys.Signer(ctx, a.o.RootKey, version); err != nil {
		return fmt.Errorf("root version %d: %w", version, err)
	}
	st, err := a.update(ctx, func(st *RotationState) error {
		if version == st.ActiveRoot {
			return fmt.Errorf("%w: root version %d is the active root; activate another root first", ErrRotationRefused, version)
		}
		newlyCompromised := compromised && !st.RootCompromised(version)
		if !st.InBundle(version) && !newlyCompromised {
			return errNoChange
		}
		st.BundleRoots = slices.DeleteFunc(st.BundleRoots, func(v int) bool { return v == version })
		if st.PreparedRoot == version {
			st.PreparedRoot, st.PreparedAt = 0, time.Time{}
		}
		if newlyCompromised {
			st.CompromisedRoots = append(st.CompromisedRoots, version)
		}
		return nil
	})
	if err != nil {
		return err
	}
	a.o.Logger.InfoContext(ctx, "root retired", slog.Int("version", version), slog.Bool("compromised", compromised))
	return a.adopt(ctx, st)
}

// RotateIntermediate replaces the issuing intermediate now: ModeMemory
// generates a new key, ModeVault adds a version to the Transit intermediate
// key (unless another replica just did) and certifies it. Requests in
// flight finish with the intermediate they started with; leaves issued
// before keep verifying against the trust bundle. It writes no state.
func (a *Authority) RotateIntermediate(ctx context.Context) (*Intermediate, error) {
	a.op.Lock()
	defer a.op.Unlock()
	if err := a.renew(ctx, a.Intermediate().KeyVersion); err != nil {
		return nil, err
	}
	return a.Intermediate(), nil
}

// Revocation names the intermediate RevokeIntermediate declares
// compromised, and what the caller knows of it.
type Revocation struct {
	// Fingerprint is the intermediate's hex SHA-256 (Fingerprint); ""
	// means the current one.
	Fingerprint string
	// Issued says the caller found the intermediate among those the CA
	// issued: the issuance log records it. Key (a KeyFingerprint) and
	// NotAfter are what the caller knows of it; zero when unknown.
	Issued   bool
	Key      string
	NotAfter time.Time
	// Force records a fingerprint the CA cannot tell it issued.
	Force bool
}

// RevokeIntermediate records an intermediate as compromised in the
// rotation state: no authority sharing the state signs with it again, also
// after a restart, and CheckChain refuses every chain through it (and, when
// its key is known, through any certificate for its key). When it is the
// current intermediate, it is replaced at once (ModeVault: on a new key
// version); other replicas replace theirs at their next Reload.
//
// Only intermediates the CA issued are accepted: the current one, or one
// the caller found in the issuance log (r.Issued); any other fingerprint
// is refused with an error wrapping ErrUnknownIntermediate unless r.Force.
// A root's fingerprint is refused whatever r says (ErrNotAnIntermediate):
// a compromised root is retired (RetireRoot). Entries are dropped from the
// state once nothing can chain through them (RevokedIntermediate.Until);
// beyond MaxCompromisedIntermediates live entries the call is refused
// (ErrTooManyRevoked). A refusal changes nothing.
//
// It returns the revoked intermediate when it was this authority's current
// one (nil otherwise) and the intermediate in use afterwards. Listing the
// certificates the revoked one signed is the caller's part, from the
// issuance log. A fingerprint already recorded is not an error.
func (a *Authority) RevokeIntermediate(ctx context.Context, r Revocation) (old, cur *Intermediate, err error) {
	a.op.Lock()
	defer a.op.Unlock()
	before := a.Intermediate()
	fp := strings.ToLower(r.Fingerprint)
	if fp == "" {
		fp = before.Fingerprint
	}
	if err := CheckFingerprint(fp); err != nil {
		return nil, nil, err
	}
	for v, c := range a.rootsNow().certs {
		if Fingerprint(c) == fp {
			return nil, nil, fmt.Errorf("%w: %s is root version %d; a compromised root is retired with --compromised", ErrNotAnIntermediate, fp, v)
		}
	}
	if fp == before.Fingerprint {
		r.Issued, r.Key, r.NotAfter = true, KeyFingerprint(before.Cert.PublicKey), before.Cert.NotAfter
	}
	now := a.o.Now().UTC()
	st, err := a.update(ctx, func(st *RotationState) error {
		if st.IntermediateCompromised(fp) {
			return errNoChange
		}
		if !r.Issued && !r.Force {
			return fmt.Errorf("%w: %s is not an intermediate this ca issued: it is not the current one and the issuance log does not record it", ErrUnknownIntermediate, fp)
		}
		st.pruneRevoked(now)
		if n := len(st.CompromisedIntermediates); n >= MaxCompromisedIntermediates {
			return fmt.Errorf("%w: %d intermediates are recorded as compromised, the most kept; %s", ErrTooManyRevoked, n, firstDrop(st))
		}
		until := now.Add(a.o.IntermediateTTL)
		if r.NotAfter.After(until) {
			until = r.NotAfter.UTC()
		}
		st.CompromisedIntermediates = append(st.CompromisedIntermediates, fp)
		st.Revoked = append(st.Revoked, RevokedIntermediate{Fingerprint: fp, Key: r.Key, RevokedAt: now, Until: until})
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	a.o.Logger.WarnContext(ctx, "intermediate revoked", slog.String("fingerprint", fp), slog.String("key", r.Key),
		slog.Bool("issued", r.Issued), slog.Bool("forced", r.Force))
	if err := a.adopt(ctx, st); err != nil {
		return nil, nil, err
	}
	if before.Fingerprint == fp {
		old = before
	}
	return old, a.Intermediate(), nil
}

// firstDrop says when the first compromised intermediate leaves st.
func firstDrop(st *RotationState) string {
	var first time.Time
	for _, r := range st.Revoked {
		if first.IsZero() || r.Until.Before(first) {
			first = r.Until
		}
	}
	if first.IsZero() {
		return "none of them is dropped by itself (recorded without an end)"
	}
	return "the first is dropped at " + first.UTC().Format(time.RFC3339)
}

// RootRole is what a root version is to the authority.
type RootRole string

// The roles of a root version.
const (
	// RoleActive: certifies new intermediates; in the trust bundle.
	RoleActive RootRole = "active"
	// RolePrepared: in the trust bundle, waiting for ActivateRoot.
	RolePrepared RootRole = "prepared"
	// RoleTrusted: a former active root, in the trust bundle until retired.
	RoleTrusted RootRole = "trusted"
	// RoleCompromised: never trusted nor used again.
	RoleCompromised RootRole = "compromised"
)

// RootInfo describes one root version.
type RootInfo struct {
	Version int
	Role    RootRole
	// Cert is the root certificate; nil for a compromised version whose
	// certificate is no longer stored.
	Cert        *x509.Certificate
	Fingerprint string
	NotAfter    time.Time
}

// Status is the authority's view of its hierarchy, for an admin Status
// call.
type Status struct {
	// Roots lists the trust bundle in the order of Roots, then the
	// compromised versions, oldest first.
	Roots []RootInfo
	// ActiveRoot and PreparedRoot are root key versions (0: none
	// prepared); PreparedAt is when the prepared root entered the bundle.
	ActiveRoot   int
	PreparedRoot int
	PreparedAt   time.Time
	// Intermediate is the current issuing intermediate.
	Intermediate *Intermediate
	// CompromisedIntermediates are fingerprints never signed with again.
	CompromisedIntermediates []string
	// StateRevision is the revision of the rotation state in use, and
	// StateUpdatedAt when it was written.
	StateRevision  int
	StateUpdatedAt time.Time
}

// Status returns the authority's roots, roles and current intermediate.
func (a *Authority) Status() *Status {
	rs := a.rootsNow()
	st := rs.st
	s := &Status{
		ActiveRoot:               st.ActiveRoot,
		PreparedRoot:             st.PreparedRoot,
		PreparedAt:               st.PreparedAt,
		Intermediate:             a.Intermediate(),
		CompromisedIntermediates: slices.Clone(st.CompromisedIntermediates),
		StateRevision:            st.Revision,
		StateUpdatedAt:           st.UpdatedAt,
	}
	for _, v := range bundleOrder(st) {
		s.Roots = append(s.Roots, *a.rootInfo(rs, v))
	}
	comp := slices.Clone(st.CompromisedRoots)
	slices.Sort(comp)
	for _, v := range comp {
		s.Roots = append(s.Roots, *a.rootInfo(rs, v))
	}
	return s
}

func (a *Authority) rootInfo(rs *rootSet, v int) *RootInfo {
	info := &RootInfo{Version: v, Role: RoleTrusted, Cert: rs.certs[v]}
	switch {
	case rs.st.RootCompromised(v):
		info.Role = RoleCompromised
	case v == rs.st.ActiveRoot:
		info.Role = RoleActive
	case v == rs.st.PreparedRoot:
		info.Role = RolePrepared
	}
	if info.Cert != nil {
		info.Fingerprint, info.NotAfter = Fingerprint(info.Cert), info.Cert.NotAfter
	}
	return info
}
