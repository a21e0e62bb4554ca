package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/issuer"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// workload is a certificate obtained through CreateCertificate, as
// istio-agent gets one: its key, its chain and the bundle that came with
// it.
type workload struct {
	key    *ecdsa.PrivateKey
	chain  []*x509.Certificate
	bundle []*x509.Certificate
}

func (w *workload) tlsCert() tls.Certificate {
	c := tls.Certificate{PrivateKey: w.key, Leaf: w.chain[0]}
	for _, x := range w.chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// verifies reports whether w's chain verifies against bundle.
func (w *workload) verifies(bundle []*x509.Certificate) error {
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range bundle {
		rp.AddCert(r)
	}
	ip.AddCert(w.chain[1])
	_, err := w.chain[0].Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// request gets a certificate for ns/sa from the running dev daemon with a
// dev token.
func (r *running) request(t *testing.T, ns, sa string) *workload {
	t.Helper()
	minter, err := DevMinter(context.Background(), r.backend.Keys)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := minter.Mint(ns, sa, []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return r.requestWithToken(t, ns, sa, tok)
}

// requestWithToken gets a certificate for ns/sa with a bearer token, as
// istio-agent does.
func (r *running) requestWithToken(t *testing.T, ns, sa, tok string) *workload {
	t.Helper()
	w, err := r.tryRequest(t, ns, sa, tok)
	if err != nil {
		t.Fatalf("CreateCertificate for %s/%s: %v", ns, sa, err)
	}
	return w
}

// createCertificate sends one CreateCertificate for the identity id with a
// fresh P-256 key and a bearer token, as istio-agent does; cluster, when
// not empty, goes in the ClusterID header and meta in the request's
// metadata.
func (r *running) createCertificate(t *testing.T, tok, cluster, id string, meta *structpb.Struct) (*ecdsa.PrivateKey, *pb.IstioCertificateResponse, error) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(r.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: r.rootPool(t), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	if cluster != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "ClusterID", cluster)
	}
	resp, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})), ValidityDuration: 3600, Metadata: meta,
	})
	return key, resp, err
}

// tryRequest is requestWithToken that returns the request's error.
func (r *running) tryRequest(t *testing.T, ns, sa, tok string) (*workload, error) {
	t.Helper()
	key, resp, err := r.createCertificate(t, tok, "", spiffeID(ns, sa), nil)
	if err != nil {
		return nil, err
	}
	w := &workload{key: key}
	for i, elem := range resp.GetCertChain() {
		certs := parsePEM(t, elem)
		if i == len(resp.GetCertChain())-1 {
			w.bundle = certs
		} else {
			w.chain = append(w.chain, certs...)
		}
	}
	return w, nil
}

func parsePEM(t *testing.T, text string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	rest := []byte(text)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// admin returns an admin API client presenting w's certificate.
func (r *running) admin(t *testing.T, w *workload) adminv1.AdminServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(r.AdminAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: r.rootPool(t), ServerName: "localhost", Certificates: []tls.Certificate{w.tlsCert()},
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return adminv1.NewAdminServiceClient(conn)
}

func wantCode(t *testing.T, err error, code codes.Code, inMsg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), inMsg) {
		t.Fatalf("got %v, want %s containing %q", err, code, inMsg)
	}
}

