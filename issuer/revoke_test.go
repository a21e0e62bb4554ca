package issuer_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/issuer"
)

func randomFingerprint(t *testing.T) string {
	t.Helper()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

func chainOf(is *issuer.Issued, root *x509.Certificate) []*x509.Certificate {
	return []*x509.Certificate{is.Cert, is.Issuer.Cert, root}
}

// RevokeIntermediate takes only what the CA issued: a root's fingerprint
// is refused even with force, one the caller cannot show the CA issued is
// refused without force, and a refusal leaves the state as it was.
func TestRevokeIntermediateOnlyWhatTheCAIssued(t *testing.T) {
	for _, sc := range sites {
		t.Run(sc.name, func(t *testing.T) {
			s := sc.new(t)
			ctx := context.Background()
			a, st := openAt(t, s, rotationOptions(issuer.ModeMemory, newClock(), nil))
			_, before, err := st.state.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			root := issuer.Fingerprint(a.Root())
			for _, force := range []bool{false, true} {
				if _, _, err := a.RevokeIntermediate(ctx, issuer.Revocation{Fingerprint: root, Force: force}); !errors.Is(err, issuer.ErrNotAnIntermediate) {
					t.Fatalf("revoke the root's fingerprint (force %v): %v, want ErrNotAnIntermediate", force, err)
				}
			}
			unknown := randomFingerprint(t)
			if _, _, err := a.RevokeIntermediate(ctx, issuer.Revocation{Fingerprint: unknown}); !errors.Is(err, issuer.ErrUnknownIntermediate) {
				t.Fatalf("revoke a fingerprint the ca never issued: %v, want ErrUnknownIntermediate", err)
			}
			if _, after, err := st.state.Load(ctx); err != nil || after != before {
				t.Fatalf("refused revocations wrote the state: revision %d → %d (%v)", before, after, err)
			}
			cur := a.Intermediate()
			if _, now, err := a.RevokeIntermediate(ctx, issuer.Revocation{Fingerprint: unknown, Force: true}); err != nil || now != cur {
				t.Fatalf("forced revocation of an unknown fingerprint: %v (intermediate changed: %v)", err, now != cur)
			}
			state, _, err := st.state.Load(ctx)
			if err != nil || !state.IntermediateCompromised(unknown) {
				t.Fatalf("forced revocation not recorded: %v", err)
			}
		})
	}
}

// A chain through a revoked intermediate, or through a root retired as
// compromised, is refused by CheckChain: on the authority that revoked it,
// on one opened afterwards (a restart, a new replica), and on one that was
// running, once it has read the state again.
func TestCheckChainRefusesCompromisedCertificates(t *testing.T) {
	for _, sc := range sites {
		t.Run(sc.name, func(t *testing.T) {
			s := sc.new(t)
			ctx := context.Background()
			clk := newClock()
			a, _ := openAt(t, s, rotationOptions(issuer.ModeMemory, clk, nil))
			running, _ := openAt(t, s, rotationOptions(issuer.ModeMemory, clk, nil))
			root1 := a.Root()
			leaf := signLeaf(t, a)
			if err := a.CheckChain(chainOf(leaf, root1)); err != nil {
				t.Fatalf("a chain through the current intermediate: %v", err)
			}
			if _, _, err := a.RevokeIntermediate(ctx, issuer.Revocation{}); err != nil {
				t.Fatal(err)
			}
			if err := a.CheckChain(chainOf(leaf, root1)); !errors.Is(err, issuer.ErrCompromised) || !strings.Contains(err.Error(), leaf.Issuer.Fingerprint) {
				t.Fatalf("after the revocation: %v, want ErrCompromised naming %s", err, leaf.Issuer.Fingerprint)
			}
			restarted, _ := openAt(t, s, rotationOptions(issuer.ModeMemory, clk, nil))
			if err := restarted.CheckChain(chainOf(leaf, root1)); !errors.Is(err, issuer.ErrCompromised) {
				t.Fatalf("an authority opened after the revocation: %v, want ErrCompromised", err)
			}
			if err := running.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if err := running.CheckChain(chainOf(leaf, root1)); !errors.Is(err, issuer.ErrCompromised) {
				t.Fatalf("a running authority after Reload: %v, want ErrCompromised", err)
			}

			// A root retired as compromised: chains through it are refused
			// by name, not only by its absence from the bundle.
			fresh := signLeaf(t, a)
			if _, err := a.PrepareRoot(ctx); err != nil {
				t.Fatal(err)
			}
			if err := a.ActivateRoot(ctx, 0, true); err != nil {
				t.Fatal(err)
			}
			if err := a.RetireRoot(ctx, 1, true); err != nil {
				t.Fatal(err)
			}
			if err := a.CheckChain(chainOf(fresh, root1)); !errors.Is(err, issuer.ErrCompromised) || !strings.Contains(err.Error(), "root version 1") {
				t.Fatalf("a chain through the compromised root: %v, want ErrCompromised naming root version 1", err)
			}
			if err := a.CheckChain(chainOf(signLeaf(t, a), a.Root())); err != nil {
				t.Fatalf("a chain through the new root and intermediate: %v", err)
			}
		})
	}
}

// In the vault mode a Transit key version is certified again at half the
// intermediate's life, so one key has several certificates. Revoking one
// of them, its key known from the log, distrusts every certificate for
// that key, and the authority moves to a new key version even though the
// certificate it used was not the one named.
func TestRevokedKeyIsDistrustedInEveryCertificate(t *testing.T) {
	for _, sc := range sites {
		t.Run(sc.name, func(t *testing.T) {
			if sc.name != "vault" {
				t.Skip("the vault intermediate mode needs Vault")
			}
			s := sc.new(t)
			ctx := context.Background()
			clk := newClock()
			a, _ := openAt(t, s, rotationOptions(issuer.ModeVault, clk, nil))
			x := a.Intermediate()
			clk.Advance(issuer.DefaultIntermediateTTL/2 + time.Hour)
			if err := a.Renew(ctx); err != nil {
				t.Fatal(err)
			}
			y := a.Intermediate()
			if y.Fingerprint == x.Fingerprint || y.KeyVersion != x.KeyVersion {
				t.Fatalf("renewal past half life: key version %d → %d, same certificate %v; want the same key certified again", x.KeyVersion, y.KeyVersion, y.Fingerprint == x.Fingerprint)
			}
			underY := signLeaf(t, a)
			if _, _, err := a.RevokeIntermediate(ctx, issuer.Revocation{
				Fingerprint: x.Fingerprint, Issued: true, Key: issuer.KeyFingerprint(x.Cert.PublicKey), NotAfter: x.Cert.NotAfter,
			}); err != nil {
				t.Fatal(err)
			}
			if err := a.CheckChain(chainOf(underY, a.Root())); !errors.Is(err, issuer.ErrCompromised) || !strings.Contains(err.Error(), "key of compromised intermediate "+x.Fingerprint) {
				t.Fatalf("a chain through the other certificate of the revoked key: %v, want ErrCompromised", err)
			}
			if cur := a.Intermediate(); cur.KeyVersion == x.KeyVersion {
				t.Fatalf("the authority still signs with key version %d, whose key was revoked", cur.KeyVersion)
			}
			if err := a.CheckChain(chainOf(signLeaf(t, a), a.Root())); err != nil {
				t.Fatalf("a chain through the new key version: %v", err)
			}
		})
	}
}

// The list of compromised intermediates is bounded: at
// MaxCompromisedIntermediates a revocation is refused, saying when the
// first entry leaves, and changes nothing; once entries are past their
// end (nothing can chain through them) they leave the list and room is
// made.
func TestCompromisedIntermediatesAreBounded(t *testing.T) {
	s := site{name: "dev", dir: t.TempDir()}
	ctx := context.Background()
	clk := newClock()
	o := rotationOptions(issuer.ModeMemory, clk, nil)
	state := issuer.NewMemoryState()
	o.State = state
	a, _ := openAt(t, s, o)
	for range issuer.MaxCompromisedIntermediates {
		if _, _, err := a.RevokeIntermediate(ctx, issuer.Revocation{Fingerprint: randomFingerprint(t), Force: true}); err != nil {
			t.Fatal(err)
		}
	}
	_, rev, err := state.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = a.RevokeIntermediate(ctx, issuer.Revocation{Fingerprint: randomFingerprint(t), Force: true})
	if !errors.Is(err, issuer.ErrTooManyRevoked) || !strings.Contains(err.Error(), "dropped at") {
		t.Fatalf("revocation beyond the bound: %v, want ErrTooManyRevoked saying when room is made", err)
	}
	if _, again, _ := state.Load(ctx); again != rev {
		t.Fatalf("the refused revocation wrote the state (revision %d → %d)", rev, again)
	}
	clk.Advance(issuer.DefaultIntermediateTTL + time.Minute)
	last := randomFingerprint(t)
	if _, _, err := a.RevokeIntermediate(ctx, issuer.Revocation{Fingerprint: last, Force: true}); err != nil {
		t.Fatalf("revocation once the others are past their end: %v", err)
	}
	st, _, err := state.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.CompromisedIntermediates) != 1 || st.CompromisedIntermediates[0] != last || len(st.Revoked) != 1 {
		t.Fatalf("after the others ended: %d compromised, %d described; want only the last", len(st.CompromisedIntermediates), len(st.Revoked))
	}
}
