package ca

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/transitca/transitca/issuer"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// RotationOptions let the admin API rotate the CA's keys and rehearse it.
type RotationOptions struct {
	Authority *issuer.Authority
	// Service issues a drill's probe certificates through the pipeline.
	Service *Service
	// Audit records what each rotation step did, as admin entries.
	Audit AdminAudit
	// Keys, when set, lets a drill check the root key's export settings in
	// Vault (nil in dev mode).
	Keys KeyInspector
	// RootKey is the Transit name of the root key.
	RootKey string
	// Custody, when set, tells where each of the CA's keys is kept and
	// what Vault answers about it now: each drill records it.
	Custody func(ctx context.Context) []KeyCustody
	// MinOverlap is how long a prepared root must be in the bundle before
	// ActivateRoot is allowed without force.
	MinOverlap time.Duration
	// AllowRootDrill permits Drill with root set.
	AllowRootDrill bool
	// DrillIdentity is the SPIFFE ID of drill probes.
	DrillIdentity string
	// Metrics, when set, expose the last drill's time and result.
	Metrics *Metrics
	// OnChange, when set, is called after a step changed the hierarchy
	// (the daemon rewrites its root bundle file and renews its serving
	// certificate at once rather than at its next check).
	OnChange func(ctx context.Context)
	Now      func() time.Time
}

// KeyInspector reads a Transit key's settings (*issuer.Transit does).
type KeyInspector interface {
	ReadKey(ctx context.Context, name string) (*issuer.KeyInfo, error)
}

// Rotation errors the admin API answers with.
var (
	// ErrRotationDisabled means the admin service serves a log file only
	// (ca log --db), with no CA hierarchy to rotate.
	ErrRotationDisabled = errors.New("rotation is not available here: this admin service serves a log file only")
	// ErrReasonRequired means a forced step came without a reason to
	// record.
	ErrReasonRequired = errors.New("a forced step needs a reason, which is recorded in the log")
)

// rotation is the admin service's rotation state.
type rotation struct {
	RotationOptions
	mu        sync.Mutex // one rotation step or drill at a time
	lastDrill *adminv1.DrillReport
}

// EnableRotation turns on the rotation methods of the admin API.
func (s *AdminService) EnableRotation(o RotationOptions) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.DrillIdentity == "" {
		o.DrillIdentity = "spiffe://cluster.local/ns/transitca/sa/drill"
	}
	s.rot = &rotation{RotationOptions: o}
}

func (s *AdminService) rotation() (*rotation, error) {
	if s.rot == nil {
		return nil, ErrRotationDisabled
	}
	return s.rot, nil
}

// record writes what a rotation step did as an admin entry. The actor is
// the admin caller of ctx.
func (r *rotation) record(ctx context.Context, action, detail string) error {
	if r.Audit == nil {
		return nil
	}
	actor := "transitca"
	if c := AdminCallerFrom(ctx); c != nil {
		actor = callerActor(c)
	}
	if err := r.Audit.RecordAdmin(ctx, action, actor, detail); err != nil {
		return fmt.Errorf("record %s: %w", action, err)
	}
	return nil
}

// changed tells the daemon that the hierarchy changed.
func (r *rotation) changed(ctx context.Context) {
	if r.OnChange != nil {
		r.OnChange(ctx)
	}
}

// Status reports the hierarchy and the rotation state.
func (s *AdminService) Status(_ context.Context, _ *adminv1.StatusRequest) (*adminv1.StatusResponse, error) {
	r, err := s.rotation()
	if err != nil {
		return nil, err
	}
	st := r.Authority.Status()
	resp := &adminv1.StatusResponse{
		Intermediate:             intermediatePB(st.Intermediate),
		MinOverlap:               durationpb.New(r.MinOverlap),
		CompromisedIntermediates: st.CompromisedIntermediates,
		LogSize:                  s.log.Size(),
	}
	for i := range st.Roots {
		resp.Roots = append(resp.Roots, rootPB(&st.Roots[i]))
	}
	if st.PreparedRoot != 0 {
		resp.PreparedAt = timestamppb.New(st.PreparedAt)
		resp.ActivateAllowedAt = timestamppb.New(st.PreparedAt.Add(r.MinOverlap))
	}
	r.mu.Lock()
	resp.LastDrill = r.lastDrill
	r.mu.Unlock()
	return resp, nil
}

