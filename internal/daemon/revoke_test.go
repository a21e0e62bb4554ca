package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
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

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/issuer"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// renew asks for a new certificate for w's identity (and dnsNames) the
// way a VM's istio-agent renews with PROV_CERT: authenticated by w's
// client certificate alone, no token. cluster, when not empty, goes in the
// ClusterID header.
func (r *running) renew(t *testing.T, w *workload, cluster string, validity time.Duration, dnsNames ...string) (*workload, error) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{w.chain[0].URIs[0]}, DNSNames: dnsNames}, key)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(r.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: r.rootPool(t), ServerName: "localhost", Certificates: []tls.Certificate{w.tlsCert()},
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	if cluster != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "ClusterID", cluster)
	}
	resp, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})),
		ValidityDuration: int64(validity / time.Second),
	})
	if err != nil {
		return nil, err
	}
	out := &workload{key: key}
	for i, elem := range resp.GetCertChain() {
		if i == len(resp.GetCertChain())-1 {
			out.bundle = parsePEM(t, elem)
		} else {
			out.chain = append(out.chain, parsePEM(t, elem)...)
		}
	}
	return out, nil
}

// lastEntry returns the newest entry of the daemon's log.
func (r *running) lastEntry(t *testing.T) *store.Entry {
	t.Helper()
	e, err := r.Log().Get(context.Background(), r.Log().Size()-1)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// revokeCurrent revokes the current intermediate through the admin API
// with adm and returns its fingerprint.
func revokeCurrent(t *testing.T, adm adminv1.AdminServiceClient) string {
	t.Helper()
	stream, err := adm.RevokeIntermediate(context.Background(), &adminv1.RevokeIntermediateRequest{Reason: "key exposure"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	return first.GetRevoked().GetFingerprint()
}

// After revoke-intermediate, a certificate the revoked intermediate signed
// vouches for nothing: it neither renews through client-certificate
// authentication nor calls any admin method, before or after a restart;
// each refusal is on the record (a denial, an admin call refused).
func TestRevokedIntermediateStopsVouching(t *testing.T) {
	cfg := devConfig(t, t.TempDir())
	d := startDaemon(t, cfg)
	ctx := context.Background()
	admin := d.request(t, "transitca", "admin")
	web := d.request(t, "shop", "web")
	if _, err := d.renew(t, web, "", time.Hour); err != nil {
		t.Fatalf("renewal with a certificate of the current intermediate: %v", err)
	}
	if _, err := d.admin(t, admin).Status(ctx, &adminv1.StatusRequest{}); err != nil {
		t.Fatalf("admin call before the revocation: %v", err)
	}
	revoked := revokeCurrent(t, d.admin(t, d.request(t, "transitca", "admin")))
	if issuerFingerprint(web) != revoked || issuerFingerprint(admin) != revoked {
		t.Fatal("the test's certificates are not under the revoked intermediate")
	}

	check := func(when string) {
		t.Helper()
		_, err := d.renew(t, web, "", time.Hour)
		wantCode(t, err, codes.Unauthenticated, "compromised")
		e := d.lastEntry(t)
		if e.Kind != store.KindDenial || e.Code != codes.Unauthenticated.String() || !strings.Contains(e.Reason, revoked) {
			t.Fatalf("%s: the refused renewal is recorded as %+v, want a denial naming the revoked intermediate", when, e)
		}
		adm := d.admin(t, admin)
		for name, call := range map[string]func() error{
			"Status":             func() error { _, err := adm.Status(ctx, &adminv1.StatusRequest{}); return err },
			"RotateIntermediate": func() error { _, err := adm.RotateIntermediate(ctx, &adminv1.RotateIntermediateRequest{}); return err },
			"QueryLog":           func() error { _, err := adm.QueryLog(ctx, &adminv1.QueryLogRequest{}); return err },
		} {
			err := call()
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "compromised") {
				t.Fatalf("%s: %s with an admin certificate of the revoked intermediate: %v, want Unauthenticated (compromised)", when, name, err)
			}
			e := d.lastEntry(t)
			if e.Kind != store.KindDenial || e.Code != codes.Unauthenticated.String() || !strings.Contains(e.Reason, "admin call "+name+" refused") ||
				!strings.Contains(e.Reason, revoked) || !strings.Contains(e.Detail, "class=admin_unauthenticated") {
				t.Fatalf("%s: the refused %s is recorded as %+v", when, name, e)
			}
		}
	}
	check("after the revocation")
	d.stop(t)
	d = startDaemon(t, cfg)
	check("after a restart")
}

// A renewal authenticated by a client certificate never ends later than
// the certificate presented: a certificate with an hour left, renewed
// asking for 30 days, gets at most that hour, and so does the certificate
// renewed from the renewed one.
func TestCertificateRenewalNeverOutlivesThePresentedCertificate(t *testing.T) {
	d := startDaemon(t, devConfig(t, t.TempDir()))
	web := d.request(t, "shop", "web") // 3600s asked, granted
	end := web.chain[0].NotAfter
	renewed := web
	for i := range 2 {
		next, err := d.renew(t, renewed, "", 30*24*time.Hour)
		if err != nil {
			t.Fatalf("renewal %d: %v", i+1, err)
		}
		if got := next.chain[0].NotAfter; got.After(end) {
			t.Fatalf("renewal %d of a certificate ending at %s ends at %s (%s later)", i+1, end.Format(time.RFC3339), got.Format(time.RFC3339), got.Sub(end))
		}
		e := d.lastEntry(t)
		if e.Kind != store.KindIssuance || e.AuthMethod != string(ca.AuthClientCert) || e.NotAfter.After(end) {
			t.Fatalf("renewal %d recorded as %+v", i+1, e)
		}
		renewed = next
	}
}

// The log entry of an admin call names the caller's certificate: its
// serial and the fingerprint of the intermediate that signed it, so that
// two certificates for one admin identity can be told apart.
func TestAdminCallRecordsTheCallersCertificate(t *testing.T) {
	d := startDaemon(t, devConfig(t, t.TempDir()))
	admin := d.request(t, "transitca", "admin")
	if _, err := d.admin(t, admin).Status(context.Background(), &adminv1.StatusRequest{}); err != nil {
		t.Fatal(err)
	}
	e := d.lastEntry(t)
	serial := admin.chain[0].SerialNumber.Text(16)
	if e.Action != ca.AdminCallAction || !strings.HasPrefix(e.Actor, "spiffe://cluster.local/ns/transitca/sa/admin") ||
		!strings.Contains(e.Actor, serial) || !strings.Contains(e.Actor, issuerFingerprint(admin)) {
		t.Fatalf("admin call recorded with actor %q, want the SPIFFE ID, the certificate serial %s and its issuer %s", e.Actor, serial, issuerFingerprint(admin))
	}
}

// A renewal with a client certificate is judged as the cluster the
// certificate was issued for: a certificate of cluster dev presented with
// clusterid prod is refused (it would get prod's tier and DNS names), and
// renewed as dev it gets dev's tier and is recorded under dev.
func TestRenewalIsJudgedAsTheIssuingCluster(t *testing.T) {
	cfg := devConfig(t, t.TempDir())
	cfg.Auth.Clusters = []string{"dev", "prod"}
	cfg.Tiers["short"] = config.Tier{MaxTTL: config.Duration(2 * time.Hour), DefaultTTL: config.Duration(time.Hour)}
	cfg.Policy = append([]config.Rule{
		{Tier: "short", Clusters: []string{"dev"}},
		{Tier: "service", Clusters: []string{"prod"}, DNSNames: []string{"web.prod.example"}},
	}, cfg.Policy...)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfg)
	minter, err := DevMinter(context.Background(), d.backend.Keys)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := minter.Mint("shop", "web", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, resp, err := d.createCertificate(t, tok, "dev", spiffeID("shop", "web"), nil)
	if err != nil {
		t.Fatal(err)
	}
	dev := &workload{key: key, chain: parsePEM(t, resp.GetCertChain()[0]+resp.GetCertChain()[1])}
	if e := d.lastEntry(t); e.ClusterID != "dev" || e.Tier != "short" {
		t.Fatalf("issued for dev: recorded as cluster %q tier %q", e.ClusterID, e.Tier)
	}

	_, err = d.renew(t, dev, "prod", 24*time.Hour, "web.prod.example")
	wantCode(t, err, codes.Unauthenticated, "dev")
	if e := d.lastEntry(t); e.Kind != store.KindDenial {
		t.Fatalf("the refused renewal is recorded as %+v, want a denial", e)
	}
	for _, cluster := range []string{"dev", ""} {
		if _, err := d.renew(t, dev, cluster, time.Hour); err != nil {
			t.Fatalf("renewal as dev (clusterid %q): %v", cluster, err)
		}
		if e := d.lastEntry(t); e.Kind != store.KindIssuance || e.ClusterID != "dev" || e.Tier != "short" {
			t.Fatalf("renewal as dev (clusterid %q) recorded as cluster %q tier %q", cluster, e.ClusterID, e.Tier)
		}
	}
}

// RevokeIntermediate accepts only intermediates this CA issued: a
// fingerprint it never issued, or its root's, is refused with the reason,
// and the rotation state is left as it was.
func TestRevokeIntermediateRefusesWhatTheCADidNotIssue(t *testing.T) {
	d := startDaemon(t, devConfig(t, t.TempDir()))
	ctx := context.Background()
	adm := d.admin(t, d.request(t, "transitca", "admin"))
	revoke := func(fp string) error {
		s, err := adm.RevokeIntermediate(ctx, &adminv1.RevokeIntermediateRequest{Fingerprint: fp, Reason: "test"})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	before := d.Authority().Status()
	wantCode(t, revoke(hex.EncodeToString(b[:])), codes.NotFound, "not an intermediate this ca issued")
	wantCode(t, revoke(issuer.Fingerprint(d.Authority().Root())), codes.InvalidArgument, "root")
	after := d.Authority().Status()
	if len(after.CompromisedIntermediates) != 0 || after.Intermediate.Fingerprint != before.Intermediate.Fingerprint {
		t.Fatalf("refused revocations changed the state: compromised %v, intermediate %s → %s",
			after.CompromisedIntermediates, before.Intermediate.Fingerprint, after.Intermediate.Fingerprint)
	}
}
