package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/internal/vaulttest"
)

func request(t *testing.T, s *caServer, ns, sa string) error {
	t.Helper()
	pool := rootPool(t, readFile(t, s.RootFile))
	conn, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(spiffeID(ns, sa))
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.Minter.Mint(ns, sa, []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	_, err = pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
	})
	return err
}

// TestVaultDown stops Vault under a running CA. In vault mode every leaf
// needs a Transit signature, so requests fail fast with Unavailable, which
// istio-agent retries; in memory mode the CA keeps issuing from its
// in-memory intermediate.
func TestVaultDown(t *testing.T) {
	for _, tc := range []struct {
		mode string
		code codes.Code
	}{{"vault", codes.Unavailable}, {"memory", codes.OK}} {
		t.Run(tc.mode, func(t *testing.T) {
			srv := vaulttest.Own(t)
			s := startCAOn(t, vaulttest.NewOn(t, srv), tc.mode, "")
			if err := request(t, s, "default", "web"); err != nil {
				t.Fatalf("with Vault up: %v", err)
			}
			srv.Stop()
			start := time.Now()
			err := request(t, s, "default", "web")
			if status.Code(err) != tc.code {
				t.Fatalf("with Vault down: %v, want %v\n%s", err, tc.code, s.Logs())
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("request with Vault down took %v", took)
			}
			if tc.code == codes.Unavailable {
				if msg := status.Convert(err).Message(); !strings.Contains(msg, "retry") || strings.Contains(msg, "127.0.0.1") {
					t.Fatalf("Unavailable message %q should say to retry and not leak addresses", msg)
				}
				if !strings.Contains(s.Logs(), "dependency unavailable") || !strings.Contains(s.Logs(), "version 1") {
					t.Fatalf("daemon log does not explain the outage:\n%s", s.Logs())
				}
			}
		})
	}
}