// RotateIntermediate replaces the issuing intermediate now.
func (s *AdminService) RotateIntermediate(ctx context.Context, req *adminv1.RotateIntermediateRequest) (*adminv1.RotateIntermediateResponse, error) {
	r, err := s.rotation()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.Authority.Intermediate()
	cur, err := r.Authority.RotateIntermediate(ctx)
	if err != nil {
		return nil, err
	}
	r.changed(ctx)
	if err := r.record(ctx, "intermediate-rotated", fmt.Sprintf("previous=%s current=%s reason=%s", prev.Fingerprint, cur.Fingerprint, quote(req.GetReason()))); err != nil {
		return nil, err
	}
	return &adminv1.RotateIntermediateResponse{Previous: intermediatePB(prev), Current: intermediatePB(cur)}, nil
}

// PrepareRoot makes a new root and adds it to the trust bundle.
func (s *AdminService) PrepareRoot(ctx context.Context, req *adminv1.PrepareRootRequest) (*adminv1.PrepareRootResponse, error) {
	r, err := s.rotation()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	info, err := r.Authority.PrepareRoot(ctx)
	if err != nil {
		return nil, err
	}
	r.changed(ctx)
	st := r.Authority.Status()
	if err := r.record(ctx, "root-prepared", fmt.Sprintf("version=%d fingerprint=%s not_after=%s reason=%s",
		info.Version, info.Fingerprint, info.NotAfter.UTC().Format(time.RFC3339), quote(req.GetReason()))); err != nil {
		return nil, err
	}
	return &adminv1.PrepareRootResponse{Prepared: rootPB(info), ActivateAllowedAt: timestamppb.New(st.PreparedAt.Add(r.MinOverlap))}, nil
}

// ActivateRoot moves issuance under the prepared root.
func (s *AdminService) ActivateRoot(ctx context.Context, req *adminv1.ActivateRootRequest) (*adminv1.ActivateRootResponse, error) {
	r, err := s.rotation()
	if err != nil {
		return nil, err
	}
	if req.GetForce() && strings.TrimSpace(req.GetReason()) == "" {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, ErrReasonRequired)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	before := r.Authority.Status()
	if err := r.Authority.ActivateRoot(ctx, r.MinOverlap, req.GetForce()); err != nil {
		return nil, err
	}
	r.changed(ctx)
	st := r.Authority.Status()
	detail := fmt.Sprintf("version=%d previous=%d intermediate=%s", st.ActiveRoot, before.ActiveRoot, st.Intermediate.Fingerprint)
	if req.GetForce() {
		detail += fmt.Sprintf(" forced=true in_bundle=%s min_overlap=%s reason=%s",
			r.Now().Sub(before.PreparedAt).Round(time.Second), r.MinOverlap, quote(req.GetReason()))
	}
	if err := r.record(ctx, "root-activated", detail); err != nil {
		return nil, err
	}
	resp := &adminv1.ActivateRootResponse{Intermediate: intermediatePB(st.Intermediate)}
	for i := range st.Roots {
		if st.Roots[i].Version == st.ActiveRoot {
			resp.Active = rootPB(&st.Roots[i])
		}
	}
	return resp, nil
}

