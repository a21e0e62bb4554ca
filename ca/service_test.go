package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/certlint"
	"github.com/transitca/transitca/issuer"
)

const (
	trustDomain = "cluster.local"
	tokIssuer   = "https://kubernetes.test"
)

// countingRecorder counts what the service records, and can be told to
// fail.
type countingRecorder struct {
	mu        sync.Mutex
	issuances []*ca.Issuance
	denials   []*ca.Denial
	fail      error
}

func (r *countingRecorder) RecordIssuance(_ context.Context, is *ca.Issuance) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.issuances = append(r.issuances, is)
	return nil
}

func (r *countingRecorder) RecordDenial(_ context.Context, d *ca.Denial) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.denials = append(r.denials, d)
	return nil
}

func (r *countingRecorder) counts() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.issuances), len(r.denials)
}

// harness is a running certificate service over real TLS on loopback.
type harness struct {
	addr      string
	svc       *ca.Service
	authority *issuer.Authority
	minter    *ca.TokenMinter
	tokKey    *ecdsa.PrivateKey
	rec       *countingRecorder
	reg       *prometheus.Registry
	roots     *x509.CertPool
	metrics   *httptest.Server
}

func newHarness(t *testing.T) *harness { return newHarnessWith(t, nil) }

// newHarnessWith is newHarness with the service options changed by opt.
func newHarnessWith(t *testing.T, opt func(*ca.ServiceOptions)) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	keys, certs := issuer.NewLocalKeys(""), issuer.NewLocalCerts("")
	opts := issuer.Options{Logger: slog.New(slog.DiscardHandler)}
	if _, err := issuer.Init(ctx, keys, certs, opts); err != nil {
		t.Fatal(err)
	}
	authority, err := issuer.Open(ctx, keys, certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	tokKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	minter, err := ca.NewTokenMinter(tokKey, "k1", tokIssuer)
	if err != nil {
		t.Fatal(err)
	}
	set := minter.JWKS()
	jwtAuth, err := ca.NewJWTAuthenticator(ca.JWTOptions{Issuer: tokIssuer, KeySet: &set, TrustDomain: trustDomain})
	if err != nil {
		t.Fatal(err)
	}
	certAuth, err := ca.NewCertAuthenticator(authority.RootPool, trustDomain, nil)
	if err != nil {
		t.Fatal(err)
	}
	policy := issuer.DefaultPolicy()
	policy.Rules = append([]issuer.Rule{{
		Tier: issuer.TierPrivileged, Namespaces: []string{"istio-system"}, ServiceAccounts: []string{"istiod"},
		DNSNames: []string{"istiod.istio-system.svc"},
	}}, policy.Rules...)
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.DiscardHandler)
	var sc *ca.ServingCert
	metrics := ca.NewMetrics(reg, map[string]func() *x509.Certificate{
		"root":         authority.Root,
		"intermediate": func() *x509.Certificate { return authority.Intermediate().Cert },
		"serving":      func() *x509.Certificate { return sc.Leaf() },
	})
	rec := &countingRecorder{}
	so := ca.ServiceOptions{
		Authenticator: ca.NewMultiAuthenticator(certAuth, jwtAuth),
		Authority:     authority,
		Policy:        policy,
		CSR:           ca.CSRPolicy{MaxBytes: 8 << 10},
		Recorder:      rec,
		Metrics:       metrics,
		Logger:        logger,
	}
	if opt != nil {
		opt(&so)
	}
	svc, err := ca.NewService(so)
	if err != nil {
		t.Fatal(err)
	}
	sc, err = ca.NewServingCert(ctx, svc, ca.ServingCertOptions{
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, TTL: time.Hour, Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := ca.NewGRPCServer(ca.TLSConfig(sc, tls.VersionTLS13), svc, reg)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	ms := httptest.NewServer(ca.MetricsHandler(reg, func() (bool, string) { return true, "" }))
	t.Cleanup(ms.Close)
	return &harness{addr: lis.Addr().String(), svc: svc, authority: authority, minter: minter, tokKey: tokKey, rec: rec, reg: reg, roots: authority.RootPool(), metrics: ms}
}

func (h *harness) client(t *testing.T, clientCert *tls.Certificate) pb.IstioCertificateServiceClient {
	t.Helper()
	cfg := &tls.Config{RootCAs: h.roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if clientCert != nil {
		cfg.Certificates = []tls.Certificate{*clientCert}
	}
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewIstioCertificateServiceClient(conn)
}

func (h *harness) token(t *testing.T, ns, sa string) string {
	t.Helper()
	tok, err := h.minter.Mint(ns, sa, []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func withToken(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

func spiffe(ns, sa string) string { return "spiffe://" + trustDomain + "/ns/" + ns + "/sa/" + sa }

func csrPEM(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func uris(ss ...string) []*url.URL {
	var out []*url.URL
	for _, s := range ss {
		u, _ := url.Parse(s)
		out = append(out, u)
	}
	return out
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func parseChain(t *testing.T, chain []string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, elem := range chain {
		rest := []byte(elem)
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, c)
		}
	}
	return out
}

func TestIssueServiceCertificate(t *testing.T) {
	h := newHarness(t)
	c := h.client(t, nil)
	cases := []struct {
		name      string
		key       crypto.Signer
		ns, sa    string
		requested time.Duration
		wantTTL   time.Duration
		wantKU    x509.KeyUsage
	}{
		{"ecdsa p256 default ttl", p256(t), "default", "web", 0, 24 * time.Hour, x509.KeyUsageDigitalSignature},
		{"ecdsa p256 12h", p256(t), "default", "web", 12 * time.Hour, 12 * time.Hour, x509.KeyUsageDigitalSignature},
		{"service clamped to 30d", p256(t), "shop", "cart", 90 * 24 * time.Hour, 30 * 24 * time.Hour, x509.KeyUsageDigitalSignature},
		{"privileged clamped to 7d", p256(t), "istio-system", "ingress", 30 * 24 * time.Hour, 7 * 24 * time.Hour, x509.KeyUsageDigitalSignature},
		{"rsa 2048", mustRSA(t, 2048), "default", "legacy", time.Hour, time.Hour, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := spiffe(tc.ns, tc.sa)
			resp, err := c.CreateCertificate(withToken(h.token(t, tc.ns, tc.sa)), &pb.IstioCertificateRequest{
				Csr: csrPEM(t, tc.key, &x509.CertificateRequest{URIs: uris(id)}), ValidityDuration: int64(tc.requested.Seconds()),
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.CertChain) != 3 {
				t.Fatalf("chain has %d elements, want [leaf, intermediate, roots]", len(resp.CertChain))
			}
			certs := parseChain(t, resp.CertChain)
			leaf := certs[0]
			roots := x509.NewCertPool()
			for _, r := range parseChain(t, resp.CertChain[2:]) {
				roots.AddCert(r)
			}
			inter := x509.NewCertPool()
			inter.AddCert(certs[1])
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
					t.Fatalf("chain does not verify for %v: %v", usage, err)
				}
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id || len(leaf.DNSNames) != 0 || leaf.Subject.String() != "" {
				t.Fatalf("leaf names: URIs %v DNS %v subject %q", leaf.URIs, leaf.DNSNames, leaf.Subject)
			}
			if leaf.KeyUsage != tc.wantKU {
				t.Fatalf("key usage %v, want %v", leaf.KeyUsage, tc.wantKU)
			}
			// An auditor reads the validity period: it is exactly the granted
			// TTL, back-dating for clock skew included.
			if period := leaf.NotAfter.Sub(leaf.NotBefore); period != tc.wantTTL {
				t.Fatalf("validity period %v (NotBefore %v, NotAfter %v), want %v", period, leaf.NotBefore, leaf.NotAfter, tc.wantTTL)
			}
			if time.Since(leaf.NotBefore) < issuer.Backdate-time.Minute {
				t.Fatalf("NotBefore %v is not back-dated", leaf.NotBefore)
			}
			if len(leaf.SubjectKeyId) == 0 {
				t.Fatal("leaf has no subject key identifier")
			}
			certlint.Check(t, leaf)
			rec := h.rec.issuances[len(h.rec.issuances)-1]
			if rec.GrantedTTL != tc.wantTTL {
				t.Fatalf("recorded granted TTL %v, want the validity period %v", rec.GrantedTTL, tc.wantTTL)
			}
		})
	}
	issued, denied := h.rec.counts()
	if issued != 1+len(cases) || denied != 0 { // the serving certificate, then one per case
		t.Fatalf("recorded %d issuances, %d denials", issued, denied)
	}
	last := h.rec.issuances[len(h.rec.issuances)-1]
	if last.Tier != issuer.TierService || last.RequestedTTL != time.Hour || last.Caller.Method != ca.AuthJWT {
		t.Fatalf("record: %+v", last)
	}
}

func mustRSA(t *testing.T, bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestIstiodMayAskForItsDNSName(t *testing.T) {
	h := newHarness(t)
	c := h.client(t, nil)
	id := spiffe("istio-system", "istiod")
	resp, err := c.CreateCertificate(withToken(h.token(t, "istio-system", "istiod")), &pb.IstioCertificateRequest{
		Csr: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(id), DNSNames: []string{"istiod.istio-system.svc"}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseChain(t, resp.CertChain)[0]
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "istiod.istio-system.svc" {
		t.Fatalf("DNS names %v", leaf.DNSNames)
	}
	certlint.Check(t, leaf)
	if got := time.Until(leaf.NotAfter); got > 24*time.Hour {
		t.Fatalf("privileged default ttl %v", got)
	}
}

func TestRenewWithClientCertificate(t *testing.T) {
	h := newHarness(t)
	id := spiffe("vm", "db")
	key := p256(t)
	resp, err := h.client(t, nil).CreateCertificate(withToken(h.token(t, "vm", "db")), &pb.IstioCertificateRequest{
		Csr: csrPEM(t, key, &x509.CertificateRequest{URIs: uris(id)}),
	})
	if err != nil {
		t.Fatal(err)
	}
	certs := parseChain(t, resp.CertChain)
	cc := &tls.Certificate{Certificate: [][]byte{certs[0].Raw, certs[1].Raw}, PrivateKey: key}
	// No token: the certificate alone proves the identity.
	resp2, err := h.client(t, cc).CreateCertificate(context.Background(), &pb.IstioCertificateRequest{
		Csr: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(id)}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := parseChain(t, resp2.CertChain)[0].URIs[0].String(); got != id {
		t.Fatalf("renewed for %s", got)
	}
	last := h.rec.issuances[len(h.rec.issuances)-1]
	if last.Caller.Method != ca.AuthClientCert {
		t.Fatalf("renewal authenticated by %s", last.Caller.Method)
	}
}

func TestRecorderFailureFailsRequest(t *testing.T) {
	h := newHarness(t)
	h.rec.fail = io.ErrUnexpectedEOF
	_, err := h.client(t, nil).CreateCertificate(withToken(h.token(t, "default", "web")), &pb.IstioCertificateRequest{
		Csr: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(spiffe("default", "web"))}),
	})
	if status.Code(err) != codes.Internal {
		t.Fatalf("got %v, want Internal", err)
	}
	if strings.Contains(err.Error(), "unexpected EOF") {
		t.Fatalf("internal error leaks its cause to the caller: %v", err)
	}
}

func TestHealthServing(t *testing.T) {
	h := newHarness(t)
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: h.roots, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "istio.v1.auth.IstioCertificateService"})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", resp, err)
	}
}

func TestTLS12OnlyWhenAllowed(t *testing.T) {
	h := newHarness(t)
	_, err := tls.Dial("tcp", h.addr, &tls.Config{RootCAs: h.roots, ServerName: "localhost", MaxVersion: tls.VersionTLS12})
	if err == nil {
		t.Fatal("a TLS 1.2 client connected to a TLS 1.3-only server")
	}
}

// otherCA returns a client certificate for id from a CA transitca does not
// trust.
func otherCA(t *testing.T, id string) *tls.Certificate {
	caKey := p256(t)
	caTmpl := &x509.Certificate{SerialNumber: big1(), Subject: pkix.Name{CommonName: "evil"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	key := p256(t)
	leaf := &x509.Certificate{SerialNumber: big1(), URIs: uris(id), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}
}

func big1() *big.Int { return big.NewInt(time.Now().UnixNano()) }

// TestHostileRequests sends requests a CA must refuse. Each gets the right
// code and a message that says what was wrong, and nothing is signed.
func TestHostileRequests(t *testing.T) {
	h := newHarness(t)
	web := spiffe("default", "web")
	good := h.token(t, "default", "web")
	goodCSR := func() string { return csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(web)}) }
	mint := func(mut func(*ca.TokenMinter) (string, error)) string {
		tok, err := mut(h.minter)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	otherKey := p256(t)
	otherMinter, err := ca.NewTokenMinter(otherKey, "k1", tokIssuer)
	if err != nil {
		t.Fatal(err)
	}
	wrongIssuer, err := ca.NewTokenMinter(h.tokKey, "k1", "https://elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(good, ".")
	noneTok := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(payload), `"web"`, `"admin"`, 1))) + "." + parts[2]
	brokenSig := func() string {
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: uris(web)}, p256(t))
		der[len(der)-3] ^= 0xff
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	}
	bcExt := func() pkix.Extension {
		v, _ := asn1.Marshal(struct {
			IsCA bool `asn1:"optional"`
		}{true})
		return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v}
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)

	cases := []struct {
		name     string
		ctx      context.Context
		cert     *tls.Certificate
		csr      string
		validity int64
		code     codes.Code
		msg      string
	}{
		{"no credentials", context.Background(), nil, goodCSR(), 0, codes.Unauthenticated, "no credentials"},
		{"basic auth header", metadata.AppendToOutgoingContext(context.Background(), "authorization", "Basic dXNlcjpwYXNz"), nil, goodCSR(), 0, codes.Unauthenticated, "not \"Bearer <token>\""},
		{"garbage token", withToken("not-a-jwt"), nil, goodCSR(), 0, codes.Unauthenticated, "token"},
		{"expired token", withToken(mint(func(m *ca.TokenMinter) (string, error) {
			m.Now = func() time.Time { return time.Now().Add(-3 * time.Hour) }
			defer func() { m.Now = nil }()
			return m.Mint("default", "web", []string{"istio-ca"}, time.Hour)
		})), nil, goodCSR(), 0, codes.Unauthenticated, "expired"},
		{"token not yet valid", withToken(mint(func(m *ca.TokenMinter) (string, error) {
			m.Now = func() time.Time { return time.Now().Add(time.Hour) }
			defer func() { m.Now = nil }()
			return m.Mint("default", "web", []string{"istio-ca"}, time.Hour)
		})), nil, goodCSR(), 0, codes.Unauthenticated, "not valid"},
		{"token for another audience", withToken(mint(func(m *ca.TokenMinter) (string, error) {
			return m.Mint("default", "web", []string{"vault"}, time.Hour)
		})), nil, goodCSR(), 0, codes.Unauthenticated, "audience"},
		{"token from unknown key", withToken(mint(func(*ca.TokenMinter) (string, error) {
			return otherMinter.Mint("default", "web", []string{"istio-ca"}, time.Hour)
		})), nil, goodCSR(), 0, codes.Unauthenticated, "signature"},
		{"token from another issuer", withToken(mint(func(*ca.TokenMinter) (string, error) {
			return wrongIssuer.Mint("default", "web", []string{"istio-ca"}, time.Hour)
		})), nil, goodCSR(), 0, codes.Unauthenticated, "issuer"},
		{"alg none token", withToken(noneTok), nil, goodCSR(), 0, codes.Unauthenticated, "none"},
		{"tampered token", withToken(tampered), nil, goodCSR(), 0, codes.Unauthenticated, "signature"},
		{"wrong cluster id", metadata.AppendToOutgoingContext(withToken(good), "clusterid", "evil-cluster"), nil, goodCSR(), 0, codes.Unauthenticated, "evil-cluster"},
		{"client cert from another CA", context.Background(), otherCA(t, web), goodCSR(), 0, codes.Unauthenticated, "certificate"},
		{"SAN of another service", withToken(good), nil, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(spiffe("payments", "api"))}), 0, codes.PermissionDenied, "spiffe://cluster.local/ns/payments/sa/api"},
		{"SAN in another trust domain", withToken(good), nil, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris("spiffe://evil.example/ns/default/sa/web")}), 0, codes.PermissionDenied, "evil.example"},
		{"extra URI SAN", withToken(good), nil, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(web, spiffe("default", "admin"))}), 0, codes.PermissionDenied, "sa/admin"},
		{"no URI SAN", withToken(good), nil, csrPEM(t, p256(t), &x509.CertificateRequest{}), 0, codes.InvalidArgument, "no subject alternative names"},
		{"DNS SAN", withToken(good), nil, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(web), DNSNames: []string{"bank.example"}}), 0, codes.PermissionDenied, "bank.example"},
		{"IP SAN", withToken(good), nil, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(web), IPAddresses: []net.IP{net.ParseIP("10.0.0.1")}}), 0, codes.InvalidArgument, "10.0.0.1"},
		{"email SAN", withToken(good), nil, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(web), EmailAddresses: []string{"ceo@example.com"}}), 0, codes.InvalidArgument, "ceo@example.com"},
		{"common name", withToken(good), nil, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(web), Subject: pkix.Name{CommonName: "web"}}), 0, codes.InvalidArgument, "subject"},
		{"CA:true request", withToken(good), nil, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(web), ExtraExtensions: []pkix.Extension{bcExt()}}), 0, codes.InvalidArgument, "2.5.29.19"},
		{"RSA-1024", withToken(good), nil, csrPEM(t, mustRSA(t, 1024), &x509.CertificateRequest{URIs: uris(web)}), 0, codes.InvalidArgument, "1024"},
		{"P-224", withToken(good), nil, csrPEM(t, p224, &x509.CertificateRequest{URIs: uris(web)}), 0, codes.InvalidArgument, "P-224"},
		{"Ed25519 not allowed", withToken(good), nil, csrPEM(t, edKey, &x509.CertificateRequest{URIs: uris(web)}), 0, codes.InvalidArgument, "Ed25519"},
		{"broken CSR signature", withToken(good), nil, brokenSig(), 0, codes.InvalidArgument, "signature"},
		{"oversized CSR", withToken(good), nil, strings.Repeat("A", 9000), 0, codes.InvalidArgument, "bytes"},
		{"not PEM", withToken(good), nil, "hello", 0, codes.InvalidArgument, "not pem"},
		{"empty CSR", withToken(good), nil, "", 0, codes.InvalidArgument, "csr is empty"},
		{"two CSRs", withToken(good), nil, goodCSR() + goodCSR(), 0, codes.InvalidArgument, "2 pem blocks"},
		{"negative validity", withToken(good), nil, goodCSR(), -5, codes.InvalidArgument, "validity_duration -5"},
		{"absurd validity", withToken(good), nil, goodCSR(), 1 << 40, codes.InvalidArgument, "validity_duration"},
	}
	if len(cases) < 25 {
		t.Fatalf("only %d hostile cases", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, deniedBefore := h.rec.counts()
			_, err := h.client(t, tc.cert).CreateCertificate(tc.ctx, &pb.IstioCertificateRequest{Csr: tc.csr, ValidityDuration: tc.validity})
			if status.Code(err) != tc.code {
				t.Fatalf("code %v (%v), want %v", status.Code(err), err, tc.code)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.msg) {
				t.Fatalf("message %q does not say %q", msg, tc.msg)
			}
			after, deniedAfter := h.rec.counts()
			if after != before {
				t.Fatal("a hostile request was signed")
			}
			if deniedAfter != deniedBefore+1 {
				t.Fatalf("denial not recorded (%d → %d)", deniedBefore, deniedAfter)
			}
		})
	}
}

