package issuer_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"log/slog"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/certlint"
	"github.com/transitca/transitca/issuer"
)

func TestLeafTemplateKeyUsage(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	id, _ := url.Parse("spiffe://cluster.local/ns/a/sa/b")
	now := time.Now()
	for _, tc := range []struct {
		name string
		pub  any
		want x509.KeyUsage
	}{
		{"ecdsa has no keyEncipherment", ec.Public(), x509.KeyUsageDigitalSignature},
		{"rsa has keyEncipherment", rk.Public(), x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, err := issuer.LeafTemplate(issuer.LeafRequest{SPIFFEID: id, PublicKey: tc.pub, Now: now, TTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			if tmpl.KeyUsage != tc.want || tmpl.IsCA || len(tmpl.ExtKeyUsage) != 2 {
				t.Fatalf("template: ku %v ca %v eku %v", tmpl.KeyUsage, tmpl.IsCA, tmpl.ExtKeyUsage)
			}
			if !tmpl.NotBefore.Equal(now.Add(-issuer.Backdate)) || !tmpl.NotAfter.Equal(now.Add(time.Hour-issuer.Backdate)) {
				t.Fatalf("validity %v – %v", tmpl.NotBefore, tmpl.NotAfter)
			}
		})
	}
}

// devCA is an authority on in-memory dev keys whose clock is *now.
func devCA(t *testing.T, now *time.Time, o issuer.Options) *issuer.Authority {
	t.Helper()
	ctx := context.Background()
	keys, certs := issuer.NewLocalKeys(""), issuer.NewLocalCerts("")
	o.Now = func() time.Time { return *now }
	o.Logger = slog.New(slog.DiscardHandler)
	if _, err := issuer.Init(ctx, keys, certs, o); err != nil {
		t.Fatal(err)
	}
	a, err := issuer.Open(ctx, keys, certs, o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func period(c *x509.Certificate) time.Duration { return c.NotAfter.Sub(c.NotBefore) }

// TestValidityPeriodIsTheTTL checks what an auditor reads off a
// certificate: NotAfter − NotBefore never exceeds the lifetime that was
// configured or granted, though NotBefore is back-dated for clock skew.
func TestValidityPeriodIsTheTTL(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	a := devCA(t, &now, issuer.Options{RootTTL: 365 * 24 * time.Hour, IntermediateTTL: 30 * 24 * time.Hour})
	if got := period(a.Root()); got != 365*24*time.Hour {
		t.Errorf("root validity period %v, want the root TTL %v", got, 365*24*time.Hour)
	}
	in := a.Intermediate().Cert
	if got := period(in); got != 30*24*time.Hour {
		t.Errorf("intermediate validity period %v, want the intermediate TTL %v", got, 30*24*time.Hour)
	}
	for _, c := range []*x509.Certificate{a.Root(), in} {
		certlint.Check(t, c)
		if !c.NotBefore.Equal(now.Add(-issuer.Backdate)) {
			t.Errorf("%s: NotBefore %v, want back-dated by %v", c.Subject.CommonName, c.NotBefore, issuer.Backdate)
		}
	}

	id, _ := url.Parse("spiffe://cluster.local/ns/a/sa/b")
	cases := []struct {
		name string
		ttl  time.Duration
		want time.Duration // validity period
	}{
		{"one day", 24 * time.Hour, 24 * time.Hour},
		{"the service tier", 30 * 24 * time.Hour, 30 * 24 * time.Hour},
		{"shorter than twice the back-dating", 4 * time.Minute, 4 * time.Minute},
		{"beyond the intermediate", 60 * 24 * time.Hour, 30 * 24 * time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			tmpl, err := issuer.LeafTemplate(issuer.LeafRequest{SPIFFEID: id, PublicKey: key.Public(), Now: now, TTL: tc.ttl})
			if err != nil {
				t.Fatal(err)
			}
			is, err := a.SignLeaf(context.Background(), tmpl, key.Public())
			if err != nil {
				t.Fatal(err)
			}
			leaf := is.Cert
			if got := period(leaf); got != tc.want {
				t.Fatalf("validity period %v (%v – %v), want %v", got, leaf.NotBefore, leaf.NotAfter, tc.want)
			}
			if !leaf.NotBefore.Before(now) || !leaf.NotAfter.After(now) {
				t.Fatalf("leaf valid %v – %v: not valid at issuance %v", leaf.NotBefore, leaf.NotAfter, now)
			}
			if leaf.NotAfter.After(in.NotAfter) {
				t.Fatalf("leaf NotAfter %v beyond the intermediate's %v", leaf.NotAfter, in.NotAfter)
			}
			certlint.Check(t, leaf)
		})
	}
}

// TestIntermediateCappedAtRoot: an intermediate made late in the root's life
// ends with the root, and its validity period is shorter than its TTL.
func TestIntermediateCappedAtRoot(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	start := now
	keys, certs := issuer.NewLocalKeys(""), issuer.NewLocalCerts("")
	o := issuer.Options{
		RootTTL: 100 * 24 * time.Hour, IntermediateTTL: 60 * 24 * time.Hour,
		Now: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler),
	}
	ctx := context.Background()
	if _, err := issuer.Init(ctx, keys, certs, o); err != nil {
		t.Fatal(err)
	}
	now = start.Add(70 * 24 * time.Hour)
	a, err := issuer.Open(ctx, keys, certs, o)
	if err != nil {
		t.Fatal(err)
	}
	in := a.Intermediate().Cert
	if !in.NotAfter.Equal(a.Root().NotAfter) {
		t.Fatalf("intermediate NotAfter %v, want the root's %v", in.NotAfter, a.Root().NotAfter)
	}
	if period(in) > o.IntermediateTTL {
		t.Fatalf("intermediate validity period %v exceeds its TTL %v", period(in), o.IntermediateTTL)
	}
}
func TestServingTemplate(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	a := devCA(t, &now, issuer.Options{})
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id, _ := url.Parse("spiffe://cluster.local/ns/istio-system/sa/transitca")
	tmpl, err := issuer.ServingTemplate(issuer.ServingRequest{
		DNSNames: []string{"transitca.istio-system.svc"}, IPAddresses: []net.IP{net.ParseIP("10.0.0.1")},
		SPIFFEID: id, PublicKey: key.Public(), Now: now, TTL: 24 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	is, err := a.SignLeaf(context.Background(), tmpl, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	c := is.Cert
	if got := period(c); got != 24*time.Hour {
		t.Fatalf("serving certificate validity period %v, want 24h", got)
	}
	if err := c.VerifyHostname("transitca.istio-system.svc"); err != nil {
		t.Fatal(err)
	}
	if err := c.VerifyHostname("10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != id.String() {
		t.Fatalf("URI SANs %v", c.URIs)
	}
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || c.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatalf("usage %v %v", c.KeyUsage, c.ExtKeyUsage)
	}
	if len(c.SubjectKeyId) == 0 || bytes.Equal(c.SubjectKeyId, is.Issuer.Cert.SubjectKeyId) {
		t.Fatalf("subject key identifier %x", c.SubjectKeyId)
	}
	certlint.Check(t, c)
}

func TestKeyTypes(t *testing.T) {
	for _, tc := range []struct {
		typ               issuer.KeyType
		valid, canCertify bool
	}{
		{issuer.KeyECDSAP256, true, true},
		{issuer.KeyECDSAP384, true, true},
		{issuer.KeyRSA2048, true, true},
		{issuer.KeyRSA3072, true, true},
		{issuer.KeyRSA4096, true, true},
		{issuer.KeyEd25519, true, false},
		{"aes256-gcm96", false, false},
		{"", false, false},
	} {
		t.Run(string(tc.typ), func(t *testing.T) {
			if got := tc.typ.Valid(); got != tc.valid {
				t.Errorf("Valid() = %v, want %v", got, tc.valid)
			}
			if got := tc.typ.CanCertify(); got != tc.canCertify {
				t.Errorf("CanCertify() = %v, want %v", got, tc.canCertify)
			}
		})
	}
}

func TestHalfLife(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(48 * time.Hour)}
	if got, want := issuer.HalfLife(cert), nb.Add(24*time.Hour); !got.Equal(want) {
		t.Fatalf("HalfLife = %v, want %v", got, want)
	}
}
