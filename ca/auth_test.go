package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/transitca/transitca/internal/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

const (
	testTrustDomain = "cluster.local"
	testID          = "spiffe://cluster.local/ns/default/sa/sleep"
)

// checkErr fails t unless err wraps want and its message contains substr. A
// nil want means err must be nil.
func checkErr(t *testing.T, err, want error, substr string) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error; want %v containing %q", want, substr)
	}
	if !errors.Is(err, want) {
		t.Fatalf("error %q does not wrap %v", err, want)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %q does not contain %q", err, substr)
	}
}

// wrapsSentinel reports whether err wraps one of the package's sentinels;
// an error that wraps none becomes codes.Internal.
func wrapsSentinel(err error) bool {
	for _, s := range []error{ErrUnauthenticated, ErrPermissionDenied, ErrInvalidRequest, ErrUnavailable} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func TestSPIFFEID(t *testing.T) {
	if got := spiffeid.Workload("cluster.local", "default", "sleep"); got != testID {
		t.Fatalf("SPIFFEID = %q, want %q", got, testID)
	}
}

func TestParseSPIFFEID(t *testing.T) {
	tests := []struct {
		name, in      string
		td, ns, sa    string
		wantErrSubstr string
	}{
		{name: "istio workload", in: testID, td: "cluster.local", ns: "default", sa: "sleep"},
		{name: "dotted service account", in: "spiffe://example.org/ns/prod-1/sa/build.bot", td: "example.org", ns: "prod-1", sa: "build.bot"},
		{name: "underscore trust domain", in: "spiffe://my_td/ns/a/sa/b", td: "my_td", ns: "a", sa: "b"},
		{name: "https scheme", in: "https://cluster.local/ns/default/sa/sleep", wantErrSubstr: "does not start with spiffe://"},
		{name: "upper-case scheme", in: "SPIFFE://cluster.local/ns/default/sa/sleep", wantErrSubstr: "does not start with spiffe://"},
		{name: "query", in: testID + "?x=1", wantErrSubstr: "has a query"},
		{name: "empty query", in: testID + "?", wantErrSubstr: "has a query"},
		{name: "fragment", in: testID + "#frag", wantErrSubstr: "has a fragment"},
		{name: "percent-encoding", in: "spiffe://cluster.local/ns/def%61ult/sa/sleep", wantErrSubstr: "percent-encoded"},
		{name: "userinfo", in: "spiffe://user@cluster.local/ns/default/sa/sleep", wantErrSubstr: "has userinfo"},
		{name: "port", in: "spiffe://cluster.local:443/ns/default/sa/sleep", wantErrSubstr: "has a port"},
		{name: "empty trust domain", in: "spiffe:///ns/default/sa/sleep", wantErrSubstr: "trust domain is empty"},
		{name: "upper-case trust domain", in: "spiffe://Cluster.local/ns/default/sa/sleep", wantErrSubstr: "has the character 'C'"},
		{name: "no path", in: "spiffe://cluster.local", wantErrSubstr: "path is not /ns/<namespace>/sa/<service-account>"},
		{name: "trailing slash", in: testID + "/", wantErrSubstr: "path is not"},
		{name: "double slash", in: "spiffe://cluster.local//ns/default/sa/sleep", wantErrSubstr: "path is not"},
		{name: "swapped segments", in: "spiffe://cluster.local/sa/sleep/ns/default", wantErrSubstr: "path is not"},
		{name: "extra segment", in: testID + "/x", wantErrSubstr: "path is not"},
		{name: "empty namespace", in: "spiffe://cluster.local/ns//sa/sleep", wantErrSubstr: `"" is not a valid namespace name`},
		{name: "dot-dot namespace", in: "spiffe://cluster.local/ns/../sa/sleep", wantErrSubstr: `".." is not a valid namespace name`},
		{name: "upper-case namespace", in: "spiffe://cluster.local/ns/Default/sa/sleep", wantErrSubstr: "not a valid namespace name"},
		{name: "dotted namespace", in: "spiffe://cluster.local/ns/a.b/sa/sleep", wantErrSubstr: "not a valid namespace name"},
		{name: "namespace of 64 bytes", in: "spiffe://cluster.local/ns/" + strings.Repeat("a", 64) + "/sa/sleep", wantErrSubstr: "not a valid namespace name"},
		{name: "empty service account", in: "spiffe://cluster.local/ns/default/sa/", wantErrSubstr: `"" is not a valid service account name`},
		{name: "service account with colon", in: "spiffe://cluster.local/ns/default/sa/a:b", wantErrSubstr: "not a valid service account name"},
		{name: "service account with leading dash", in: "spiffe://cluster.local/ns/default/sa/-a", wantErrSubstr: "not a valid service account name"},
		{name: "too long", in: "spiffe://cluster.local/ns/default/sa/" + strings.Repeat("a.", 1100), wantErrSubstr: "more than the 2048 allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			td, ns, sa, err := ParseSPIFFEID(tc.in)
			if tc.wantErrSubstr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrSubstr) {
					t.Fatalf("ParseSPIFFEID(%q) error = %v, want one containing %q", tc.in, err, tc.wantErrSubstr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSPIFFEID(%q): %v", tc.in, err)
			}
			if td != tc.td || ns != tc.ns || sa != tc.sa {
				t.Fatalf("ParseSPIFFEID(%q) = %q, %q, %q; want %q, %q, %q", tc.in, td, ns, sa, tc.td, tc.ns, tc.sa)
			}
			if got := spiffeid.Workload(td, ns, sa); got != tc.in {
				t.Fatalf("SPIFFEID round trip = %q, want %q", got, tc.in)
			}
		})
	}
}

