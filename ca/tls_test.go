package ca_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/certlint"
	"github.com/transitca/transitca/issuer"
)

func devAuthority(t *testing.T) *issuer.Authority {
	t.Helper()
	ctx := context.Background()
	keys, certs := issuer.NewLocalKeys(""), issuer.NewLocalCerts("")
	opts := issuer.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if _, err := issuer.Init(ctx, keys, certs, opts); err != nil {
		t.Fatal(err)
	}
	a, err := issuer.Open(ctx, keys, certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestServingCertRenewsWithoutRestart(t *testing.T) {
	a := devAuthority(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// NotBefore is back-dated by issuer.Backdate: this lifetime puts
	// half-life one second from now.
	sc, err := ca.NewServingCert(ctx, a, ca.ServingCertOptions{
		DNSNames: []string{"localhost"}, TTL: issuer.Backdate + 2*time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
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
	sc, err := ca.NewServingCert(context.Background(), a, ca.ServingCertOptions{
		DNSNames: []string{"localhost"}, TTL: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
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
