package ca_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

// maxReason is what a user may expect of a denial's reason however large
// the request: 1 KiB of message and a truncation marker.
const maxReason = 1024 + len("…[truncated, 1048576 bytes]")

// loggedService is a certificate service that records into a real
// issuance log in t.TempDir(), called in process.
type loggedService struct {
	svc    *ca.Service
	log    *store.Log
	minter *ca.TokenMinter
	reg    *prometheus.Registry
}

// newLoggedService builds the service; with, if not nil, adjusts its
// options.
func newLoggedService(t *testing.T, with func(*ca.ServiceOptions)) *loggedService {
	t.Helper()
	ctx := context.Background()
	keys, certs := issuer.NewLocalKeys(""), issuer.NewLocalCerts("")
	opts := issuer.Options{Logger: slog.New(slog.DiscardHandler)}
	if _, err := issuer.Init(ctx, keys, certs, opts); err != nil {
		t.Fatal(err)
	}
	authority, err := issuer.Open(ctx, keys, certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	minter, err := ca.NewTokenMinter(p256(t), "k1", tokIssuer)
	if err != nil {
		t.Fatal(err)
	}
	set := minter.JWKS()
	jwtAuth, err := ca.NewJWTAuthenticator(ca.JWTOptions{Issuer: tokIssuer, KeySet: &set, TrustDomain: trustDomain})
	if err != nil {
		t.Fatal(err)
	}
	l, err := store.Open(filepath.Join(t.TempDir(), "issuance.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	reg := prometheus.NewRegistry()
	o := ca.ServiceOptions{
		Authenticator: ca.NewMultiAuthenticator(nil, jwtAuth),
		Authority:     authority,
		Policy:        issuer.DefaultPolicy(),
		CSR:           ca.CSRPolicy{MaxBytes: 8 << 10},
		Recorder:      ca.LogRecorder{Log: l},
		Metrics:       ca.NewMetrics(reg, nil),
		Logger:        slog.New(slog.DiscardHandler),
	}
	if with != nil {
		with(&o)
	}
	svc, err := ca.NewService(o)
	if err != nil {
		t.Fatal(err)
	}
	return &loggedService{svc: svc, log: l, minter: minter, reg: reg}
}

// call sends one request from the peer addr with the given metadata, as
// the gRPC server would hand it to the service.
func (s *loggedService) call(addr string, md metadata.MD, csr string) error {
	ctx := metadata.NewIncomingContext(context.Background(), md)
	ctx = peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(addr), Port: 40000}})
	_, err := s.svc.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr})
	return err
}