// RetireRoot drops an old root from the trust bundle, once no live
// certificate needs it.
func (s *AdminService) RetireRoot(ctx context.Context, req *adminv1.RetireRootRequest) (*adminv1.RetireRootResponse, error) {
	r, err := s.rotation()
	if err != nil {
		return nil, err
	}
	if (req.GetForce() || req.GetCompromised()) && strings.TrimSpace(req.GetReason()) == "" {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, ErrReasonRequired)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.Authority.Status()
	version := int(req.GetKeyVersion())
	if version == 0 {
		for _, ri := range st.Roots {
			if ri.Role == issuer.RoleTrusted && (version == 0 || ri.Version < version) {
				version = ri.Version
			}
		}
		if version == 0 {
			return nil, fmt.Errorf("%w: no old root is in the trust bundle (active root version %d)", issuer.ErrRotationRefused, st.ActiveRoot)
		}
	}
	var info *issuer.RootInfo
	for i := range st.Roots {
		if st.Roots[i].Version == version {
			info = &st.Roots[i]
		}
	}
	if info == nil {
		return nil, fmt.Errorf("%w: root version %d is not in the trust bundle", ErrInvalidRequest, version)
	}
	groups, live, last, err := s.liveUnderRoot(ctx, version, r.Now())
	if err != nil {
		return nil, err
	}
	if live > 0 && !req.GetForce() && !req.GetCompromised() {
		return nil, fmt.Errorf("%w: %d unexpired certificates chain only to root version %d; the last expires at %s; retire after that, or force with a reason",
			issuer.ErrRotationRefused, live, version, last.UTC().Format(time.RFC3339))
	}
	if err := r.Authority.RetireRoot(ctx, version, req.GetCompromised()); err != nil {
		return nil, err
	}
	r.changed(ctx)
	detail := fmt.Sprintf("version=%d fingerprint=%s live_certificates=%d compromised=%v", version, info.Fingerprint, live, req.GetCompromised())
	if req.GetForce() || req.GetCompromised() {
		detail += " reason=" + quote(req.GetReason())
	}
	if err := r.record(ctx, "root-retired", detail); err != nil {
		return nil, err
	}
	info.Role = issuer.RoleTrusted
	if req.GetCompromised() {
		info.Role = issuer.RoleCompromised
	}
	resp := &adminv1.RetireRootResponse{Retired: rootPB(info), LiveCertificates: uint64(live)}
	if req.GetCompromised() {
		resp.Affected = groups
	}
	return resp, nil
}

// liveUnderRoot returns the unexpired certificates in the log that chain
// to root version v (their issuer was certified by it), grouped by
// workload, their number and the last NotAfter.
func (s *AdminService) liveUnderRoot(ctx context.Context, v int, now time.Time) ([]*adminv1.AffectedWorkload, int, time.Time, error) {
	kind := store.KindIssuance
	groups, n, last, err := s.affected(ctx, store.Query{Kind: &kind, ValidAt: now}, func(e *store.Entry) bool { return e.RootKeyVersion == v })
	if err != nil {
		return nil, 0, time.Time{}, fmt.Errorf("find certificates under root version %d: %w", v, err)
	}
	return groups, n, last, nil
}

// RevokeIntermediate marks an intermediate compromised, rotates if it is
// the current one, and streams what it signed that is still valid. Only
// an intermediate this CA issued is accepted: the current one, or one this
// replica's log records (knownIntermediate); another fingerprint needs
// force and a reason.
func (s *AdminService) RevokeIntermediate(req *adminv1.RevokeIntermediateRequest, stream adminv1.AdminService_RevokeIntermediateServer) error {
	r, err := s.rotation()
	if err != nil {
		return err
	}
	ctx := stream.Context()
	if req.GetForce() && strings.TrimSpace(req.GetReason()) == "" {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, ErrReasonRequired)
	}
	fp := strings.ToLower(strings.TrimSpace(req.GetFingerprint()))
	r.mu.Lock()
	if fp == "" {
		fp = r.Authority.Intermediate().Fingerprint
	}
	rev := issuer.Revocation{Fingerprint: fp, Force: req.GetForce()}
	if fp != r.Authority.Intermediate().Fingerprint && issuer.CheckFingerprint(fp) == nil {
		rev.Issued, rev.Key, rev.NotAfter, err = s.knownIntermediate(ctx, fp)
	}
	var old, cur *issuer.Intermediate
	if err == nil {
		old, cur, err = r.Authority.RevokeIntermediate(ctx, rev)
	}
	if err == nil {
		r.changed(ctx)
	}
	r.mu.Unlock()
	if errors.Is(err, issuer.ErrBadFingerprint) {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if errors.Is(err, issuer.ErrUnknownIntermediate) {
		return fmt.Errorf("%w; if another replica issued it, run this on that replica (or name every replica with --addr), else --force with a reason", err)
	}
	if err != nil {
		return err
	}
	groups, total, err := s.signedBy(ctx, fp, r.Now())
	if err != nil {
		return err
	}
	detail := fmt.Sprintf("fingerprint=%s current=%s live_certificates=%d workloads=%d reason=%s",
		fp, cur.Fingerprint, total, len(groups), quote(req.GetReason()))
	if rev.Force && !rev.Issued && old == nil {
		detail += " forced=true"
	}
	if err := r.record(ctx, "intermediate-revoked", detail); err != nil {
		return err
	}
	first := &adminv1.RevokeIntermediateResponse{Current: intermediatePB(cur)}
	if old != nil {
		first.Revoked = intermediatePB(old)
	} else {
		first.Revoked = &adminv1.Intermediate{Fingerprint: fp}
	}
	if err := stream.Send(first); err != nil {
		return err
	}
	for _, g := range groups {
		if err := stream.Send(&adminv1.RevokeIntermediateResponse{Affected: g}); err != nil {
			return err
		}
	}
	return nil
}