func TestMetricsAfterRequests(t *testing.T) {
	h := newHarness(t)
	c := h.client(t, nil)
	for i := 0; i < 3; i++ {
		if _, err := c.CreateCertificate(withToken(h.token(t, "default", "web")), &pb.IstioCertificateRequest{
			Csr: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(spiffe("default", "web"))}),
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CreateCertificate(context.Background(), &pb.IstioCertificateRequest{Csr: "x"}); err == nil {
		t.Fatal("unauthenticated request succeeded")
	}
	resp, err := http.Get(h.metrics.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	text := string(body)
	for _, want := range []string{
		`transitca_requests_total{outcome="issued",tier="service"} 3`,
		`transitca_issuances_total{mode="memory",tier="service"} 3`,
		`transitca_rejections_total{reason="auth_unauthenticated"} 1`,
		`transitca_requests_total{outcome="denied",tier=""} 1`,
		`transitca_issuance_duration_seconds_count{outcome="issued"} 3`,
		`transitca_certificate_expiry_seconds{cert="root"}`,
		`transitca_certificate_expiry_seconds{cert="intermediate"}`,
		`transitca_certificate_expiry_seconds{cert="serving"}`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="CreateCertificate",grpc_service="istio.v1.auth.IstioCertificateService",grpc_type="unary"} 3`,
		`grpc_server_handled_total{grpc_code="Unauthenticated",grpc_method="CreateCertificate",grpc_service="istio.v1.auth.IstioCertificateService",grpc_type="unary"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
