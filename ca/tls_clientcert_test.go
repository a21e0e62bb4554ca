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

// A client that keeps its connection between renewals is never refused for
// the certificate of an old handshake: the CA closes a connection made with
// a client certificate once it is idle from a tenth of that certificate's
// validity period before its end, and the client's next call connects again
// with the certificate it holds then. The answer to a call on a connection
// that is closing arrives. The expired certificate itself is still
// refused; a connection without a client certificate is left open.
func TestClientCertConnectionClosedBeforeItsCertificateExpires(t *testing.T) {
	h := newHarness(t)
	id := spiffe("vm", "db")
	// 30s certificates: NotBefore is back-dated by half, so the first lives
	// 15s after it is issued, and closes from 3s before its end; a renewal
	// on it ends when it does.
	const ttl = 30 * time.Second
	key := p256(t)
	resp, err := h.client(t, nil).CreateCertificate(withToken(h.token(t, "vm", "db")), &pb.IstioCertificateRequest{
		Csr: csrPEM(t, key, &x509.CertificateRequest{URIs: uris(id)}), ValidityDuration: int64(ttl / time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	certs := parseChain(t, resp.CertChain)
	end := certs[0].NotAfter
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

	// The first renewal on the connection made with the provisioned
	// certificate; the second after that connection's drain point (a new
	// connection, with the renewed certificate, which is past its own
	// drain point already: it closes after this call's answer); the third
	// on a new connection again.
	for i, before := range []time.Duration{8 * time.Second, 2 * time.Second, 700 * time.Millisecond} {
		time.Sleep(time.Until(end.Add(-before)))
		leaf := rc.current()
		if err := rc.renew(t, id, ttl); err != nil {
			t.Fatalf("renewal %d with certificate %x (expires %s), %v before it: %v", i+1, leaf.SerialNumber, leaf.NotAfter.Format(time.RFC3339Nano), time.Until(leaf.NotAfter), err)
		}
		if got := rc.current().NotAfter; got.After(end) {
			t.Errorf("renewal %d ends at %s, after the certificate presented", i+1, got)
		}
	}
	if d := rc.dials.Load(); d != 3 {
		t.Errorf("the renewing client connected %d times, want 3: a new connection before each certificate it connected with expired", d)
	}

	// The check is unchanged: a new connection presenting the expired
	// provisioned certificate is refused, and told why.
	time.Sleep(time.Until(end.Add(100 * time.Millisecond)))
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
