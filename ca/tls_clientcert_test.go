package ca_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// renewingClient is a client that renews with its certificate the way
// istio-agent on a VM does: one gRPC connection kept between calls, and at
// each handshake the certificate it holds at that moment (the agent reads
// its PROV_CERT files then).
type renewingClient struct {
	mu    sync.Mutex
	cert  *tls.Certificate
	leaf  *x509.Certificate
	dials atomic.Int32
	conn  *grpc.ClientConn
	pb    pb.IstioCertificateServiceClient
}

func newRenewingClient(t *testing.T, h *harness, cert *tls.Certificate, leaf *x509.Certificate) *renewingClient {
	t.Helper()
	rc := &renewingClient{cert: cert, leaf: leaf}
	cfg := &tls.Config{RootCAs: h.roots, ServerName: "localhost", MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			rc.mu.Lock()
			defer rc.mu.Unlock()
			return rc.cert, nil
		}}
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			rc.dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rc.conn, rc.pb = conn, pb.NewIstioCertificateServiceClient(conn)
	return rc
}

// renew asks for a certificate with no token, on the certificate alone, and
// holds the new one from then on.
func (rc *renewingClient) renew(t *testing.T, id string, ttl time.Duration) error {
	t.Helper()
	key := p256(t)
	resp, err := rc.pb.CreateCertificate(context.Background(), &pb.IstioCertificateRequest{
		Csr: csrPEM(t, key, &x509.CertificateRequest{URIs: uris(id)}), ValidityDuration: int64(ttl / time.Second),
	})
	if err != nil {
		return err
	}
	certs := parseChain(t, resp.CertChain)
	rc.mu.Lock()
	rc.cert = &tls.Certificate{Certificate: [][]byte{certs[0].Raw, certs[1].Raw}, PrivateKey: key}
	rc.leaf = certs[0]
	rc.mu.Unlock()
	return nil
}

func (rc *renewingClient) current() *x509.Certificate {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.leaf
}

// A client that keeps its connection between renewals and renews at a
// little over half the remaining life of each certificate (istio-agent's
// VM schedule: at half, which is when the certificate before it, the one
// its connection may have been made with, expires) renews every time
// without a refusal: the CA closes the connection before the certificate
// of its handshake expires, so the next call connects again with the
// certificate the client holds then. The expired certificate itself is
// still refused; a connection without a client certificate is left open.
func TestClientCertConnectionClosedBeforeItsCertificateExpires(t *testing.T) {
	h := newHarness(t)
	id := spiffe("vm", "db")
	// 8s certificates: NotBefore is back-dated by half, so each lives 4s
	// after it is issued.
	const ttl = 8 * time.Second
	key := p256(t)
	resp, err := h.client(t, nil).CreateCertificate(withToken(h.token(t, "vm", "db")), &pb.IstioCertificateRequest{
		Csr: csrPEM(t, key, &x509.CertificateRequest{URIs: uris(id)}), ValidityDuration: int64(ttl / time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	got := time.Now()
	certs := parseChain(t, resp.CertChain)
	provisioned := &tls.Certificate{Certificate: [][]byte{certs[0].Raw, certs[1].Raw}, PrivateKey: key}
	rc := newRenewingClient(t, h, provisioned, certs[0])

	// A token-only client on its own connection, idle all along.
	tokenDials := atomic.Int32{}
	tokenConn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: h.roots, ServerName: "localhost"})),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			tokenDials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer tokenConn.Close()
	byToken := pb.NewIstioCertificateServiceClient(tokenConn)
	askByToken := func() error {
		_, err := byToken.CreateCertificate(withToken(h.token(t, "default", "web")), &pb.IstioCertificateRequest{
			Csr: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(spiffe("default", "web"))}),
		})
		return err
	}
	if err := askByToken(); err != nil {
		t.Fatal(err)
	}

	// From the second renewal on, the certificate the connection was made
	// with has expired when the client renews.
	for i := range 4 {
		leaf := rc.current()
		time.Sleep(time.Until(got.Add(leaf.NotAfter.Sub(got) * 55 / 100)))
		if err := rc.renew(t, id, ttl); err != nil {
			t.Fatalf("renewal %d with certificate %x (expires %s): %v", i+1, leaf.SerialNumber, leaf.NotAfter.Format(time.RFC3339), err)
		}
		got = time.Now()
	}
	if d := rc.dials.Load(); d < 3 {
		t.Errorf("the renewing client connected %d times, want a new connection before each certificate it connected with expired", d)
	}

	// The check is unchanged: a new connection presenting the expired
	// provisioned certificate is refused, and told why.
	stale := newRenewingClient(t, h, provisioned, certs[0])
	if err := stale.renew(t, id, ttl); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("renewal with an expired certificate: %v, want Unauthenticated", err)
	}

	// The token-only connection was not closed.
	if err := askByToken(); err != nil {
		t.Fatal(err)
	}
	if d := tokenDials.Load(); d != 1 {
		t.Errorf("the token-only client connected %d times, want its one connection kept", d)
	}
}
