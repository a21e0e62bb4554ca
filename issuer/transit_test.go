package issuer_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
)

func TestMain(m *testing.M) { vaulttest.Main(m) }

func newTransit(t *testing.T) (*vaulttest.Env, *issuer.Transit) {
	t.Helper()
	env := vaulttest.New(t)
	tr := issuer.NewTransit(env.Client, env.Transit, 5*time.Second)
	t.Cleanup(tr.Close)
	return env, tr
}

// verify checks sig over msg with pub the way an X.509 verifier would.
func verify(t *testing.T, pub crypto.PublicKey, msg []byte, h crypto.Hash, pss bool, sig []byte) error {
	t.Helper()
	var digest []byte
	switch h {
	case crypto.SHA256:
		d := sha256.Sum256(msg)
		digest = d[:]
	case crypto.SHA384:
		d := sha512.Sum384(msg)
		digest = d[:]
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return errors.New("ecdsa signature does not verify")
		}
		return nil
	case *rsa.PublicKey:
		if pss {
			return rsa.VerifyPSS(k, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		}
		return rsa.VerifyPKCS1v15(k, h, digest, sig)
	case ed25519.PublicKey:
		if !ed25519.Verify(k, msg, sig) {
			return errors.New("ed25519 signature does not verify")
		}
		return nil
	}
	return errors.New("unknown key type")
}

func TestTransitSignerSignaturesVerify(t *testing.T) {
	_, tr := newTransit(t)
	ctx := context.Background()
	msg := []byte("transitca to be signed")
	cases := []struct {
		name string
		typ  issuer.KeyType
		hash crypto.Hash
		pss  bool
	}{
		{"ecdsa-p256 sha256", issuer.KeyECDSAP256, crypto.SHA256, false},
		{"ecdsa-p384 sha384", issuer.KeyECDSAP384, crypto.SHA384, false},
		{"rsa-2048 pkcs1v15", issuer.KeyRSA2048, crypto.SHA256, false},
		{"rsa-2048 pss", issuer.KeyRSA2048, crypto.SHA256, true},
		{"rsa-3072 pkcs1v15 sha384", issuer.KeyRSA3072, crypto.SHA384, false},
		{"ed25519", issuer.KeyEd25519, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "-")
			if _, err := tr.EnsureKey(ctx, name, tc.typ); err != nil {
				t.Fatal(err)
			}
			s, err := tr.Signer(ctx, name, 0)
			if err != nil {
				t.Fatal(err)
			}
			var opts crypto.SignerOpts = tc.hash
			if tc.pss {
				opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: tc.hash}
			}
			in := msg
			if tc.hash != 0 {
				h := tc.hash.New()
				h.Write(msg)
				in = h.Sum(nil)
			}
			sig, err := s.Sign(nil, in, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := verify(t, s.Public(), msg, tc.hash, tc.pss, sig); err != nil {
				t.Fatalf("signature made by Vault does not verify with the Transit public key: %v", err)
			}
			// A signature over another message must not verify.
			if err := verify(t, s.Public(), []byte("other"), tc.hash, tc.pss, sig); err == nil {
				t.Fatal("signature verified over a different message")
			}
		})
	}
}

