package ca

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
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
		actor = c.SPIFFEID
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
// the current one, and streams what it signed that is still valid.
func (s *AdminService) RevokeIntermediate(req *adminv1.RevokeIntermediateRequest, stream adminv1.AdminService_RevokeIntermediateServer) error {
	r, err := s.rotation()
	if err != nil {
		return err
	}
	ctx := stream.Context()
	fp := strings.ToLower(strings.TrimSpace(req.GetFingerprint()))
	r.mu.Lock()
	if fp == "" {
		fp = r.Authority.Intermediate().Fingerprint
	}
	old, cur, err := r.Authority.RevokeIntermediate(ctx, fp)
	if err == nil {
		r.changed(ctx)
	}
	r.mu.Unlock()
	if errors.Is(err, issuer.ErrBadFingerprint) {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if err != nil {
		return err
	}
	groups, total, err := s.signedBy(ctx, fp, r.Now())
	if err != nil {
		return err
	}
	if err := r.record(ctx, "intermediate-revoked", fmt.Sprintf("fingerprint=%s current=%s live_certificates=%d workloads=%d reason=%s",
		fp, cur.Fingerprint, total, len(groups), quote(req.GetReason()))); err != nil {
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

// Drill rehearses the rotation on the running daemon.
func (s *AdminService) Drill(ctx context.Context, req *adminv1.DrillRequest) (*adminv1.DrillResponse, error) {
	r, err := s.rotation()
	if err != nil {
		return nil, err
	}
	if req.GetRoot() && !r.AllowRootDrill {
		return nil, fmt.Errorf("%w: a root drill really rotates the root; it is refused unless rotation.allow_root_drill is true (for staging)", ErrPermissionDenied)
	}
	rep, err := s.RunDrill(ctx, req.GetRoot())
	if err != nil {
		return nil, err
	}
	return &adminv1.DrillResponse{Report: rep}, nil
}

// RunDrill runs a drill and records its report; the schedule calls it
// too. A failed step does not stop the daemon serving: the report says
// what failed and where. The error is only for a report that could not be
// recorded.
func (s *AdminService) RunDrill(ctx context.Context, root bool) (*adminv1.DrillReport, error) {
	r, err := s.rotation()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	d := &drill{r: r, s: s, rep: &adminv1.DrillReport{Started: timestamppb.New(r.Now()), Root: root, Passed: true}}
	d.run(ctx)
	r.changed(ctx)
	r.lastDrill = d.rep
	if r.Metrics != nil {
		r.Metrics.observeDrill(d.rep.GetStarted().AsTime(), d.rep.GetPassed())
	}
	var failed []string
	for _, st := range d.rep.GetSteps() {
		if !st.GetPassed() {
			failed = append(failed, st.GetName())
		}
	}
	detail := fmt.Sprintf("passed=%v root=%v steps=%d", d.rep.GetPassed(), root, len(d.rep.GetSteps()))
	if len(failed) > 0 {
		detail += " failed=" + strings.Join(failed, ",")
	}
	for _, st := range d.rep.GetSteps() {
		detail += fmt.Sprintf("; %s %s (%s): %s", st.GetName(), passFail(st.GetPassed()), st.GetDuration().AsDuration().Round(time.Millisecond), st.GetDetail())
	}
	if err := r.record(ctx, "drill", boundMessage(detail)); err != nil {
		return d.rep, err
	}
	return d.rep, nil
}

func passFail(ok bool) string {
	if ok {
		return "pass"
	}
	return "FAIL"
}

// drill is one run of the rehearsal.
type drill struct {
	r   *rotation
	s   *AdminService
	rep *adminv1.DrillReport
}

// step runs f as a named step and records its outcome; it reports whether
// the step passed. Later steps that depend on a failed one are skipped
// with a reason.
func (d *drill) step(ctx context.Context, name string, f func(ctx context.Context) (string, error)) bool {
	start := time.Now()
	detail, err := f(ctx)
	st := &adminv1.DrillStep{Name: name, Passed: err == nil, Duration: durationpb.New(time.Since(start)), Detail: detail}
	if err != nil {
		st.Detail = boundMessage(err.Error())
		d.rep.Passed = false
		d.r.Service.log.WarnContext(ctx, "drill step failed", slog.String("step", name), slog.Any("error", err))
	}
	d.rep.Steps = append(d.rep.Steps, st)
	return err == nil
}

func (d *drill) skip(name, why string) {
	d.rep.Steps = append(d.rep.Steps, &adminv1.DrillStep{Name: name, Passed: false, Duration: durationpb.New(0), Detail: "skipped: " + why})
	d.rep.Passed = false
}

// probe is a drill certificate and the bundle that came with it.
type probe struct {
	chain []*x509.Certificate // leaf, intermediate
	roots []*x509.Certificate
}

func (d *drill) issueProbe(ctx context.Context) (*probe, error) {
	key, err := issuer.GenerateKey(issuer.KeyECDSAP256)
	if err != nil {
		return nil, err
	}
	is, roots, err := d.r.Service.IssueProbe(ctx, d.r.DrillIdentity, key.Public(), time.Hour)
	if err != nil {
		return nil, err
	}
	return &probe{chain: []*x509.Certificate{is.Cert, is.Issuer.Cert}, roots: roots}, nil
}

// verifyAgainst verifies p's chain against roots as a relying party would.
func (p *probe) verifyAgainst(roots []*x509.Certificate, now time.Time) error {
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	ip.AddCert(p.chain[1])
	_, err := p.chain[0].Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

func (d *drill) run(ctx context.Context) {
	a := d.r.Authority
	d.step(ctx, "vault-root-key", func(ctx context.Context) (string, error) {
		if d.r.Keys == nil {
			return "dev mode: local software keys, no Vault to check", nil
		}
		info, err := d.r.Keys.ReadKey(ctx, d.r.RootKey)
		if err != nil {
			return "", fmt.Errorf("vault: read root key %s: %w", d.r.RootKey, err)
		}
		if info.Exportable || info.AllowPlaintextBackup {
			return "", fmt.Errorf("root key %s: exportable=%v allow_plaintext_backup=%v: its private key can leave Vault", d.r.RootKey, info.Exportable, info.AllowPlaintextBackup)
		}
		return fmt.Sprintf("vault reachable; root key %s: exportable=false allow_plaintext_backup=false, latest version %d", d.r.RootKey, info.LatestVersion), nil
	})
	var first *probe
	ok := d.step(ctx, "probe-before", func(ctx context.Context) (string, error) {
		p, err := d.issueProbe(ctx)
		if err != nil {
			return "", err
		}
		if err := p.verifyAgainst(p.roots, d.r.Now()); err != nil {
			return "", fmt.Errorf("probe does not verify against the bundle it came with: %w", err)
		}
		first = p
		return fmt.Sprintf("%s serial %s under intermediate %s verifies against the bundle (%d roots)",
			d.r.DrillIdentity, store.SerialHex(p.chain[0].SerialNumber), issuer.Fingerprint(p.chain[1])[:16], len(p.roots)), nil
	})
	if d.rep.Root {
		d.rootCycle(ctx)
	}
	rotated := d.step(ctx, "rotate-intermediate", func(ctx context.Context) (string, error) {
		prev := a.Intermediate()
		cur, err := a.RotateIntermediate(ctx)
		if err != nil {
			return "", err
		}
		if cur.Fingerprint == prev.Fingerprint {
			return "", errors.New("the intermediate did not change")
		}
		if err := d.r.record(ctx, "intermediate-rotated", fmt.Sprintf("previous=%s current=%s reason=\"drill\"", prev.Fingerprint, cur.Fingerprint)); err != nil {
			return "", err
		}
		return fmt.Sprintf("%s → %s", prev.Fingerprint[:16], cur.Fingerprint[:16]), nil
	})
	if !rotated {
		d.skip("probe-after", "the intermediate did not rotate")
	} else {
		d.step(ctx, "probe-after", func(ctx context.Context) (string, error) {
			p, err := d.issueProbe(ctx)
			if err != nil {
				return "", err
			}
			if err := p.verifyAgainst(p.roots, d.r.Now()); err != nil {
				return "", fmt.Errorf("probe under the new intermediate does not verify against its bundle: %w", err)
			}
			return fmt.Sprintf("serial %s under intermediate %s verifies", store.SerialHex(p.chain[0].SerialNumber), issuer.Fingerprint(p.chain[1])[:16]), nil
		})
	}
	if !ok {
		d.skip("probe-before-still-verifies", "no first probe")
	} else {
		d.step(ctx, "probe-before-still-verifies", func(context.Context) (string, error) {
			roots := a.Roots()
			if err := first.verifyAgainst(roots, d.r.Now()); err != nil {
				return "", fmt.Errorf("a certificate issued before the rotation no longer verifies against the current bundle: %w", err)
			}
			return fmt.Sprintf("the first probe verifies against the current bundle (%d roots)", len(roots)), nil
		})
	}
	d.step(ctx, "log-verifies", func(ctx context.Context) (string, error) {
		if _, err := d.s.log.WriteCheckpoint(ctx); err != nil {
			return "", fmt.Errorf("sign a new checkpoint: %w", err)
		}
		res, err := d.s.log.Verify(ctx, nil)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("log verified up to a new signed checkpoint: %d entries, %d checkpoints", res.Size, res.Checkpoints), nil
	})
}

// rootCycle prepares and activates a root (force: a drill cannot wait the
// overlap), checking that a certificate issued before still verifies.
func (d *drill) rootCycle(ctx context.Context) {
	a := d.r.Authority
	var before *probe
	prepared := d.step(ctx, "root-prepare", func(ctx context.Context) (string, error) {
		p, err := d.issueProbe(ctx)
		if err != nil {
			return "", err
		}
		before = p
		info, err := a.PrepareRoot(ctx)
		if err != nil {
			return "", err
		}
		if err := d.r.record(ctx, "root-prepared", fmt.Sprintf("version=%d fingerprint=%s reason=\"root drill\"", info.Version, info.Fingerprint)); err != nil {
			return "", err
		}
		return fmt.Sprintf("root version %d prepared and in the bundle", info.Version), nil
	})
	if !prepared {
		d.skip("root-activate", "no prepared root")
		return
	}
	d.step(ctx, "root-activate", func(ctx context.Context) (string, error) {
		prev := a.Status().ActiveRoot
		if err := a.ActivateRoot(ctx, d.r.MinOverlap, true); err != nil {
			return "", err
		}
		st := a.Status()
		if err := d.r.record(ctx, "root-activated", fmt.Sprintf("version=%d previous=%d forced=true reason=\"root drill\"", st.ActiveRoot, prev)); err != nil {
			return "", err
		}
		p, err := d.issueProbe(ctx)
		if err != nil {
			return "", err
		}
		if err := p.verifyAgainst(p.roots, d.r.Now()); err != nil {
			return "", fmt.Errorf("probe under the new root does not verify: %w", err)
		}
		if err := before.verifyAgainst(p.roots, d.r.Now()); err != nil {
			return "", fmt.Errorf("a certificate issued before prepare does not verify against the bundle after activate: %w", err)
		}
		return fmt.Sprintf("root version %d active (was %d); old and new certificates verify against the bundle", st.ActiveRoot, prev), nil
	})
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
