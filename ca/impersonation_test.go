package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/store"
)

// fakePods is a cluster's pods, set by hand.
type fakePods struct {
	pods    map[string]ca.PodInfo // by namespace/name
	unsync  bool
	onNodes map[string]bool // node/namespace/service-account
}

func (f *fakePods) Pod(ns, name string) (ca.PodInfo, bool) {
	p, ok := f.pods[ns+"/"+name]
	return p, ok
}
func (f *fakePods) ServiceAccountOnNode(node, ns, sa string) bool {
	return f.onNodes[node+"/"+ns+"/"+sa]
}
func (f *fakePods) HasSynced() bool { return !f.unsync }

func TestNodeAuthorizerImpersonate(t *testing.T) {
	pods := &fakePods{
		pods:    map[string]ca.PodInfo{"istio-system/ztunnel-a": {UID: "u-1", ServiceAccount: "ztunnel", Node: "node-a"}},
		onNodes: map[string]bool{"node-a/shop/web": true},
	}
	na, err := ca.NewNodeAuthorizer([]string{"istio-system/ztunnel"}, map[string]ca.NodePods{"east": pods, "west": &fakePods{unsync: true}})
	if err != nil {
		t.Fatal(err)
	}
	zt := func(edit func(c *ca.Caller)) *ca.Caller {
		c := &ca.Caller{SPIFFEID: spiffe("istio-system", "ztunnel"), Namespace: "istio-system", ServiceAccount: "ztunnel",
			ClusterID: "east", Method: ca.AuthTokenReview, PodName: "ztunnel-a", PodUID: "u-1"}
		if edit != nil {
			edit(c)
		}
		return c
	}
	web := spiffe("shop", "web")
	cases := []struct {
		name     string
		na       *ca.NodeAuthorizer
		caller   *ca.Caller
		identity string
		want     error
		substr   string
		noCaller bool // the identity does not parse: no caller to record
	}{
		{"allowed", na, zt(nil), web, nil, "", false},
		{"impersonation off", nil, zt(nil), web, ca.ErrPermissionDenied, "impersonation is off", false},
		{"not a trusted account", na, zt(func(c *ca.Caller) { c.ServiceAccount = "ztunnel2" }), web, ca.ErrPermissionDenied, "istio-system/ztunnel2 is not a trusted node account", false},
		{"malformed identity", na, zt(nil), "spiffe://cluster.local/web", ca.ErrInvalidRequest, "impersonated identity", true},
		{"other trust domain", na, zt(nil), "spiffe://evil.example/ns/shop/sa/web", ca.ErrPermissionDenied, "outside its trust domain", false},
		{"token bound to no pod", na, zt(func(c *ca.Caller) { c.PodName, c.PodUID = "", "" }), web, ca.ErrPermissionDenied, "not bound to a pod", false},
		{"pod gone", na, zt(func(c *ca.Caller) { c.PodName = "ztunnel-b" }), web, ca.ErrPermissionDenied, "ztunnel-b is not running", false},
		{"pod re-created (other uid)", na, zt(func(c *ca.Caller) { c.PodUID = "u-0" }), web, ca.ErrPermissionDenied, `not the token's "u-0"`, false},
		{"cluster not watched", na, zt(func(c *ca.Caller) { c.ClusterID = "north" }), web, ca.ErrPermissionDenied, `no pods are watched in cluster "north"`, false},
		{"pods not listed yet", na, zt(func(c *ca.Caller) { c.ClusterID = "west" }), web, ca.ErrUnavailable, "not listed yet", false},
		{"no pod of the identity on the node", na, zt(nil), spiffe("shop", "db"), ca.ErrPermissionDenied, `no pod of service account shop/db runs on its node "node-a"`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, err := tc.na.Impersonate(tc.caller, tc.identity)
			if !errors.Is(err, tc.want) || (tc.want != nil && !strings.Contains(err.Error(), tc.substr)) {
				t.Fatalf("error %v, want %v with %q", err, tc.want, tc.substr)
			}
			if tc.noCaller {
				if w != nil {
					t.Fatalf("caller %+v for an identity that does not parse", w)
				}
				return
			}
			if w == nil || w.SPIFFEID != tc.identity || w.Impersonator != tc.caller.SPIFFEID || w.CallerID() != tc.caller.SPIFFEID || w.PodName != tc.caller.PodName {
				t.Fatalf("caller %+v, want %s impersonated by %s", w, tc.identity, tc.caller.SPIFFEID)
			}
			if err == nil && w.Node != "node-a" {
				t.Fatalf("node %q, want node-a", w.Node)
			}
		})
	}
}

func TestNewNodeAuthorizerOptions(t *testing.T) {
	pods := map[string]ca.NodePods{"Kubernetes": &fakePods{}}
	for _, tc := range []struct {
		name    string
		trusted []string
		pods    map[string]ca.NodePods
		substr  string
	}{
		{"no accounts", nil, pods, "no trusted node accounts"},
		{"account without namespace", []string{"ztunnel"}, pods, `"ztunnel" is not <namespace>/<service-account>`},
		{"no clusters", []string{"istio-system/ztunnel"}, nil, "no cluster's pods"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ca.NewNodeAuthorizer(tc.trusted, tc.pods); err == nil || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("error %v, want %q", err, tc.substr)
			}
		})
	}
}

// A request whose ImpersonatedIdentity is not a string is malformed; one
// with impersonation off is refused and recorded with both identities.
func TestImpersonationRequestForm(t *testing.T) {
	s := newLoggedService(t, nil)
	tok, err := s.minter.Mint("istio-system", "ztunnel", []string{"istio-ca"}, 3600e9)
	if err != nil {
		t.Fatal(err)
	}
	web := spiffe("shop", "web")
	csr := csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(web)})
	md, err := structpb.NewStruct(map[string]any{ca.ImpersonatedIdentityKey: 42})
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
	if _, err := s.svc.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr, Metadata: md}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("numeric ImpersonatedIdentity: %v, want InvalidArgument", err)
	}
	resp, err := s.impersonating(tok, web, csr)
	if status.Code(err) != codes.PermissionDenied || resp != nil {
		t.Fatalf("impersonation with no trusted node accounts: %v, want PermissionDenied", err)
	}
	e := lastEntry(t, s.log)
	if e.Kind != store.KindDenial || e.SPIFFEID != web || e.CallerID != spiffe("istio-system", "ztunnel") {
		t.Fatalf("entry %v for %s by %s, want a denial for %s by ztunnel", e.Kind, e.SPIFFEID, e.CallerID, web)
	}
}
