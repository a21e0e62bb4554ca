package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/transitca/transitca/issuer"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

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
	var failed, notChecked []string
	for _, st := range d.rep.GetSteps() {
		switch {
		case !st.GetPassed():
			failed = append(failed, st.GetName())
		case stepNotChecked(st):
			notChecked = append(notChecked, st.GetName())
		}
	}
	detail := fmt.Sprintf("passed=%v root=%v steps=%d", d.rep.GetPassed(), root, len(d.rep.GetSteps()))
	if len(failed) > 0 {
		detail += " failed=" + strings.Join(failed, ",")
	}
	if len(notChecked) > 0 {
		detail += " not_checked=" + strings.Join(notChecked, ",")
	}
	for _, st := range d.rep.GetSteps() {
		status := passFail(st.GetPassed())
		if stepNotChecked(st) {
			status = "NOT CHECKED"
		}
		detail += fmt.Sprintf("; %s %s (%s): %s", st.GetName(), status, st.GetDuration().AsDuration().Round(time.Millisecond), st.GetDetail())
	}
	if r.Custody != nil {
		if err := recordCustody(ctx, r, "drill"); err != nil {
			return d.rep, err
		}
	}
	if err := r.record(ctx, "drill", boundMessage(detail)); err != nil {
		return d.rep, err
	}
	return d.rep, nil
}

// NotCheckedPrefix starts the detail of a drill step that could not check
// what it is for (a dev-mode CA has no Vault to ask): the step does not
// fail the drill, and the drill's entry lists it as not_checked, not as
// passed.
const NotCheckedPrefix = "not checked: "

func stepNotChecked(st *adminv1.DrillStep) bool {
	return st.GetPassed() && strings.HasPrefix(st.GetDetail(), NotCheckedPrefix)
}

// recordCustody records where each key is kept and what Vault answers
// about it, as a key-custody entry.
func recordCustody(ctx context.Context, r *rotation, at string) error {
	detail, err := (&KeyCustodyRecord{At: at, Keys: r.Custody(ctx)}).Detail()
	if err != nil {
		return err
	}
	return r.record(ctx, KeyCustodyAction, detail)
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
	is, roots, err := d.r.Service.IssueProbe(ctx, d.r.DrillIdentity, key.Public(), DrillProbeTTL)
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
			return NotCheckedPrefix + "dev mode: local software keys, no Vault to check", nil
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
