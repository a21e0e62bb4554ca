package issuer_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/transitca/transitca/internal/certlint"
	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
)

// clock is a settable Options.Now. It starts in the past, so that
// certificates made at any of its times are valid now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now().Add(-72 * time.Hour)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// site is where one CA keeps everything: a Vault (Transit, KV) or a dev
// data directory. Each call of open gives fresh store objects on it, as a
// new process (a restart, another replica) would have.
type site struct {
	name string
	env  *vaulttest.Env
	dir  string
}

type stores struct {
	keys  issuer.Keys
	certs issuer.Certs
	state issuer.StateStore
}

func (s site) stores() stores {
	if s.env != nil {
		tr := issuer.NewTransit(s.env.Client, s.env.Transit, 5*time.Second)
		return stores{
			keys:  issuer.VaultKeys{Transit: tr},
			certs: issuer.NewVaultCerts(s.env.Client, s.env.KV, "transitca", 5*time.Second),
			state: issuer.NewVaultState(s.env.Client, s.env.KV, "transitca", 5*time.Second),
		}
	}
	return stores{
		keys:  issuer.NewLocalKeys(s.dir),
		certs: issuer.NewLocalCerts(s.dir),
		state: issuer.NewFileState(filepath.Join(s.dir, "rotation.json")),
	}
}

var sites = []struct {
	name string
	new  func(t *testing.T) site
}{
	{"vault", func(t *testing.T) site { return site{name: "vault", env: vaulttest.New(t)} }},
	{"dev", func(t *testing.T) site { return site{name: "dev", dir: t.TempDir()} }},
}

var modes = []issuer.Mode{issuer.ModeMemory, issuer.ModeVault}

// recorder is an OnIntermediate that keeps what it was told.
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (r *recorder) record(_ context.Context, in *issuer.Intermediate) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, in.Fingerprint)
	return nil
}

func (r *recorder) saw(fp string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.seen, fp)
}

func rotationOptions(mode issuer.Mode, clk *clock, rec *recorder) issuer.Options {
	o := issuer.Options{
		Mode:   mode,
		Now:    clk.Now,
		Logger: slog.New(slog.DiscardHandler),
	}
	if rec != nil {
		o.OnIntermediate = rec.record
	}
	return o
}

// openAt runs Init once and opens an authority on s with fresh stores.
func openAt(t *testing.T, s site, o issuer.Options) (*issuer.Authority, stores) {
	t.Helper()
	ctx := context.Background()
	st := s.stores()
	if _, err := issuer.Init(ctx, st.keys, st.certs, o); err != nil {
		t.Fatal(err)
	}
	if o.State == nil {
		o.State = st.state
	}
	a, err := issuer.Open(ctx, st.keys, st.certs, o)
	if err != nil {
		t.Fatal(err)
	}
	return a, st
}

func signLeaf(t *testing.T, a *issuer.Authority) *issuer.Issued {
	t.Helper()
	tmpl, pub := leafTemplate(t, 24*time.Hour)
	is, err := a.SignLeaf(context.Background(), tmpl, pub)
	if err != nil {
		t.Fatal(err)
	}
	return is
}