// fakeAuthenticator records that it was asked and answers with a fixed
// caller or error.
type fakeAuthenticator struct {
	caller *Caller
	err    error
	calls  int
}

func (f *fakeAuthenticator) Authenticate(context.Context, Credentials) (*Caller, error) {
	f.calls++
	return f.caller, f.err
}

func TestMultiAuthenticator(t *testing.T) {
	certCaller := &Caller{SPIFFEID: testID, Method: AuthClientCert}
	tokenCaller := &Caller{SPIFFEID: testID, Method: AuthJWT}
	chains := [][]*x509.Certificate{{&x509.Certificate{}}}
	certFailure := errors.New("certificate refused")
	tests := []struct {
		name       string
		cert       bool // configure a certificate authenticator
		certErr    error
		token      bool // configure a token authenticator
		cred       Credentials
		wantMethod AuthMethod
		wantErr    error
		wantSubstr string
	}{
		{name: "token only", cert: true, token: true, cred: Credentials{Token: "t"}, wantMethod: AuthJWT},
		{name: "certificate wins over token", cert: true, token: true, cred: Credentials{Token: "t", PeerChains: chains}, wantMethod: AuthClientCert},
		{name: "failed certificate does not fall back to token", cert: true, certErr: certFailure, token: true,
			cred: Credentials{Token: "t", PeerChains: chains}, wantErr: certFailure, wantSubstr: "certificate refused"},
		{name: "certificate ignored without cert authenticator", token: true, cred: Credentials{Token: "t", PeerChains: chains}, wantMethod: AuthJWT},
		{name: "nothing", cert: true, token: true, cred: Credentials{}, wantErr: ErrUnauthenticated,
			wantSubstr: "no credentials: expected an authorization bearer token or a client certificate"},
		{name: "certificate without cert authenticator and no token", token: true, cred: Credentials{PeerChains: chains},
			wantErr: ErrUnauthenticated, wantSubstr: "client certificates are not accepted"},
		{name: "token without token authenticator", cert: true, cred: Credentials{Token: "t"},
			wantErr: ErrUnauthenticated, wantSubstr: "bearer tokens are not accepted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMultiAuthenticator(nil, nil)
			if tc.cert {
				m.Cert = &fakeAuthenticator{caller: certCaller, err: tc.certErr}
			}
			if tc.token {
				m.Token = &fakeAuthenticator{caller: tokenCaller}
			}
			got, err := m.Authenticate(context.Background(), tc.cred)
			checkErr(t, err, tc.wantErr, tc.wantSubstr)
			if tc.wantErr == nil && got.Method != tc.wantMethod {
				t.Fatalf("method = %q, want %q", got.Method, tc.wantMethod)
			}
		})
	}
}

