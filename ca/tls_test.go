package ca_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/certlint"
	"github.com/transitca/transitca/issuer"
)

func devAuthority(t *testing.T) *issuer.Authority {
	t.Helper()
	ctx := context.Background()
	keys, certs := issuer.NewLocalKeys(""), issuer.NewLocalCerts("")
	opts := issuer.Options{Logger: slog.New(slog.DiscardHandler)}
	if _, err := issuer.Init(ctx, keys, certs, opts); err != nil {
		t.Fatal(err)
	}
	a, err := issuer.Open(ctx, keys, certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// devService is a certificate service over a dev authority, recording to
// rec.
func devService(t *testing.T, a *issuer.Authority, rec ca.Recorder) *ca.Service {
	t.Helper()
	svc, err := ca.NewService(ca.ServiceOptions{
		Authenticator: ca.NewMultiAuthenticator(nil, nil),
		Authority:     a,
		Policy:        issuer.DefaultPolicy(),
		Recorder:      rec,
		Metrics:       ca.NewMetrics(prometheus.NewRegistry(), nil),
		Logger:        slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// The serving certificate goes through the service's own issuance stages:
// the issuer's template (validity period exactly the TTL), the chain check
// against the roots, and the issuance log, as the CA's own identity.
func TestServingCertIsIssuedLikeEveryCertificate(t *testing.T) {
	a := devAuthority(t)
	rec := &countingRecorder{}
	sc, err := ca.NewServingCert(context.Background(), devService(t, a, rec), ca.ServingCertOptions{
		SPIFFEID: "spiffe://cluster.local/transitca/serving",
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: 24 * time.Hour,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	leaf := sc.Leaf()
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 24*time.Hour {
		t.Errorf("validity period %s, want exactly the TTL 24h", got)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.RootPool(), Intermediates: pool(a.Intermediate().Cert), DNSName: "localhost"}); err != nil {
		t.Errorf("serving certificate does not verify for localhost: %v", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/transitca/serving" {
		t.Errorf("serving certificate URIs %v", leaf.URIs)
	}
	if slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Error("serving certificate is valid for client auth")
	}
	certlint.Check(t, leaf)
	if n, _ := rec.counts(); n != 1 {
		t.Fatalf("%d issuances recorded, want 1", n)
	}
	is := rec.issuances[0]
	if is.Cert.SerialNumber.Cmp(leaf.SerialNumber) != 0 || is.Tier != "serving" || is.Caller.Method != ca.AuthSelf ||
		is.Caller.SPIFFEID != "spiffe://cluster.local/transitca/serving" || is.GrantedTTL != 24*time.Hour {
		t.Errorf("recorded %+v (caller %+v), want the serving certificate, tier serving, method self, granted 24h", is, is.Caller)
	}

	// No certificate leaves unrecorded: a failing record fails the renewal
	// and the old certificate stays.
	rec.fail = errors.New("disk full")
	if err := sc.Renew(context.Background()); err == nil {
		t.Fatal("Renew succeeded although recording failed")
	}
	if sc.Leaf() != leaf {
		t.Fatal("a certificate that was not recorded is served")
	}
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestServingCertRenewsWithoutRestart(t *testing.T) {
	a := devAuthority(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// NotBefore is back-dated by issuer.Backdate: this lifetime puts
	// half-life one second from now.
	sc, err := ca.NewServingCert(ctx, devService(t, a, &countingRecorder{}), ca.ServingCertOptions{
		DNSNames: []string{"localhost"}, TTL: 2*issuer.Backdate + 2*time.Second,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	first := sc.Leaf()
	if err := first.VerifyHostname("localhost"); err != nil {
		t.Fatal(err)
	}
	certlint.Check(t, first)
	go sc.Run(ctx, 50*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for sc.Leaf().SerialNumber.Cmp(first.SerialNumber) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("serving certificate not renewed after half its life")
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, _ := sc.GetCertificate(nil)
	if got.Leaf.SerialNumber.Cmp(sc.Leaf().SerialNumber) != 0 {
		t.Fatal("TLS does not serve the renewed certificate")
	}
	certlint.Check(t, got.Leaf)
}

func TestTLS12AllowsOnlyECDHEAndAEAD(t *testing.T) {
	a := devAuthority(t)
	sc, err := ca.NewServingCert(context.Background(), devService(t, a, &countingRecorder{}), ca.ServingCertOptions{
		DNSNames: []string{"localhost"}, TTL: time.Hour, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", ca.TLSConfig(sc, tls.VersionTLS12))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) { _ = c.(*tls.Conn).Handshake(); c.Close() }(c)
		}
	}()
	roots := a.RootPool()
	dial := func(suites ...uint16) error {
		c, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{
			RootCAs: roots, ServerName: "localhost", MaxVersion: tls.VersionTLS12, CipherSuites: suites,
		})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); err != nil {
		t.Fatalf("TLS 1.2 with ECDHE-ECDSA-AES128-GCM refused: %v", err)
	}
	for name, suite := range map[string]uint16{
		"static RSA key exchange": tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
		"CBC mode":                tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
	} {
		if err := dial(suite); err == nil {
			t.Errorf("TLS 1.2 with %s was accepted", name)
		}
	}
}