// chainsTo verifies a leaf, with its issuer as the only intermediate,
// against roots.
func chainsTo(is *issuer.Issued, roots ...*x509.Certificate) error {
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	ip.AddCert(is.Issuer.Cert)
	_, err := is.Cert.Verify(x509.VerifyOptions{
		Roots: rp, Intermediates: ip,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err
}

func versions(roots []*x509.Certificate, byFP map[string]int) []int {
	var out []int
	for _, r := range roots {
		out = append(out, byFP[issuer.Fingerprint(r)])
	}
	return out
}

func TestRotationStateDerivedOnFirstOpen(t *testing.T) {
	for _, sc := range sites {
		t.Run(sc.name, func(t *testing.T) {
			s := sc.new(t)
			ctx := context.Background()
			a, st := openAt(t, s, rotationOptions(issuer.ModeMemory, newClock(), nil))
			got, rev, err := st.state.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || rev != 1 || got.Revision != 1 || got.ActiveRoot != 1 || !slices.Equal(got.BundleRoots, []int{1}) || got.PreparedRoot != 0 {
				t.Fatalf("derived state %+v at revision %d, want root 1 active and alone in the bundle at revision 1", got, rev)
			}
			if a.RootKeyVersion() != 1 || len(a.Roots()) != 1 {
				t.Fatalf("root version %d, %d roots", a.RootKeyVersion(), len(a.Roots()))
			}
			// A restart reads the state; it does not write it again.
			openAt(t, s, rotationOptions(issuer.ModeMemory, newClock(), nil))
			if _, rev, _ := st.state.Load(ctx); rev != 1 {
				t.Fatalf("state rewritten by a second open: revision %d", rev)
			}
		})
	}
}

func TestRootRotation(t *testing.T) {
	const overlap = 24 * time.Hour
	for _, sc := range sites {
		for _, mode := range modes {
			t.Run(sc.name+"/"+string(mode), func(t *testing.T) {
				s := sc.new(t)
				ctx := context.Background()
				clk, rec := newClock(), &recorder{}
				a, _ := openAt(t, s, rotationOptions(mode, clk, rec))
				root1 := a.Root()
				before := signLeaf(t, a)

				// Prepare: a second root in the bundle, issuance unchanged.
				prep, err := a.PrepareRoot(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if prep.Version != 2 || prep.Role != issuer.RolePrepared {
					t.Fatalf("prepared %+v, want version 2", prep)
				}
				root2 := prep.Cert
				checkCA(t, root2, 1, false)
				if err := root2.CheckSignatureFrom(root2); err != nil {
					t.Fatalf("new root is not self-signed: %v", err)
				}
				byFP := map[string]int{issuer.Fingerprint(root1): 1, issuer.Fingerprint(root2): 2}
				if got := versions(a.Roots(), byFP); !slices.Equal(got, []int{1, 2}) {
					t.Fatalf("bundle after prepare: root versions %v, want [1 2]", got)
				}
				if again, err := a.PrepareRoot(ctx); err != nil || again.Version != 2 {
					t.Fatalf("prepare again: %+v, %v; want the same version 2", again, err)
				}
				during := signLeaf(t, a)
				if during.RootKeyVersion != 1 || during.Issuer != before.Issuer || chainsTo(during, root1) != nil {
					t.Fatal("issuance moved off the active root at prepare")
				}

				// Activate: refused before the overlap, allowed after it.
				clk.Advance(overlap - time.Hour)
				err = a.ActivateRoot(ctx, overlap, false)
				if !errors.Is(err, issuer.ErrRotationRefused) || !strings.Contains(err.Error(), "1h0m0s left") {
					t.Fatalf("activate before the overlap: %v, want ErrRotationRefused saying 1h0m0s left", err)
				}
				if a.RootKeyVersion() != 1 {
					t.Fatal("a refused activation changed the active root")
				}
				clk.Advance(time.Hour)
				if err := a.ActivateRoot(ctx, overlap, false); err != nil {
					t.Fatal(err)
				}
				in := a.Intermediate()
				if a.RootKeyVersion() != 2 || a.Root() != root2 || in.RootKeyVersion != 2 {
					t.Fatalf("after activate: root version %d, intermediate under %d", a.RootKeyVersion(), in.RootKeyVersion)
				}
				checkCA(t, in.Cert, 0, true)
				if err := in.Cert.CheckSignatureFrom(root2); err != nil {
					t.Fatalf("new intermediate not certified by the new root: %v", err)
				}
				if !rec.saw(in.Fingerprint) {
					t.Fatal("intermediate put to use without OnIntermediate")
				}
				after := signLeaf(t, a)
				if after.RootKeyVersion != 2 || chainsTo(after, root2) != nil || chainsTo(after, root1) == nil {
					t.Fatal("a leaf issued after activation does not chain to the new root alone")
				}
				if before.RootKeyVersion != 1 {
					t.Fatalf("leaf issued before carries root version %d", before.RootKeyVersion)
				}
				if err := chainsTo(before, a.Roots()...); err != nil {
					t.Fatalf("a leaf issued before activation no longer verifies against the bundle: %v", err)
				}
				if got := versions(a.Roots(), byFP); !slices.Equal(got, []int{2, 1}) {
					t.Fatalf("bundle after activate: root versions %v, want [2 1]", got)
				}
				if err := a.ActivateRoot(ctx, 0, true); !errors.Is(err, issuer.ErrNoPreparedRoot) {
					t.Fatalf("activate with nothing prepared: %v", err)
				}

				// Retire: never the active root; the old one leaves the bundle.
				if err := a.RetireRoot(ctx, 2, false); !errors.Is(err, issuer.ErrRotationRefused) {
					t.Fatalf("retire the active root: %v, want ErrRotationRefused", err)
				}
				if err := a.RetireRoot(ctx, 1, false); err != nil {
					t.Fatal(err)
				}
				if got := versions(a.Roots(), byFP); !slices.Equal(got, []int{2}) {
					t.Fatalf("bundle after retire: root versions %v, want [2]", got)
				}
				if chainsTo(before, a.Roots()...) == nil {
					t.Fatal("a leaf under the retired root still verifies against the bundle")
				}
				if err := a.RetireRoot(ctx, 1, false); err != nil {
					t.Fatalf("retire twice: %v", err)
				}

				// A restart continues from the stored state.
				b, _ := openAt(t, s, rotationOptions(mode, clk, nil))
				if b.RootKeyVersion() != 2 || len(b.Roots()) != 1 || b.Intermediate().RootKeyVersion != 2 {
					t.Fatalf("after restart: root version %d, %d roots", b.RootKeyVersion(), len(b.Roots()))
				}
				if err := chainsTo(signLeaf(t, b), root2); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

func TestActivateRootForce(t *testing.T) {
	for _, sc := range sites {
		t.Run(sc.name, func(t *testing.T) {
			ctx := context.Background()
			a, _ := openAt(t, sc.new(t), rotationOptions(issuer.ModeMemory, newClock(), nil))
			if err := a.ActivateRoot(ctx, 0, true); !errors.Is(err, issuer.ErrNoPreparedRoot) {
				t.Fatalf("activate before prepare: %v, want ErrNoPreparedRoot", err)
			}
			if _, err := a.PrepareRoot(ctx); err != nil {
				t.Fatal(err)
			}
			if err := a.ActivateRoot(ctx, 30*24*time.Hour, true); err != nil {
				t.Fatalf("forced activation: %v", err)
			}
			if a.RootKeyVersion() != 2 || signLeaf(t, a).RootKeyVersion != 2 {
				t.Fatal("forced activation did not move issuance to root 2")
			}
		})
	}
}

func TestStatusRoles(t *testing.T) {
	ctx := context.Background()
	a, _ := openAt(t, sites[1].new(t), rotationOptions(issuer.ModeMemory, newClock(), nil))
	for range 2 {
		if _, err := a.PrepareRoot(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.ActivateRoot(ctx, 0, true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.RetireRoot(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	st := a.Status()
	var got []string
	for _, r := range st.Roots {
		got = append(got, fmt.Sprintf("%s:%d", r.Role, r.Version))
		if r.Cert == nil || r.Fingerprint != issuer.Fingerprint(r.Cert) || !r.NotAfter.Equal(r.Cert.NotAfter) {
			t.Errorf("root %d: certificate, fingerprint or NotAfter missing", r.Version)
		}
	}
	want := []string{"active:3", "prepared:4", "trusted:2", "compromised:1"}
	if !slices.Equal(got, want) {
		t.Fatalf("status roots %v, want %v", got, want)
	}
	if st.ActiveRoot != 3 || st.PreparedRoot != 4 || st.PreparedAt.IsZero() || st.Intermediate != a.Intermediate() || st.StateRevision < 2 {
		t.Fatalf("status %+v", st)
	}
	if len(a.Roots()) != 3 {
		t.Fatalf("%d roots in the bundle, want 3 (the compromised one left)", len(a.Roots()))
	}
	// A compromised root version is never prepared again, nor trusted after
	// a restart.
	if err := a.RetireRoot(ctx, 4, true); err != nil {
		t.Fatal(err)
	}
	if p, err := a.PrepareRoot(ctx); err != nil || p.Version != 5 {
		t.Fatalf("prepare after the prepared root was declared compromised: %+v, %v; want version 5", p, err)
	}
}

// failingState wraps a StateStore and fails the next Store when armed: the
// Vault work of a step is done, its state write is lost, as when the
// process is killed between the two.
type failingState struct {
	issuer.StateStore
	fail atomic.Bool
}

var errCrash = errors.New("killed before the state write")

func (f *failingState) Store(ctx context.Context, st *issuer.RotationState, rev int) (int, error) {
	if f.fail.Swap(false) {
		return 0, errCrash
	}
	return f.StateStore.Store(ctx, st, rev)
}

func TestRotationStepsConvergeAfterCrash(t *testing.T) {
	for _, sc := range sites {
		for _, mode := range modes {
			t.Run(sc.name+"/"+string(mode), func(t *testing.T) {
				s := sc.new(t)
				ctx := context.Background()
				clk := newClock()
				fs := &failingState{StateStore: s.stores().state}
				o := rotationOptions(mode, clk, nil)
				o.State = fs
				a, st := openAt(t, s, o)

				// PrepareRoot: the key rotated and the root certificate
				// stored, the state write lost.
				fs.fail.Store(true)
				if _, err := a.PrepareRoot(ctx); !errors.Is(err, errCrash) {
					t.Fatalf("prepare with the state write lost: %v", err)
				}
				root2, _, err := st.certs.Load(ctx, "root/"+issuer.DefaultRootKey+"/v2")
				if err != nil {
					t.Fatalf("the crashed prepare stored no root certificate: %v", err)
				}
				b, st := openAt(t, s, rotationOptions(mode, clk, nil))
				if len(b.Roots()) != 1 {
					t.Fatal("a lost state write left the prepared root in the bundle")
				}
				p, err := b.PrepareRoot(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if p.Version != 2 || issuer.Fingerprint(p.Cert) != issuer.Fingerprint(root2) {
					t.Fatalf("prepare after the crash made version %d, want the crashed run's version 2 and its certificate", p.Version)
				}
				if _, err := st.keys.Signer(ctx, issuer.DefaultRootKey, 3); !errors.Is(err, issuer.ErrKeyNotFound) {
					t.Fatalf("the root key was rotated again: %v", err)
				}
				if s.env != nil {
					meta, err := s.env.Client.KVv2(s.env.KV).GetMetadata(ctx, "transitca/root/"+issuer.DefaultRootKey+"/v2")
					if err != nil {
						t.Fatal(err)
					}
					if meta.CurrentVersion != 1 {
						t.Fatalf("root certificate v2 written %d times", meta.CurrentVersion)
					}
				}

				// A crash right after the rotate, before the certificate.
				if err := b.RetireRoot(ctx, 2, false); err != nil {
					t.Fatal(err)
				}
				// Version 2 left the bundle unused and uncompromised: the
				// next prepare may take it again; rotate past it first so
				// that the leftover is a version with no certificate.
				if _, err := st.keys.(issuer.KeyRotator).Rotate(ctx, issuer.DefaultRootKey); err != nil {
					t.Fatal(err)
				}
				p, err = b.PrepareRoot(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if p.Version != 3 {
					t.Fatalf("prepare after a crash following the rotate made version %d, want 3", p.Version)
				}
				certlint.Check(t, p.Cert)

				// ActivateRoot: the state write lost, nothing changes; run
				// again, it activates.
				fs2 := &failingState{StateStore: st.state}
				o = rotationOptions(mode, clk, nil)
				o.State = fs2
				c, _ := openAt(t, s, o)
				fs2.fail.Store(true)
				if err := c.ActivateRoot(ctx, 0, true); !errors.Is(err, errCrash) {
					t.Fatalf("activate with the state write lost: %v", err)
				}
				if c.RootKeyVersion() != 1 || c.Intermediate().RootKeyVersion != 1 {
					t.Fatal("a lost activation changed the issuing root")
				}
				d, _ := openAt(t, s, rotationOptions(mode, clk, nil))
				if d.RootKeyVersion() != 1 {
					t.Fatal("a lost activation reached the state")
				}
				if err := d.ActivateRoot(ctx, 0, true); err != nil {
					t.Fatal(err)
				}
				if d.RootKeyVersion() != 3 || signLeaf(t, d).RootKeyVersion != 3 {
					t.Fatal("activation after the crash did not converge")
				}
			})
		}
	}
}

func TestRevokeIntermediate(t *testing.T) {
	for _, sc := range sites {
		for _, mode := range modes {
			t.Run(sc.name+"/"+string(mode), func(t *testing.T) {
				s := sc.new(t)
				ctx := context.Background()
				clk, rec := newClock(), &recorder{}
				a, st := openAt(t, s, rotationOptions(mode, clk, rec))
				if _, _, err := a.RevokeIntermediate(ctx, issuer.Revocation{Fingerprint: "not-a-fingerprint"}); !errors.Is(err, issuer.ErrBadFingerprint) {
					t.Fatalf("revoke a malformed fingerprint: %v", err)
				}
				first := a.Intermediate()
				leaf := signLeaf(t, a)
				old, cur, err := a.RevokeIntermediate(ctx, issuer.Revocation{})
				if err != nil {
					t.Fatal(err)
				}
				if old != first || cur == nil || cur.Fingerprint == first.Fingerprint || a.Intermediate() != cur {
					t.Fatalf("revoke returned old %v cur %v", old, cur)
				}
				checkCA(t, cur.Cert, 0, true)
				if !rec.saw(cur.Fingerprint) {
					t.Fatal("replacement intermediate put to use without OnIntermediate")
				}
				if mode == issuer.ModeVault && cur.KeyVersion != first.KeyVersion+1 {
					t.Fatalf("vault-mode replacement on key version %d, want %d", cur.KeyVersion, first.KeyVersion+1)
				}
				state, _, err := st.state.Load(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if !state.IntermediateCompromised(first.Fingerprint) {
					t.Fatal("revocation not recorded in the state")
				}
				if signLeaf(t, a).Issuer.Fingerprint == first.Fingerprint {
					t.Fatal("signed with the revoked intermediate")
				}
				// Leaves issued before keep verifying (revocation is for the
				// log to act on); the bundle is unchanged.
				if err := chainsTo(leaf, a.Roots()...); err != nil {
					t.Fatal(err)
				}
				// Revoking again is not an error.
				if _, again, err := a.RevokeIntermediate(ctx, issuer.Revocation{Fingerprint: first.Fingerprint}); err != nil || again != cur {
					t.Fatalf("revoke twice: %v", err)
				}
				b, _ := openAt(t, s, rotationOptions(mode, clk, nil))
				if b.Intermediate().Fingerprint == first.Fingerprint {
					t.Fatal("a new authority uses the revoked intermediate")
				}
			})
		}
	}
}

// A vault-mode intermediate recorded as compromised, with its key not yet
// rotated (a revocation cut short, or recorded by another replica), is never
// reused by a new authority: it rotates the key.
func TestVaultModeNeverReusesCompromisedIntermediate(t *testing.T) {
	for _, sc := range sites {
		t.Run(sc.name, func(t *testing.T) {
			s := sc.new(t)
			ctx := context.Background()
			clk := newClock()
			a, st := openAt(t, s, rotationOptions(issuer.ModeVault, clk, nil))
			bad := a.Intermediate()
			state, rev, err := st.state.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			state.CompromisedIntermediates = append(state.CompromisedIntermediates, bad.Fingerprint)
			if _, err := st.state.Store(ctx, state, rev); err != nil {
				t.Fatal(err)
			}
			b, _ := openAt(t, s, rotationOptions(issuer.ModeVault, clk, nil))
			if got := b.Intermediate(); got.Fingerprint == bad.Fingerprint || got.KeyVersion != bad.KeyVersion+1 {
				t.Fatalf("new authority uses key version %d (%s), want a new version", got.KeyVersion, got.Fingerprint)
			}
			// The first authority adopts it at its next Reload.
			if err := a.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if a.Intermediate().Fingerprint == bad.Fingerprint {
				t.Fatal("reload kept the compromised intermediate")
			}
		})
	}
}

func TestReplicasAdoptRotationOnReload(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s := sites[0].new(t)
			ctx := context.Background()
			clk := newClock()
			rec2 := &recorder{}
			a1, _ := openAt(t, s, rotationOptions(mode, clk, nil))
			a2, _ := openAt(t, s, rotationOptions(mode, clk, rec2))

			if _, err := a1.PrepareRoot(ctx); err != nil {
				t.Fatal(err)
			}
			if len(a2.Roots()) != 1 {
				t.Fatal("replica changed before reading the state")
			}
			if err := a2.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if len(a2.Roots()) != 2 || a2.RootKeyVersion() != 1 {
				t.Fatalf("replica after prepare and reload: %d roots, active %d", len(a2.Roots()), a2.RootKeyVersion())
			}
			if err := a1.ActivateRoot(ctx, 0, true); err != nil {
				t.Fatal(err)
			}
			if err := a2.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			in := a2.Intermediate()
			if a2.RootKeyVersion() != 2 || in.RootKeyVersion != 2 || in.Cert.CheckSignatureFrom(a1.Root()) != nil {
				t.Fatalf("replica after activate and reload: active %d, intermediate under %d", a2.RootKeyVersion(), in.RootKeyVersion)
			}
			if !rec2.saw(in.Fingerprint) {
				t.Fatal("replica put an intermediate to use without OnIntermediate")
			}
			if err := chainsTo(signLeaf(t, a2), a1.Root()); err != nil {
				t.Fatal(err)
			}

			// A revocation by one replica of the other's intermediate, known
			// to it from the other's log.
			if _, _, err := a1.RevokeIntermediate(ctx, issuer.Revocation{Fingerprint: in.Fingerprint, Issued: true}); err != nil {
				t.Fatal(err)
			}
			if err := a2.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if a2.Intermediate().Fingerprint == in.Fingerprint {
				t.Fatal("replica kept an intermediate revoked by another")
			}

			// Run polls the state.
			o := rotationOptions(mode, clk, nil)
			o.StatePollInterval = 50 * time.Millisecond
			a3, _ := openAt(t, s, o)
			rctx, cancel := context.WithCancel(ctx)
			defer cancel()
			go a3.Run(rctx)
			if _, err := a1.PrepareRoot(ctx); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for len(a3.Roots()) != 3 {
				if time.Now().After(deadline) {
					t.Fatal("Run did not adopt another replica's prepared root")
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

func TestRotateIntermediateUnderLoad(t *testing.T) {
	for _, sc := range sites {
		for _, mode := range modes {
			t.Run(sc.name+"/"+string(mode), func(t *testing.T) {
				ctx := context.Background()
				rec := &recorder{}
				a, _ := openAt(t, sc.new(t), rotationOptions(mode, newClock(), rec))
				first := a.Intermediate()
				var (
					stop   atomic.Bool
					wg     sync.WaitGroup
					failed atomic.Int64
					mu     sync.Mutex
					issued []*issuer.Issued
				)
				for range 4 {
					wg.Go(func() {
						for !stop.Load() {
							tmpl, pub := leafTemplate(t, time.Hour)
							is, err := a.SignLeaf(ctx, tmpl, pub)
							if err != nil {
								failed.Add(1)
								t.Error(err)
								return
							}
							mu.Lock()
							issued = append(issued, is)
							mu.Unlock()
						}
					})
				}
				seen := map[string]bool{first.Fingerprint: true}
				for range 3 {
					time.Sleep(20 * time.Millisecond)
					in, err := a.RotateIntermediate(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if seen[in.Fingerprint] || !rec.saw(in.Fingerprint) {
						t.Fatal("RotateIntermediate did not put a new, recorded intermediate to use")
					}
					seen[in.Fingerprint] = true
					certlint.Check(t, in.Cert)
				}
				time.Sleep(20 * time.Millisecond)
				stop.Store(true)
				wg.Wait()
				if failed.Load() != 0 {
					t.Fatalf("%d signatures failed during rotation", failed.Load())
				}
				issuers := map[string]bool{}
				for _, is := range issued {
					if err := chainsTo(is, a.Roots()...); err != nil {
						t.Fatalf("leaf by %s: %v", is.Issuer.Fingerprint, err)
					}
					issuers[is.Issuer.Fingerprint] = true
				}
				if len(issuers) < 2 {
					t.Fatalf("%d leaves all signed by one intermediate", len(issued))
				}
				if mode == issuer.ModeVault && a.Intermediate().KeyVersion != first.KeyVersion+3 {
					t.Fatalf("vault-mode intermediate key version %d after 3 rotations from %d", a.Intermediate().KeyVersion, first.KeyVersion)
				}
			})
		}
	}
}

func TestRotationNeedsStateStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	keys, certs := issuer.NewLocalKeys(dir), issuer.NewLocalCerts(dir)
	o := rotationOptions(issuer.ModeMemory, newClock(), nil)
	if _, err := issuer.Init(ctx, keys, certs, o); err != nil {
		t.Fatal(err)
	}
	a, err := issuer.Open(ctx, keys, certs, o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.PrepareRoot(ctx); !errors.Is(err, issuer.ErrNoStateStore) {
		t.Fatalf("prepare without a state store: %v, want ErrNoStateStore", err)
	}
	if _, err := keys.Signer(ctx, issuer.DefaultRootKey, 2); !errors.Is(err, issuer.ErrKeyNotFound) {
		t.Fatal("a refused prepare rotated the root key")
	}
	if _, err := a.RotateIntermediate(ctx); err != nil {
		t.Fatalf("rotate the intermediate without a state store: %v", err)
	}
}

// rotationPolicy is the Vault policy a daemon needs to serve and rotate, in
// both intermediate modes: on top of reading keys and signing, the rotate
// endpoint of the root and intermediate keys, and create/read/update on the
// KV paths of the CA certificates and the rotation state. It grants no
// keys/*/config (which could make a key exportable) and no key creation.
func rotationPolicy(env *vaulttest.Env) string {
	var b strings.Builder
	for _, k := range []string{issuer.DefaultRootKey, issuer.DefaultIntermediateKey} {
		fmt.Fprintf(&b, "path %q { capabilities = [\"read\"] }\n", env.Transit+"/keys/"+k)
		fmt.Fprintf(&b, "path %q { capabilities = [\"update\"] }\n", env.Transit+"/keys/"+k+"/rotate")
		fmt.Fprintf(&b, "path %q { capabilities = [\"update\"] }\n", env.Transit+"/sign/"+k+"/*")
	}
	fmt.Fprintf(&b, "path %q { capabilities = [\"create\", \"read\", \"update\"] }\n", env.KV+"/data/transitca/*")
	return b.String()
}

func TestRotationWithLeastPrivilegePolicy(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			env := vaulttest.New(t)
			ctx := context.Background()
			o := rotationOptions(mode, newClock(), nil)
			root := site{env: env}.stores()
			if _, err := issuer.Init(ctx, root.keys, root.certs, o); err != nil {
				t.Fatal(err)
			}
			name := "rotation-" + env.Transit
			if err := env.Client.Sys().PutPolicy(name, rotationPolicy(env)); err != nil {
				t.Fatal(err)
			}
			tok, err := env.Client.Auth().Token().Create(&vault.TokenCreateRequest{Policies: []string{name}})
			if err != nil {
				t.Fatal(err)
			}
			c, err := env.Client.Clone()
			if err != nil {
				t.Fatal(err)
			}
			c.SetToken(tok.Auth.ClientToken)
			limited := site{env: &vaulttest.Env{Server: env.Server, Client: c, Transit: env.Transit, KV: env.KV}}
			a, _ := openAt(t, limited, o)
			if _, err := a.PrepareRoot(ctx); err != nil {
				t.Fatal(err)
			}
			if err := a.ActivateRoot(ctx, 0, true); err != nil {
				t.Fatal(err)
			}
			if err := a.RetireRoot(ctx, 1, false); err != nil {
				t.Fatal(err)
			}
			if _, err := a.RotateIntermediate(ctx); err != nil {
				t.Fatal(err)
			}
			if _, _, err := a.RevokeIntermediate(ctx, issuer.Revocation{}); err != nil {
				t.Fatal(err)
			}
			if err := chainsTo(signLeaf(t, a), a.Roots()...); err != nil {
				t.Fatal(err)
			}
		})
	}
}