// knownIntermediate looks the intermediate with fingerprint fp up in the
// log: the first entry under it in the issuer index is the
// intermediate-activated entry recorded when it was put to use (its
// validity, and its key last in the detail), or, in a log written before
// those entries carried it, a certificate it signed. It returns whether
// the log knows fp, and what it knows of it.
func (s *AdminService) knownIntermediate(ctx context.Context, fp string) (known bool, key string, notAfter time.Time, err error) {
	entries, _, err := s.log.Query(ctx, store.Query{Issuer: fp, Limit: 1})
	if err != nil {
		return false, "", time.Time{}, fmt.Errorf("look up intermediate %s in the log: %w", fp, err)
	}
	if len(entries) == 0 {
		return false, "", time.Time{}, nil
	}
	e := entries[0]
	if e.Kind != store.KindAdmin || e.Action != IntermediateActivatedAction {
		return true, "", time.Time{}, nil
	}
	if i := strings.LastIndex(e.Detail, " key="); i >= 0 && issuer.CheckFingerprint(e.Detail[i+5:]) == nil {
		key = e.Detail[i+5:]
	}
	return true, key, e.NotAfter, nil
}

// signedBy groups the unexpired certificates an intermediate signed by
// workload.
func (s *AdminService) signedBy(ctx context.Context, fp string, now time.Time) ([]*adminv1.AffectedWorkload, int, error) {
	kind := store.KindIssuance
	groups, n, _, err := s.affected(ctx, store.Query{Kind: &kind, Issuer: fp}, func(e *store.Entry) bool { return e.NotAfter.After(now) })
	if err != nil {
		return nil, 0, fmt.Errorf("certificates signed by %s: %w", fp, err)
	}
	return groups, n, nil
}

// affected pages through q, keeps the entries match accepts, and groups
// them by SPIFFE ID (namespace and service account), sorted; it returns
// the groups, the number of certificates and the last NotAfter.
func (s *AdminService) affected(ctx context.Context, q store.Query, match func(*store.Entry) bool) ([]*adminv1.AffectedWorkload, int, time.Time, error) {
	q.Limit = 10000
	byID := map[string]*adminv1.AffectedWorkload{}
	total := 0
	var last time.Time
	for {
		entries, next, err := s.log.Query(ctx, q)
		if err != nil {
			return nil, 0, time.Time{}, err
		}
		for _, e := range entries {
			if !match(e) {
				continue
			}
			total++
			if e.NotAfter.After(last) {
				last = e.NotAfter
			}
			g := byID[e.SPIFFEID]
			if g == nil {
				g = &adminv1.AffectedWorkload{Namespace: e.Namespace, ServiceAccount: e.ServiceAccount, SpiffeId: e.SPIFFEID}
				byID[e.SPIFFEID] = g
			}
			g.Serials = append(g.Serials, e.Serial)
			if g.LastNotAfter == nil || e.NotAfter.After(g.LastNotAfter.AsTime()) {
				g.LastNotAfter = timestamppb.New(e.NotAfter)
			}
		}
		if next == "" {
			break
		}
		q.PageToken = next
	}
	groups := make([]*adminv1.AffectedWorkload, 0, len(byID))
	for _, g := range byID {
		groups = append(groups, g)
	}
	sort.Slice(groups, func(i, j int) bool {
		a, b := groups[i], groups[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.ServiceAccount != b.ServiceAccount {
			return a.ServiceAccount < b.ServiceAccount
		}
		return a.SpiffeId < b.SpiffeId
	})
	return groups, total, last, nil
}

func rootPB(ri *issuer.RootInfo) *adminv1.Root {
	out := &adminv1.Root{KeyVersion: int64(ri.Version), Role: rolePB(ri.Role), Fingerprint: ri.Fingerprint}
	if ri.Cert != nil {
		out.NotBefore, out.NotAfter = timestamppb.New(ri.Cert.NotBefore), timestamppb.New(ri.Cert.NotAfter)
		out.Pem = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ri.Cert.Raw}))
	}
	return out
}

