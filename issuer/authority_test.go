package issuer_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/certlint"
	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
)

type backend struct {
	name  string
	keys  issuer.Keys
	certs issuer.Certs
	env   *vaulttest.Env
}

func vaultBackend(t *testing.T) backend {
	env := vaulttest.New(t)
	tr := issuer.NewTransit(env.Client, env.Transit, 5*time.Second)
	t.Cleanup(tr.Close)
	return backend{
		name:  "vault",
		keys:  issuer.VaultKeys{Transit: tr},
		certs: issuer.NewVaultCerts(env.Client, env.KV, "transitca", 5*time.Second),
		env:   env,
	}
}

func leafTemplate(t *testing.T, ttl time.Duration) (*x509.Certificate, crypto.PublicKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://cluster.local/ns/default/sa/web")
	now := time.Now()
	return &x509.Certificate{
		URIs:        []*url.URL{u},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(ttl),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, key.Public()
}

func checkCA(t *testing.T, c *x509.Certificate, pathLen int, pathLenZero bool) {
	t.Helper()
	if !c.BasicConstraintsValid || !c.IsCA {
		t.Errorf("%s: not a CA (basic constraints)", c.Subject)
	}
	if c.MaxPathLen != pathLen || c.MaxPathLenZero != pathLenZero {
		t.Errorf("%s: path length %d (zero=%v), want %d (zero=%v)", c.Subject, c.MaxPathLen, c.MaxPathLenZero, pathLen, pathLenZero)
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("%s: key usage lacks certSign", c.Subject)
	}
	if len(c.SubjectKeyId) == 0 {
		t.Errorf("%s: no subject key identifier", c.Subject)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() < 100 || c.SerialNumber.BitLen() > 128 {
		t.Errorf("%s: serial %x is not a positive 128-bit random number", c.Subject, c.SerialNumber)
	}
	certlint.Check(t, c)
}

func TestInitRootSignedThroughTransit(t *testing.T) {
	for _, typ := range []issuer.KeyType{issuer.KeyECDSAP256, issuer.KeyECDSAP384, issuer.KeyRSA2048} {
		t.Run(string(typ), func(t *testing.T) {
			b := vaultBackend(t)
			ctx := context.Background()
			res, err := issuer.Init(ctx, b.keys, b.certs, issuer.Options{RootKeyType: typ})
			if err != nil {
				t.Fatal(err)
			}
			if !res.KeyCreated || !res.RootCreated || res.RootKeyVersion != 1 {
				t.Fatalf("first init: %+v", res)
			}
			root := res.Root
			// The root's signature verifies with the public key Vault reports.
			info, err := issuer.NewTransit(b.env.Client, b.env.Transit, 0).ReadKey(ctx, issuer.DefaultRootKey)
			if err != nil {
				t.Fatal(err)
			}
			if string(info.Type) != string(typ) || info.Exportable {
				t.Fatalf("root key: type %s exportable %v", info.Type, info.Exportable)
			}
			pub := info.PublicKeys[1]
			if !root.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Fatal("root certificate does not carry the Transit public key")
			}
			if err := root.CheckSignature(root.SignatureAlgorithm, root.RawTBSCertificate, root.Signature); err != nil {
				t.Fatalf("root self-signature does not verify with the Transit key: %v", err)
			}
			checkCA(t, root, 1, false)
			if !bytes.Equal(root.RawSubject, root.RawIssuer) {
				t.Fatal("root is not self-issued")
			}
		})
	}
}

func TestInitTwiceChangesNothing(t *testing.T) {
	b := vaultBackend(t)
	ctx := context.Background()
	first, err := issuer.Init(ctx, b.keys, b.certs, issuer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	second, err := issuer.Init(ctx, b.keys, b.certs, issuer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if second.KeyCreated || second.RootCreated {
		t.Fatalf("second init created something: %+v", second)
	}
	if !bytes.Equal(first.Root.Raw, second.Root.Raw) {
		t.Fatal("second init returned another root")
	}
	// One key with one version, one stored root with one KV version.
	keys, err := b.env.Client.Logical().List(b.env.Transit + "/keys")
	if err != nil {
		t.Fatal(err)
	}
	if got := keys.Data["keys"].([]any); len(got) != 1 {
		t.Fatalf("transit keys after two inits: %v", got)
	}
	meta, err := b.env.Client.KVv2(b.env.KV).GetMetadata(ctx, "transitca/root/"+issuer.DefaultRootKey+"/v1")
	if err != nil {
		t.Fatal(err)
	}
	if meta.CurrentVersion != 1 {
		t.Fatalf("root certificate written %d times", meta.CurrentVersion)
	}
}

func TestOpenBeforeInit(t *testing.T) {
	b := vaultBackend(t)
	_, err := issuer.Open(context.Background(), b.keys, b.certs, issuer.Options{})
	if !errors.Is(err, issuer.ErrNotInitialized) || !strings.Contains(err.Error(), "ca init") {
		t.Fatalf("got %v, want ErrNotInitialized telling to run ca init", err)
	}
}

func TestIntermediateChainsToRoot(t *testing.T) {
	for _, mode := range []issuer.Mode{issuer.ModeMemory, issuer.ModeVault} {
		t.Run(string(mode), func(t *testing.T) {
			b := vaultBackend(t)
			ctx := context.Background()
			opts := issuer.Options{Mode: mode}
			if _, err := issuer.Init(ctx, b.keys, b.certs, opts); err != nil {
				t.Fatal(err)
			}
			a, err := issuer.Open(ctx, b.keys, b.certs, opts)
			if err != nil {
				t.Fatal(err)
			}
			in := a.Intermediate()
			if in.Mode != mode {
				t.Fatalf("mode %s, want %s", in.Mode, mode)
			}
			checkCA(t, in.Cert, 0, true)
			if !bytes.Equal(in.Cert.AuthorityKeyId, a.Root().SubjectKeyId) {
				t.Fatal("intermediate authority key id is not the root's subject key id")
			}
			if got := in.Cert.NotAfter.Sub(in.Cert.NotBefore); got != issuer.DefaultIntermediateTTL {
				t.Fatalf("intermediate validity period %v, want %v", got, issuer.DefaultIntermediateTTL)
			}
			if mode == issuer.ModeVault {
				info, err := issuer.NewTransit(b.env.Client, b.env.Transit, 0).ReadKey(ctx, issuer.DefaultIntermediateKey)
				if err != nil {
					t.Fatal(err)
				}
				if !in.Cert.PublicKey.(*ecdsa.PublicKey).Equal(info.PublicKeys[1]) {
					t.Fatal("vault-mode intermediate does not certify the Transit intermediate key")
				}
			}

			tmpl, pub := leafTemplate(t, 24*time.Hour)
			issued, err := a.SignLeaf(ctx, tmpl, pub)
			if err != nil {
				t.Fatal(err)
			}
			inter := x509.NewCertPool()
			inter.AddCert(in.Cert)
			chains, err := issued.Cert.Verify(x509.VerifyOptions{
				Roots:         a.RootPool(),
				Intermediates: inter,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				t.Fatalf("leaf does not chain to the root: %v", err)
			}
			if len(chains[0]) != 3 {
				t.Fatalf("chain length %d, want 3", len(chains[0]))
			}
			certlint.Check(t, issued.Cert)
			if issued.Issuer.Fingerprint != issuer.Fingerprint(in.Cert) || issued.RootKeyVersion != 1 {
				t.Fatalf("issued by %s root v%d", issued.Issuer.Fingerprint, issued.RootKeyVersion)
			}
		})
	}
}

func TestLeafNeverOutlivesIntermediate(t *testing.T) {
	b := vaultBackend(t)
	ctx := context.Background()
	opts := issuer.Options{IntermediateTTL: 48 * time.Hour}
	if _, err := issuer.Init(ctx, b.keys, b.certs, opts); err != nil {
		t.Fatal(err)
	}
	a, err := issuer.Open(ctx, b.keys, b.certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, pub := leafTemplate(t, 30*24*time.Hour)
	issued, err := a.SignLeaf(ctx, tmpl, pub)
	if err != nil {
		t.Fatal(err)
	}
	if !issued.Cert.NotAfter.Equal(a.Intermediate().Cert.NotAfter) {
		t.Fatalf("leaf NotAfter %v, intermediate NotAfter %v", issued.Cert.NotAfter, a.Intermediate().Cert.NotAfter)
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	if _, err := a.SignLeaf(ctx, tmpl, pub); err == nil {
		t.Fatal("signed a CA certificate as a leaf")
	}
}

func TestVaultModeReplicasShareIntermediate(t *testing.T) {
	b := vaultBackend(t)
	ctx := context.Background()
	opts := issuer.Options{Mode: issuer.ModeVault}
	if _, err := issuer.Init(ctx, b.keys, b.certs, opts); err != nil {
		t.Fatal(err)
	}
	a1, err := issuer.Open(ctx, b.keys, b.certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := issuer.Open(ctx, b.keys, b.certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	if a1.Intermediate().Fingerprint != a2.Intermediate().Fingerprint {
		t.Fatal("two replicas in vault mode made two intermediates for one key version")
	}
}

func TestMemoryIntermediateRenewsBeforeHalfLife(t *testing.T) {
	b := vaultBackend(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// NotBefore is back-dated by issuer.Backdate inside the lifetime, so a
	// lifetime of 2×Backdate+2s puts half-life one second from now.
	opts := issuer.Options{IntermediateTTL: 2*issuer.Backdate + 2*time.Second}
	if _, err := issuer.Init(ctx, b.keys, b.certs, opts); err != nil {
		t.Fatal(err)
	}
	a, err := issuer.Open(ctx, b.keys, b.certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	first := a.Intermediate()
	half := first.Cert.NotBefore.Add(first.Cert.NotAfter.Sub(first.Cert.NotBefore) / 2)
	if !first.RenewAt.Equal(half) {
		t.Fatalf("RenewAt %v, want half-life %v", first.RenewAt, half)
	}
	go a.Run(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for a.Intermediate().Fingerprint == first.Fingerprint {
		if time.Now().After(deadline) {
			t.Fatal("intermediate not renewed after its half-life")
		}
		time.Sleep(50 * time.Millisecond)
	}
	next := a.Intermediate()
	if time.Now().Before(first.RenewAt) {
		t.Fatal("renewed before half-life")
	}
	if next.Cert.PublicKey.(*ecdsa.PublicKey).Equal(first.Cert.PublicKey) {
		t.Fatal("renewed in-memory intermediate reuses the old key")
	}
	if err := next.Cert.CheckSignatureFrom(a.Root()); err != nil {
		t.Fatalf("renewed intermediate not signed by root: %v", err)
	}
}

func TestDevLocalKeysPersistAndAreLabelled(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	opts := issuer.Options{Dev: true}
	res, err := issuer.Init(ctx, issuer.NewLocalKeys(dir), issuer.NewLocalCerts(dir), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Root.Subject.CommonName, issuer.DevOnlyLabel) {
		t.Fatalf("dev root subject %q is not labelled %s", res.Root.Subject, issuer.DevOnlyLabel)
	}
	// A second process on the same directory finds the same root.
	again, err := issuer.Init(ctx, issuer.NewLocalKeys(dir), issuer.NewLocalCerts(dir), opts)
	if err != nil {
		t.Fatal(err)
	}
	if again.KeyCreated || again.RootCreated || !bytes.Equal(again.Root.Raw, res.Root.Raw) {
		t.Fatalf("re-init of a dev CA changed it: %+v", again)
	}
	a, err := issuer.Open(ctx, issuer.NewLocalKeys(dir), issuer.NewLocalCerts(dir), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(a.Intermediate().Cert.Subject.CommonName, issuer.DevOnlyLabel) {
		t.Fatal("dev intermediate is not labelled")
	}
	if !strings.Contains(a.Describe(), issuer.DevOnlyLabel) {
		t.Fatalf("Describe() = %q", a.Describe())
	}
}