func TestTransitSignaturesAcrossRotation(t *testing.T) {
	_, tr := newTransit(t)
	ctx := context.Background()
	if _, err := tr.EnsureKey(ctx, "rot", issuer.KeyECDSAP256); err != nil {
		t.Fatal(err)
	}
	v1, err := tr.Signer(ctx, "rot", 0)
	if err != nil {
		t.Fatal(err)
	}
	if v1.KeyVersion() != 1 {
		t.Fatalf("first version = %d, want 1", v1.KeyVersion())
	}
	digest := sha256.Sum256([]byte("before rotation"))
	before, err := v1.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	latest, err := tr.Rotate(ctx, "rot")
	if err != nil {
		t.Fatal(err)
	}
	if latest != 2 {
		t.Fatalf("version after rotate = %d, want 2", latest)
	}
	// The signer made before the rotation stays pinned to version 1.
	digest2 := sha256.Sum256([]byte("after rotation, old signer"))
	pinned, err := v1.Sign(nil, digest2[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := tr.Signer(ctx, "rot", 0)
	if err != nil {
		t.Fatal(err)
	}
	if v2.KeyVersion() != 2 {
		t.Fatalf("latest signer version = %d, want 2", v2.KeyVersion())
	}
	digest3 := sha256.Sum256([]byte("after rotation"))
	after, err := v2.Sign(nil, digest3[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	p1, p2 := v1.Public().(*ecdsa.PublicKey), v2.Public().(*ecdsa.PublicKey)
	if p1.Equal(p2) {
		t.Fatal("rotation did not change the public key")
	}
	if !ecdsa.VerifyASN1(p1, digest[:], before) || !ecdsa.VerifyASN1(p1, digest2[:], pinned) {
		t.Fatal("version 1 signatures do not verify under version 1")
	}
	if !ecdsa.VerifyASN1(p2, digest3[:], after) {
		t.Fatal("version 2 signature does not verify under version 2")
	}
	if ecdsa.VerifyASN1(p2, digest2[:], pinned) {
		t.Fatal("pinned version 1 signer signed with version 2")
	}
	// An explicit old version can still be pinned.
	again, err := tr.Signer(ctx, "rot", 1)
	if err != nil || !again.Public().(*ecdsa.PublicKey).Equal(p1) {
		t.Fatalf("signer for version 1 after rotation: %v", err)
	}
	if _, err := tr.Signer(ctx, "rot", 7); err == nil || !strings.Contains(err.Error(), "no version 7") {
		t.Fatalf("signer for a missing version: got %v", err)
	}
}

func TestTransitSignerRejectsWrongDigest(t *testing.T) {
	_, tr := newTransit(t)
	ctx := context.Background()
	if _, err := tr.EnsureKey(ctx, "k", issuer.KeyECDSAP256); err != nil {
		t.Fatal(err)
	}
	s, err := tr.Signer(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Sign(nil, []byte("short"), crypto.SHA256)
	if err == nil || !strings.Contains(err.Error(), "digest is 5 bytes, want 32") {
		t.Fatalf("got %v", err)
	}
	_, err = s.Sign(nil, make([]byte, 20), crypto.SHA1)
	if err == nil || !strings.Contains(err.Error(), "unsupported hash") {
		t.Fatalf("got %v", err)
	}
}

func TestEnsureKeyIsNonExportableAndRefusesExportable(t *testing.T) {
	env, tr := newTransit(t)
	ctx := context.Background()
	created, err := tr.EnsureKey(ctx, "root", issuer.KeyECDSAP256)
	if err != nil || !created {
		t.Fatalf("EnsureKey = %v, %v; want created", created, err)
	}
	// Ask Vault directly, as an operator would.
	sec, err := env.Client.Logical().Read(env.Transit + "/keys/root")
	if err != nil {
		t.Fatal(err)
	}
	if exp, ok := sec.Data["exportable"].(bool); !ok || exp {
		t.Fatalf("vault reports exportable = %v, want false", sec.Data["exportable"])
	}
	created, err = tr.EnsureKey(ctx, "root", issuer.KeyECDSAP256)
	if err != nil || created {
		t.Fatalf("second EnsureKey = %v, %v; want existing key", created, err)
	}
	if _, err := tr.EnsureKey(ctx, "root", issuer.KeyRSA2048); err == nil || !strings.Contains(err.Error(), "exists with type ecdsa-p256") {
		t.Fatalf("EnsureKey with another type: %v", err)
	}

	// A key someone made exportable is refused.
	if _, err := env.Client.Logical().Write(env.Transit+"/keys/leaked", map[string]any{"type": "ecdsa-p256", "exportable": true}); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.EnsureKey(ctx, "leaked", issuer.KeyECDSAP256); err == nil || !strings.Contains(err.Error(), "exportable") {
		t.Fatalf("EnsureKey on an exportable key: %v", err)
	}
	if _, err := tr.Signer(ctx, "leaked", 0); err == nil || !strings.Contains(err.Error(), "exportable") {
		t.Fatalf("Signer on an exportable key: %v", err)
	}
}

func TestReadMissingKey(t *testing.T) {
	_, tr := newTransit(t)
	_, err := tr.ReadKey(context.Background(), "nope")
	if !errors.Is(err, issuer.ErrKeyNotFound) {
		t.Fatalf("got %v, want ErrKeyNotFound", err)
	}
}

func TestParseTransitSignature(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		version int
		wantErr string
	}{
		{"v1", "vault:v1:AQID", 1, ""},
		{"v12", "vault:v12:AQID", 12, ""},
		{"v1234567", "vault:v1234567:AQID", 1234567, ""},
		{"no prefix", "v1:AQID", 0, "does not start with vault:v"},
		{"no separator", "vault:v1AQID", 0, "no version separator"},
		{"zero", "vault:v0:AQID", 0, "malformed version"},
		{"negative", "vault:v-1:AQID", 0, "malformed version"},
		{"leading zero", "vault:v01:AQID", 0, "malformed version"},
		{"not base64", "vault:v1:***", 0, "not base64"},
		{"empty signature", "vault:v1:", 0, "not base64"},
		{"empty", "", 0, "does not start with vault:v"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, sig, err := issuer.ParseTransitSignature(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || v != tc.version || string(sig) != "\x01\x02\x03" {
				t.Fatalf("got %d %x %v", v, sig, err)
			}
		})
	}
}

func FuzzParseTransitSignature(f *testing.F) {
	for _, s := range []string{"vault:v1:AQID", "vault:v99:MEUCIQ==", "vault:v:", "vault:v1:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, sig, err := issuer.ParseTransitSignature(s)
		if err == nil && (v < 1 || len(sig) == 0) {
			t.Fatalf("accepted %q as version %d, %d bytes", s, v, len(sig))
		}
	})
}

func TestVaultStoppedGivesClearError(t *testing.T) {
	srv := vaulttest.Own(t)
	env := vaulttest.NewOn(t, srv)
	tr := issuer.NewTransit(env.Client, env.Transit, 2*time.Second)
	t.Cleanup(tr.Close)
	ctx := context.Background()
	if _, err := tr.EnsureKey(ctx, "k", issuer.KeyECDSAP256); err != nil {
		t.Fatal(err)
	}
	s, err := tr.Signer(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	digest := sha256.Sum256([]byte("x"))
	start := time.Now()
	_, err = s.Sign(nil, digest[:], crypto.SHA256)
	took := time.Since(start)
	if err == nil {
		t.Fatal("signing with Vault stopped succeeded")
	}
	if took > 5*time.Second {
		t.Fatalf("signing with Vault stopped took %v; want a fast failure", took)
	}
	if !errors.Is(err, issuer.ErrUnavailable) {
		t.Fatalf("error %v is not ErrUnavailable", err)
	}
	for _, want := range []string{env.Transit + "/keys/k", "version 1"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not name %q", err, want)
		}
	}
}

// BenchmarkSign compares, for every key type a root or an intermediate may
// have, a Transit signature (one HTTP round trip to a local Vault dev
// server, batched when concurrent) with the local software signer of the
// in-memory intermediate, over SHA-256, in the same process.
func BenchmarkSign(b *testing.B) {
	env := vaulttest.New(b)
	ctx := context.Background()
	tr := issuer.NewTransit(env.Client, env.Transit, 10*time.Second)
	b.Cleanup(tr.Close)
	lk := issuer.NewLocalKeys("")
	digest := sha256.Sum256([]byte("benchmark"))
	types := []issuer.KeyType{issuer.KeyECDSAP256, issuer.KeyECDSAP384, issuer.KeyRSA2048, issuer.KeyRSA3072, issuer.KeyRSA4096}
	for _, typ := range types {
		if _, err := tr.EnsureKey(ctx, "bench-"+string(typ), typ); err != nil {
			b.Fatal(err)
		}
		transit, err := tr.Signer(ctx, "bench-"+string(typ), 0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := lk.EnsureKey(ctx, "bench-"+string(typ), typ); err != nil {
			b.Fatal(err)
		}
		local, err := lk.Signer(ctx, "bench-"+string(typ), 0)
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range []struct {
			name   string
			signer crypto.Signer
		}{{"transit", transit}, {"local", local}} {
			b.Run(string(typ)+"/"+s.name, func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := s.signer.Sign(nil, digest[:], crypto.SHA256); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
			})
		}
	}
}

// TestTransitSignerBatchesConcurrentSignatures signs from many goroutines at
// once: every signature verifies under the pinned version, and concurrent
// signatures share requests to Vault.
func TestTransitSignerBatchesConcurrentSignatures(t *testing.T) {
	_, tr := newTransit(t)
	var calls atomic.Int64
	tr.SetObserver(func(string, time.Duration, error) { calls.Add(1) })
	ctx := context.Background()
	for _, typ := range []issuer.KeyType{issuer.KeyECDSAP256, issuer.KeyRSA2048} {
		t.Run(string(typ), func(t *testing.T) {
			calls.Store(0)
			if _, err := tr.EnsureKey(ctx, "batch-"+string(typ), typ); err != nil {
				t.Fatal(err)
			}
			s, err := tr.Signer(ctx, "batch-"+string(typ), 0)
			if err != nil {
				t.Fatal(err)
			}
			const goroutines, each = 64, 4
			var wg sync.WaitGroup
			errs := make(chan error, goroutines*each)
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						msg := []byte(fmt.Sprintf("message %d/%d", g, i))
						d := sha256.Sum256(msg)
						sig, err := s.Sign(nil, d[:], crypto.SHA256)
						if err != nil {
							errs <- err
							return
						}
						if err := verify(t, s.Public(), msg, crypto.SHA256, false, sig); err != nil {
							errs <- fmt.Errorf("signature %d/%d: %w", g, i, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if n := calls.Load(); n >= goroutines*each {
				t.Fatalf("%d requests to Vault for %d signatures: nothing was batched", n, goroutines*each)
			} else {
				t.Logf("%d signatures in %d requests", goroutines*each, n)
			}
		})
	}
}