func rolePB(r issuer.RootRole) adminv1.RootRole {
	switch r {
	case issuer.RoleActive:
		return adminv1.RootRole_ROOT_ROLE_ACTIVE
	case issuer.RolePrepared:
		return adminv1.RootRole_ROOT_ROLE_PREPARED
	case issuer.RoleTrusted:
		return adminv1.RootRole_ROOT_ROLE_TRUSTED
	case issuer.RoleCompromised:
		return adminv1.RootRole_ROOT_ROLE_COMPROMISED
	}
	return adminv1.RootRole_ROOT_ROLE_UNSPECIFIED
}

func intermediatePB(in *issuer.Intermediate) *adminv1.Intermediate {
	if in == nil {
		return nil
	}
	return &adminv1.Intermediate{
		Fingerprint:    in.Fingerprint,
		Mode:           string(in.Mode),
		KeyVersion:     int64(in.KeyVersion),
		RootKeyVersion: int64(in.RootKeyVersion),
		NotBefore:      timestamppb.New(in.Cert.NotBefore),
		NotAfter:       timestamppb.New(in.Cert.NotAfter),
		RenewAt:        timestamppb.New(in.RenewAt),
		Pem:            string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: in.Cert.Raw})),
	}
}

// ScheduledStep runs the root rotation schedule once: it prepares a new
// root when the active root has prepareAt of its lifetime left and none is
// prepared, and activates the prepared root when activateAt is left (and
// min_overlap has passed; until then it says so and changes nothing). It
// returns what it did ("" for nothing). Each step is recorded like an
// operator's, with the actor "transitca schedule".
func (s *AdminService) ScheduledStep(ctx context.Context, prepareAt, activateAt float64) (string, error) {
	r, err := s.rotation()
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.Authority.Status()
	var active *x509.Certificate
	for _, ri := range st.Roots {
		if ri.Version == st.ActiveRoot {
			active = ri.Cert
		}
	}
	if active == nil {
		return "", fmt.Errorf("active root version %d has no certificate", st.ActiveRoot)
	}
	now := r.Now()
	life, left := active.NotAfter.Sub(active.NotBefore), active.NotAfter.Sub(now)
	ctx = WithAdminCaller(ctx, &Caller{SPIFFEID: "transitca schedule", Method: AuthSelf})
	switch {
	case st.PreparedRoot == 0 && float64(left) <= prepareAt*float64(life):
		info, err := r.Authority.PrepareRoot(ctx)
		if err != nil {
			return "", fmt.Errorf("scheduled prepare: %w", err)
		}
		r.changed(ctx)
		did := fmt.Sprintf("prepared root version %d: the active root v%d has %s of %s left", info.Version, st.ActiveRoot, left.Round(time.Second), life.Round(time.Second))
		return did, r.record(ctx, "root-prepared", fmt.Sprintf("version=%d fingerprint=%s reason=%s", info.Version, info.Fingerprint, quote("schedule: "+did)))
	case st.PreparedRoot != 0 && float64(left) <= activateAt*float64(life):
		if err := r.Authority.ActivateRoot(ctx, r.MinOverlap, false); err != nil {
			return "", fmt.Errorf("scheduled activate: %w", err)
		}
		r.changed(ctx)
		did := fmt.Sprintf("activated root version %d: the old root v%d has %s of %s left", st.PreparedRoot, st.ActiveRoot, left.Round(time.Second), life.Round(time.Second))
		return did, r.record(ctx, "root-activated", fmt.Sprintf("version=%d previous=%d reason=%s", st.PreparedRoot, st.ActiveRoot, quote("schedule: "+did)))
	}
	return "", nil
}