// TestEveryHostileDenialIsRecordedBounded: whatever a caller puts in its
// metadata, token or CSR, its denial is in the log, and neither the entry
// nor the error the caller gets carries more than about 1 KiB of text, with
// control characters and invalid UTF-8 escaped.
func TestEveryHostileDenialIsRecordedBounded(t *testing.T) {
	s := newLoggedService(t, nil)
	good, err := s.minter.Mint("default", "web", []string{"istio-ca"}, 3600e9)
	if err != nil {
		t.Fatal(err)
	}
	mib := strings.Repeat("A", 1<<20)
	hostile := strings.Repeat("\x1b[31m\x00\xff\xfe", 1<<18) // control bytes, invalid UTF-8; 2 MiB
	hugeKid := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","kid":"`+strings.Repeat("k", 5<<10)+`"}`)) + ".e30.c2ln"
	web := spiffe("default", "web")
	goodCSR := csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(web)})
	bigSAN := csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(web), DNSNames: []string{strings.Repeat("a", 60) + "." + strings.Repeat("b.", 1000) + "example"}})

	cases := []struct {
		name   string
		md     metadata.MD
		csr    string
		code   codes.Code
		length string // the original length the message must report, if cut
	}{
		{"1 MiB clusterid, no token", metadata.Pairs("clusterid", mib), goodCSR, codes.Unauthenticated, ""},
		{"1 MiB clusterid, garbage token", metadata.Pairs("clusterid", mib, "authorization", "Bearer x"), goodCSR, codes.Unauthenticated, "1048576 bytes"},
		{"1 MiB clusterid, valid token", metadata.Pairs("clusterid", mib, "authorization", "Bearer "+good), goodCSR, codes.Unauthenticated, "1048576 bytes"},
		{"control bytes and invalid UTF-8 in clusterid", metadata.Pairs("clusterid", hostile, "authorization", "Bearer "+good), goodCSR, codes.Unauthenticated, "2097152 bytes"},
		{"5 KiB key id in the token", metadata.Pairs("authorization", "Bearer "+hugeKid), goodCSR, codes.Unauthenticated, "5120 bytes"},
		{"2 KiB DNS SAN", metadata.Pairs("authorization", "Bearer "+good), bigSAN, codes.PermissionDenied, "bytes]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := s.log.Size()
			err := s.call("192.0.2.7", tc.md, tc.csr)
			if status.Code(err) != tc.code {
				t.Fatalf("code %v (%.200v), want %v", status.Code(err), err, tc.code)
			}
			checkBounded(t, "status message", status.Convert(err).Message())
			if got := s.log.Size(); got != before+1 {
				t.Fatalf("log grew from %d to %d entries; the denial must be recorded exactly once", before, got)
			}
			e, err := s.log.Get(context.Background(), before)
			if err != nil {
				t.Fatal(err)
			}
			if e.Kind != store.KindDenial || e.Code != tc.code.String() {
				t.Fatalf("entry %d is a %v with code %q, want a %v denial", before, e.Kind, e.Code, tc.code)
			}
			checkBounded(t, "log reason", e.Reason)
			if tc.length != "" && !strings.Contains(e.Reason, tc.length) {
				t.Errorf("reason %q does not say the input was cut (%s)", e.Reason, tc.length)
			}
		})
	}
}

// checkBounded fails unless msg is short, valid UTF-8 and free of control
// characters.
func checkBounded(t *testing.T, what, msg string) {
	t.Helper()
	if len(msg) > maxReason {
		t.Errorf("%s is %d bytes, more than %d: %.120q…", what, len(msg), maxReason, msg)
	}
	if !utf8.ValidString(msg) {
		t.Errorf("%s is not valid UTF-8: %.120q", what, msg)
	}
	if i := strings.IndexFunc(msg, unicode.IsControl); i >= 0 {
		t.Errorf("%s carries a control character at %d: %.120q", what, i, msg)
	}
}

// TestOversizedHeadersNeverReachTheService: the server bounds a request's
// metadata as a whole; a request beyond the bound is refused by the gRPC
// transport before the service runs (so it costs no log entry), while
// metadata within it still reaches the service and is denied on the record.
func TestOversizedHeadersNeverReachTheService(t *testing.T) {
	h := newHarness(t)
	csr := csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(spiffe("default", "web"))})
	cases := []struct {
		name    string
		cluster int // bytes of clusterid
		reaches bool
	}{
		{"12 KiB clusterid reaches the service", 12 << 10, true},
		{"1 MiB clusterid is refused by the transport", 1 << 20, false},
		{"15 MB clusterid is refused by the transport", 15 << 20, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, before := h.rec.counts()
			ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer x", "clusterid", strings.Repeat("A", tc.cluster))
			_, err := h.client(t, nil).CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr})
			_, after := h.rec.counts()
			if tc.reaches {
				if status.Code(err) != codes.Unauthenticated || after != before+1 {
					t.Fatalf("code %v, %d denials recorded; want Unauthenticated and one denial", status.Code(err), after-before)
				}
				checkBounded(t, "status message", status.Convert(err).Message())
				return
			}
			if err == nil || status.Code(err) == codes.Unauthenticated || after != before {
				t.Fatalf("code %v (%.200v), %d denials recorded; want a transport refusal before the service", status.Code(err), err, after-before)
			}
		})
	}
}
