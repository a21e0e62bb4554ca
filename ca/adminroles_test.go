package ca

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// Each admin method is a reader's or an operator's, and an identity has
// the role its list gives it: a reader is refused what changes the CA, an
// identity of neither list everything.
func TestAdminRolesAuthorize(t *testing.T) {
	r := &AdminRoles{Operators: []string{"spiffe://cluster.local/ns/ops/sa/admin"}, Readers: []string{"spiffe://cluster.local/ns/sec/sa/auditor"}}
	operator, reader, other := "spiffe://cluster.local/ns/ops/sa/admin", "spiffe://cluster.local/ns/sec/sa/auditor", "spiffe://cluster.local/ns/shop/sa/web"
	for _, tc := range []struct {
		id, method string
		want       string // "" allowed, else a part of the refusal
	}{
		{operator, adminv1.AdminService_RevokeIntermediate_FullMethodName, ""},
		{operator, adminv1.AdminService_QueryLog_FullMethodName, ""},
		{reader, adminv1.AdminService_QueryLog_FullMethodName, ""},
		{reader, adminv1.AdminService_Backup_FullMethodName, ""},
		{reader, adminv1.AdminService_Status_FullMethodName, ""},
		{reader, adminv1.AdminService_RotateIntermediate_FullMethodName, "is a reader (admin.readers): RotateIntermediate changes the CA"},
		{reader, adminv1.AdminService_Drill_FullMethodName, "Drill changes the CA"},
		{reader, "/transitca.admin.v1.AdminService/SomethingNew", "SomethingNew changes the CA"},
		{other, adminv1.AdminService_QueryLog_FullMethodName, "is not an admin identity"},
	} {
		err := r.authorize(&Caller{SPIFFEID: tc.id}, tc.method)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s calling %s: %v, want allowed", tc.id, tc.method, err)
		case tc.want != "" && (!errors.Is(err, ErrPermissionDenied) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s calling %s: %v, want permission denied saying %q", tc.id, tc.method, err, tc.want)
		}
	}
	// A certificate known to be issued for a cluster that may not hold an
	// admin identity does not make an admin.
	r.Clusters = []string{"primary"}
	if err := r.authorize(&Caller{SPIFFEID: operator, ClusterID: "remote"}, adminv1.AdminService_Status_FullMethodName); !errors.Is(err, ErrPermissionDenied) ||
		!strings.Contains(err.Error(), `issued for cluster "remote"`) {
		t.Errorf("an operator's certificate of cluster remote: %v, want permission denied", err)
	}
	if err := r.authorize(&Caller{SPIFFEID: operator, ClusterID: "primary"}, adminv1.AdminService_Status_FullMethodName); err != nil {
		t.Errorf("an operator's certificate of cluster primary: %v", err)
	}
	var none *AdminRoles
	if err := none.authorize(&Caller{SPIFFEID: operator}, adminv1.AdminService_Status_FullMethodName); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("no roles: %v, want permission denied", err)
	}
}

// An admin identity is issued only to callers of the admin clusters;
// other identities to callers of any cluster.
func TestAdminRolesCheckIssuance(t *testing.T) {
	r := &AdminRoles{Operators: []string{"spiffe://cluster.local/ns/ops/sa/admin"}, Readers: []string{"spiffe://cluster.local/ns/sec/sa/auditor"}, Clusters: []string{"primary"}}
	for _, tc := range []struct {
		id, cluster string
		ok          bool
	}{
		{"spiffe://cluster.local/ns/ops/sa/admin", "primary", true},
		{"spiffe://cluster.local/ns/ops/sa/admin", "remote", false},
		{"spiffe://cluster.local/ns/sec/sa/auditor", "remote", false},
		{"spiffe://cluster.local/ns/sec/sa/auditor", "", false},
		{"spiffe://cluster.local/ns/shop/sa/web", "remote", true},
	} {
		err := r.checkIssuance(&Caller{SPIFFEID: tc.id, ClusterID: tc.cluster})
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrPermissionDenied)) {
			t.Errorf("%s from cluster %q: %v, want allowed %v", tc.id, tc.cluster, err, tc.ok)
		}
	}
}

// On the admin API the certificate alone says who calls and for which
// cluster it was issued: the authorizer drops the clusterid header, so no
// header is needed, and the caller's cluster is the certificate's.
func TestAdminAuthorizerReadsNoClusterHeader(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	roots := pki.pool()
	a, err := NewCertAuthenticator(func() *x509.CertPool { return roots }, testTrustDomain, []string{"east", "west"})
	if err != nil {
		t.Fatal(err)
	}
	leaf := pki.leaf(t, nil)
	for _, cluster := range []string{"", DefaultCluster, "anything", "west"} {
		c, err := a.Authenticate(t.Context(), adminCredentials(Credentials{ClusterID: cluster, PeerChains: [][]*x509.Certificate{{leaf, pki.inter}}}))
		if err != nil || c.SPIFFEID != testID || c.ClusterID != "east" {
			t.Fatalf("clusterid %q: %+v, %v; want %s of the CA's own cluster east (the certificate has no cluster extension)", cluster, c, err, testID)
		}
	}
	other := newTestPKI(t, "other")
	if _, err := a.Authenticate(t.Context(), adminCredentials(Credentials{PeerChains: [][]*x509.Certificate{{other.leaf(t, nil), other.inter}}})); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("a certificate of other roots: %v, want unauthenticated", err)
	}
}