// A whole rotation on the dev daemon, through the admin API: drill,
// prepare, activate (refused, then forced), retire (refused, then forced),
// revoke; certificates issued before keep verifying against the bundle
// received after; a workload certificate is refused everywhere; every
// call is in the log.
func TestRotationThroughTheAdminAPI(t *testing.T) {
	cfg := devConfig(t, t.TempDir())
	d := startDaemon(t, cfg)
	ctx := context.Background()
	adminW := d.request(t, "transitca", "admin")
	adm := d.admin(t, adminW)
	before := d.request(t, "shop", "web")

	st, err := adm.Status(ctx, &adminv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetRoots()) != 1 || st.GetRoots()[0].GetRole() != adminv1.RootRole_ROOT_ROLE_ACTIVE || st.GetIntermediate().GetRootKeyVersion() != 1 {
		t.Fatalf("status of a new CA: %v", st)
	}

	// An intermediate drill passes and rotates the intermediate.
	dr, err := adm.Drill(ctx, &adminv1.DrillRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range dr.GetReport().GetSteps() {
		t.Logf("drill step %s passed=%v: %s", s.GetName(), s.GetPassed(), s.GetDetail())
	}
	if !dr.GetReport().GetPassed() || len(dr.GetReport().GetSteps()) < 6 {
		t.Fatalf("drill: %v", dr.GetReport())
	}
	if _, err := adm.Drill(ctx, &adminv1.DrillRequest{Root: true}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("root drill without rotation.allow_root_drill: %v, want PermissionDenied", err)
	}

	// Prepare: two roots in the bundle, issuance stays under v1.
	prep, err := adm.PrepareRoot(ctx, &adminv1.PrepareRootRequest{Reason: "yearly"})
	if err != nil {
		t.Fatal(err)
	}
	if prep.GetPrepared().GetKeyVersion() != 2 {
		t.Fatalf("prepared %v", prep.GetPrepared())
	}
	mid := d.request(t, "shop", "web")
	if len(mid.bundle) != 2 || mid.chain[1].CheckSignatureFrom(before.bundle[0]) != nil {
		t.Fatalf("after prepare: bundle of %d roots, intermediate under the old root: %v", len(mid.bundle), mid.chain[1].CheckSignatureFrom(before.bundle[0]))
	}
	_, err = adm.ActivateRoot(ctx, &adminv1.ActivateRootRequest{})
	wantCode(t, err, codes.FailedPrecondition, "left")
	_, err = adm.ActivateRoot(ctx, &adminv1.ActivateRootRequest{Force: true})
	wantCode(t, err, codes.InvalidArgument, "reason")
	act, err := adm.ActivateRoot(ctx, &adminv1.ActivateRootRequest{Force: true, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if act.GetActive().GetKeyVersion() != 2 || act.GetIntermediate().GetRootKeyVersion() != 2 {
		t.Fatalf("activate: %v", act)
	}
	after := d.request(t, "shop", "web")
	if err := before.verifies(after.bundle); err != nil {
		t.Fatalf("a certificate received before prepare does not verify against the bundle received after activate: %v", err)
	}
	if err := after.verifies(after.bundle); err != nil {
		t.Fatal(err)
	}
	if after.chain[1].CheckSignatureFrom(before.bundle[0]) == nil {
		t.Fatal("after activate, the intermediate is still under the old root")
	}

	// Retire: refused while certificates under v1 live, then forced.
	_, err = adm.RetireRoot(ctx, &adminv1.RetireRootRequest{})
	wantCode(t, err, codes.FailedPrecondition, "unexpired certificates chain only to root version 1")
	ret, err := adm.RetireRoot(ctx, &adminv1.RetireRootRequest{Force: true, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if ret.GetRetired().GetKeyVersion() != 1 || ret.GetLiveCertificates() == 0 {
		t.Fatalf("retire: %v", ret)
	}
	if got := d.request(t, "shop", "web"); len(got.bundle) != 1 || got.chain[1].CheckSignatureFrom(got.bundle[0]) != nil {
		t.Fatalf("bundle after retire holds %d roots, or not the active one", len(got.bundle))
	}

	// Revoke the current intermediate: rotated, never used again, and the
	// workloads it signed for are listed.
	adminW2 := d.request(t, "transitca", "admin")
	adm2 := d.admin(t, adminW2)
	victim := d.request(t, "shop", "cart")
	stream, err := adm2.RevokeIntermediate(ctx, &adminv1.RevokeIntermediateRequest{Reason: "key exposure"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	revoked := first.GetRevoked().GetFingerprint()
	if revoked == "" || revoked == first.GetCurrent().GetFingerprint() {
		t.Fatalf("revoke: %v", first)
	}
	var listed, listedSerials []string
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		listed = append(listed, m.GetAffected().GetSpiffeId())
		listedSerials = append(listedSerials, m.GetAffected().GetSerials()...)
	}
	if !contains(listed, "spiffe://cluster.local/ns/shop/sa/cart") || !contains(listed, "spiffe://cluster.local/ns/transitca/sa/admin") {
		t.Fatalf("affected workloads %v", listed)
	}
	// What the log holds for the revoked intermediate equals the list.
	kind := store.KindIssuance
	entries, _, err := d.Log().Query(ctx, store.Query{Issuer: revoked, Kind: &kind, ValidAt: time.Now(), Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	var logSerials []string
	for _, e := range entries {
		ids[e.SPIFFEID] = true
		logSerials = append(logSerials, e.Serial)
	}
	if len(ids) != len(listed) {
		t.Fatalf("log holds %d workloads under the revoked intermediate, the answer listed %d", len(ids), len(listed))
	}
	slices.Sort(logSerials)
	slices.Sort(listedSerials)
	if !slices.Equal(logSerials, listedSerials) {
		t.Fatalf("serials under the revoked intermediate: log %v, answer %v", logSerials, listedSerials)
	}
	if fp := issuerFingerprint(d.request(t, "shop", "cart")); fp == revoked {
		t.Fatal("the revoked intermediate still signs")
	}
	if err := victim.verifies(victim.bundle); err != nil || issuerFingerprint(victim) != revoked {
		t.Fatalf("the victim's certificate was not signed by the revoked intermediate: %v", err)
	}

	// A workload certificate is refused by every method, and recorded.
	wl := d.admin(t, d.request(t, "shop", "web"))
	for name, call := range map[string]func() error{
		"Status":             func() error { _, err := wl.Status(ctx, &adminv1.StatusRequest{}); return err },
		"RotateIntermediate": func() error { _, err := wl.RotateIntermediate(ctx, &adminv1.RotateIntermediateRequest{}); return err },
		"PrepareRoot":        func() error { _, err := wl.PrepareRoot(ctx, &adminv1.PrepareRootRequest{}); return err },
		"ActivateRoot":       func() error { _, err := wl.ActivateRoot(ctx, &adminv1.ActivateRootRequest{}); return err },
		"RetireRoot":         func() error { _, err := wl.RetireRoot(ctx, &adminv1.RetireRootRequest{}); return err },
		"Drill":              func() error { _, err := wl.Drill(ctx, &adminv1.DrillRequest{}); return err },
		"RevokeIntermediate": func() error {
			s, err := wl.RevokeIntermediate(ctx, &adminv1.RevokeIntermediateRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s with a workload certificate: %v, want PermissionDenied", name, err)
		}
	}

	// The log: each step as admin entries.
	adminKind := store.KindAdmin
	all, _, err := d.Log().Query(ctx, store.Query{Kind: &adminKind, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	var actions, refusals []string
	for _, e := range all {
		actions = append(actions, e.Action)
	}
	// The refusals as denials, one entry each within the per-peer rate.
	denialKind := store.KindDenial
	denied, _, err := d.Log().Query(ctx, store.Query{Kind: &denialKind, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range denied {
		if e.Code == "PermissionDenied" && e.SPIFFEID == "spiffe://cluster.local/ns/shop/sa/web" &&
			strings.Contains(e.Detail, "class=admin_permission_denied") && strings.HasPrefix(e.Reason, "admin call ") {
			refusals = append(refusals, e.Reason)
		}
	}
	joined := strings.Join(actions, ",")
	for _, want := range []string{"drill", "root-prepared", "root-activated", "root-retired", "intermediate-revoked", "intermediate-rotated"} {
		if !strings.Contains(joined, want) {
			t.Errorf("log has no %s entry: %v", want, actions)
		}
	}
	if len(refusals) != 7 {
		t.Errorf("log holds %d refused admin calls of the workload, want 7", len(refusals))
	}

	// After a restart, the rotation state holds: root v2 active, v1 out of
	// the bundle, the revoked intermediate never used.
	d.stop(t)
	d = startDaemon(t, cfg)
	st, err = d.admin(t, d.request(t, "transitca", "admin")).Status(ctx, &adminv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetIntermediate().GetFingerprint() == revoked || st.GetIntermediate().GetRootKeyVersion() != 2 ||
		len(st.GetRoots()) != 1 || st.GetRoots()[0].GetKeyVersion() != 2 || !contains(st.GetCompromisedIntermediates(), revoked) {
		t.Fatalf("status after restart: %v", st)
	}

	// A compromised root: retired at once although certificates chain to
	// it, never trusted again, and the workloads holding them listed.
	adm = d.admin(t, d.request(t, "transitca", "admin"))
	underV2 := d.request(t, "shop", "web")
	if _, err := adm.PrepareRoot(ctx, &adminv1.PrepareRootRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.ActivateRoot(ctx, &adminv1.ActivateRootRequest{Force: true, Reason: "root v2 key exposed"}); err != nil {
		t.Fatal(err)
	}
	_, err = adm.RetireRoot(ctx, &adminv1.RetireRootRequest{KeyVersion: 2, Compromised: true})
	wantCode(t, err, codes.InvalidArgument, "reason")
	ret, err = adm.RetireRoot(ctx, &adminv1.RetireRootRequest{KeyVersion: 2, Compromised: true, Reason: "key exposed"})
	if err != nil {
		t.Fatal(err)
	}
	var holders []string
	for _, g := range ret.GetAffected() {
		holders = append(holders, g.GetSpiffeId())
	}
	if ret.GetRetired().GetRole() != adminv1.RootRole_ROOT_ROLE_COMPROMISED || !contains(holders, "spiffe://cluster.local/ns/shop/sa/web") || int(ret.GetLiveCertificates()) < len(holders) {
		t.Fatalf("compromised retire: %v", ret)
	}
	fresh := d.request(t, "shop", "web")
	if err := underV2.verifies(fresh.bundle); err == nil {
		t.Fatal("a certificate under the compromised root still verifies against the bundle")
	}
}

func issuerFingerprint(w *workload) string { return issuer.Fingerprint(w.chain[1]) }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