func TestCheckCluster(t *testing.T) {
	tests := []struct {
		name, id string
		allowed  []string
		want     string
		wantSub  string
	}{
		{name: "empty means Kubernetes", id: "", allowed: []string{DefaultCluster}, want: DefaultCluster},
		{name: "listed", id: "east", allowed: []string{"east", "west"}, want: "east"},
		{name: "unlisted", id: "north", allowed: []string{"east", "west"},
			wantSub: `cluster "north" is not served by this ca; allowed clusters: east, west`},
		{name: "empty not allowed when Kubernetes is not listed", id: "", allowed: []string{"east"},
			wantSub: `cluster "Kubernetes" is not served`},
		{name: "case matters", id: "kubernetes", allowed: []string{DefaultCluster}, wantSub: `cluster "kubernetes"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := checkCluster(tc.id, tc.allowed)
			if tc.wantSub != "" {
				checkErr(t, err, ErrUnauthenticated, tc.wantSub)
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("checkCluster = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestCredentialsFromContext(t *testing.T) {
	leaf := &x509.Certificate{Raw: []byte("leaf")}
	inter := &x509.Certificate{Raw: []byte("intermediate")}
	tests := []struct {
		name       string
		md         metadata.MD
		tls        *tls.ConnectionState
		want       Credentials
		wantErr    error
		wantSubstr string
	}{
		{name: "bearer and cluster", md: metadata.Pairs("authorization", "Bearer abc.def.ghi", "clusterid", "east"),
			want: Credentials{Token: "abc.def.ghi", ClusterID: "east"}},
		{name: "lower-case scheme", md: metadata.Pairs("authorization", "bearer abc"), want: Credentials{Token: "abc"}},
		{name: "nothing", md: metadata.MD{}, want: Credentials{}},
		{name: "basic auth", md: metadata.Pairs("authorization", "Basic dXNlcjpwYXNz"),
			wantErr: ErrUnauthenticated, wantSubstr: `authorization header is not "Bearer <token>"`},
		{name: "empty bearer", md: metadata.Pairs("authorization", "Bearer  "),
			wantErr: ErrUnauthenticated, wantSubstr: "empty bearer token"},
		{name: "two tokens", md: metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"),
			wantErr: ErrUnauthenticated, wantSubstr: "2 authorization headers"},
		{name: "two clusters", md: metadata.Pairs("clusterid", "a", "clusterid", "b"),
			wantErr: ErrUnauthenticated, wantSubstr: "2 clusterid headers"},
		{name: "verified chains", md: metadata.MD{},
			tls:  &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf, inter}}, PeerCertificates: []*x509.Certificate{leaf}},
			want: Credentials{PeerChains: [][]*x509.Certificate{{leaf, inter}}}},
		{name: "unverified peer certificates", md: metadata.MD{},
			tls:  &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf, inter}},
			want: Credentials{PeerChains: [][]*x509.Certificate{{leaf, inter}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.NewIncomingContext(context.Background(), tc.md)
			if tc.tls != nil {
				ctx = peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{State: *tc.tls}})
			}
			got, err := CredentialsFromContext(ctx)
			checkErr(t, err, tc.wantErr, tc.wantSubstr)
			if tc.wantErr != nil {
				return
			}
			if got.Token != tc.want.Token || got.ClusterID != tc.want.ClusterID || len(got.PeerChains) != len(tc.want.PeerChains) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			for i := range got.PeerChains {
				if len(got.PeerChains[i]) != len(tc.want.PeerChains[i]) {
					t.Fatalf("chain %d has %d certificates, want %d", i, len(got.PeerChains[i]), len(tc.want.PeerChains[i]))
				}
				for j := range got.PeerChains[i] {
					if got.PeerChains[i][j] != tc.want.PeerChains[i][j] {
						t.Fatalf("chain %d certificate %d differs", i, j)
					}
				}
			}
		})
	}
}
