package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/issuer"
)

// testPKI is a root and an issuing intermediate, like the CA's own hierarchy.
type testPKI struct {
	root, inter       *x509.Certificate
	rootKey, interKey *ecdsa.PrivateKey
}

// nextSerial returns a random 128-bit serial number, as a CA assigns them.
func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(err)
	}
	return n
}

func createCert(t *testing.T, tmpl, parent *x509.Certificate, pub any, parentKey *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	now := time.Now()
	p := &testPKI{rootKey: newECKey(t, elliptic.P256()), interKey: newECKey(t, elliptic.P256())}
	rootTmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name + " root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	p.root = createCert(t, rootTmpl, rootTmpl, &p.rootKey.PublicKey, p.rootKey)
	interTmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name + " intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(12 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, MaxPathLenZero: true,
	}
	p.inter = createCert(t, interTmpl, p.root, &p.interKey.PublicKey, p.rootKey)
	return p
}

func (p *testPKI) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.root)
	return pool
}

// leaf issues a workload certificate for testID; edit changes the template.
func (p *testPKI) leaf(t *testing.T, edit func(c *x509.Certificate)) *x509.Certificate {
	t.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		NotBefore:    now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{mustURL(t, testID)},
	}
	if edit != nil {
		edit(tmpl)
	}
	key := newECKey(t, elliptic.P256())
	return createCert(t, tmpl, p.inter, &key.PublicKey, p.interKey)
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestCertAuthenticator(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	other := newTestPKI(t, "other")
	roots := pki.pool()
	a, err := NewCertAuthenticator(func() *x509.CertPool { return roots }, testTrustDomain, []string{DefaultCluster, "vm-fleet"})
	if err != nil {
		t.Fatal(err)
	}
	good := pki.leaf(t, nil)
	inCluster := func(cluster string) func(c *x509.Certificate) {
		return func(c *x509.Certificate) {
			ext, err := issuer.ClusterExtension(cluster)
			if err != nil {
				t.Fatal(err)
			}
			c.ExtraExtensions = []pkix.Extension{ext}
		}
	}
	vm := pki.leaf(t, inCluster("vm-fleet"))
	tests := []struct {
		name       string
		chains     [][]*x509.Certificate
		cluster    string
		now        time.Time
		want       *Caller
		wantErr    error
		wantSubstr string
	}{
		{
			name:   "verified chain from tls",
			chains: [][]*x509.Certificate{{good, pki.inter, pki.root}},
			want: &Caller{SPIFFEID: testID, Namespace: "default", ServiceAccount: "sleep", ClusterID: DefaultCluster,
				Method: AuthClientCert, Subject: good.SerialNumber.Text(16), ClientCert: good, ClientCertIssuer: issuer.Fingerprint(pki.inter)},
		},
		{
			name:    "client's own chain, vm cluster",
			chains:  [][]*x509.Certificate{{vm, pki.inter}},
			cluster: "vm-fleet",
			want: &Caller{SPIFFEID: testID, Namespace: "default", ServiceAccount: "sleep", ClusterID: "vm-fleet",
				Method: AuthClientCert, Subject: vm.SerialNumber.Text(16), ClientCert: vm, ClientCertIssuer: issuer.Fingerprint(pki.inter)},
		},
		{
			name:   "vm cluster certificate without a clusterid",
			chains: [][]*x509.Certificate{{vm, pki.inter}},
			want: &Caller{SPIFFEID: testID, Namespace: "default", ServiceAccount: "sleep", ClusterID: "vm-fleet",
				Method: AuthClientCert, Subject: vm.SerialNumber.Text(16), ClientCert: vm, ClientCertIssuer: issuer.Fingerprint(pki.inter)},
		},
		{
			name:    "vm cluster certificate presented as another cluster",
			chains:  [][]*x509.Certificate{{vm, pki.inter}},
			cluster: DefaultCluster,
			wantErr: ErrUnauthenticated, wantSubstr: `was issued for cluster "vm-fleet" and cannot be presented as cluster "Kubernetes"`,
		},
		{
			name:    "certificate without a cluster presented as another than the own",
			chains:  [][]*x509.Certificate{{good, pki.inter}},
			cluster: "vm-fleet",
			wantErr: ErrUnauthenticated, wantSubstr: `was issued for cluster "Kubernetes" and cannot be presented as cluster "vm-fleet"`,
		},
		{
			name:    "certificate of a cluster no longer served",
			chains:  [][]*x509.Certificate{{pki.leaf(t, inCluster("east")), pki.inter}},
			wantErr: ErrUnauthenticated, wantSubstr: `cluster "east" is not served by this ca; allowed clusters: Kubernetes, vm-fleet`,
		},
		{
			name: "malformed cluster extension",
			chains: [][]*x509.Certificate{{pki.leaf(t, func(c *x509.Certificate) {
				c.ExtraExtensions = []pkix.Extension{{Id: issuer.OIDCluster, Value: []byte{2, 1, 7}}}
			}), pki.inter}},
			wantErr: ErrUnauthenticated, wantSubstr: "malformed cluster extension",
		},
		{
			name:    "missing intermediate",
			chains:  [][]*x509.Certificate{{good}},
			wantErr: ErrUnauthenticated, wantSubstr: "does not verify: x509: certificate signed by unknown authority",
		},
		{
			name:    "other ca",
			chains:  [][]*x509.Certificate{{other.leaf(t, nil), other.inter}},
			wantErr: ErrUnauthenticated, wantSubstr: "does not verify: x509: certificate signed by unknown authority",
		},
		{
			name:    "other root smuggled in as an intermediate",
			chains:  [][]*x509.Certificate{{other.leaf(t, nil), other.inter, other.root}},
			wantErr: ErrUnauthenticated, wantSubstr: "does not verify",
		},
		{
			name:    "expired",
			chains:  [][]*x509.Certificate{{good, pki.inter}},
			now:     time.Now().Add(2 * time.Hour),
			wantErr: ErrUnauthenticated, wantSubstr: "does not verify: x509: certificate has expired or is not yet valid",
		},
		{
			name: "server-only certificate",
			chains: [][]*x509.Certificate{{pki.leaf(t, func(c *x509.Certificate) {
				c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			}), pki.inter}},
			wantErr: ErrUnauthenticated, wantSubstr: "does not verify: x509: certificate specifies an incompatible key usage",
		},
		{
			name: "no uri",
			chains: [][]*x509.Certificate{{pki.leaf(t, func(c *x509.Certificate) {
				c.URIs = nil
				c.DNSNames = []string{"sleep.default.svc"}
			}), pki.inter}},
			wantErr: ErrUnauthenticated, wantSubstr: "has 0 uri sans, expected exactly one spiffe id",
		},
		{
			name: "two uris",
			chains: [][]*x509.Certificate{{pki.leaf(t, func(c *x509.Certificate) {
				c.URIs = append(c.URIs, mustURL(t, "spiffe://cluster.local/ns/kube-system/sa/admin"))
			}), pki.inter}},
			wantErr: ErrUnauthenticated, wantSubstr: "has 2 uri sans",
		},
		{
			name: "foreign trust domain",
			chains: [][]*x509.Certificate{{pki.leaf(t, func(c *x509.Certificate) {
				c.URIs = []*url.URL{mustURL(t, "spiffe://other.example/ns/default/sa/sleep")}
			}), pki.inter}},
			wantErr: ErrUnauthenticated, wantSubstr: `is for trust domain "other.example", not "cluster.local"`,
		},
		{
			name: "not a workload id",
			chains: [][]*x509.Certificate{{pki.leaf(t, func(c *x509.Certificate) {
				c.URIs = []*url.URL{mustURL(t, "spiffe://cluster.local/istiod")}
			}), pki.inter}},
			wantErr: ErrUnauthenticated, wantSubstr: "path is not /ns/<namespace>/sa/<service-account>",
		},
		{
			name: "ca certificate as client certificate",
			chains: [][]*x509.Certificate{{pki.leaf(t, func(c *x509.Certificate) {
				c.IsCA, c.BasicConstraintsValid = true, true
			}), pki.inter}},
			wantErr: ErrUnauthenticated, wantSubstr: "is a ca certificate",
		},
		{
			name:    "chains with different leaves",
			chains:  [][]*x509.Certificate{{good, pki.inter}, {pki.leaf(t, nil), pki.inter}},
			wantErr: ErrUnauthenticated, wantSubstr: "do not share one leaf",
		},
		{
			name:    "empty chain",
			chains:  [][]*x509.Certificate{{}},
			wantErr: ErrUnauthenticated, wantSubstr: "no client certificate",
		},
		{
			name:    "cluster not served",
			chains:  [][]*x509.Certificate{{good, pki.inter}},
			cluster: "east",
			wantErr: ErrUnauthenticated, wantSubstr: `cannot be presented as cluster "east"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a.now = time.Now
			if !tc.now.IsZero() {
				a.now = func() time.Time { return tc.now }
			}
			got, err := a.Authenticate(context.Background(), Credentials{PeerChains: tc.chains, ClusterID: tc.cluster})
			checkErr(t, err, tc.wantErr, tc.wantSubstr)
			if tc.want != nil && *got != *tc.want {
				t.Fatalf("caller = %+v, want %+v", *got, *tc.want)
			}
		})
	}
}

// The chain check sees every verified chain; its refusal is the caller's
// Unauthenticated, with its reason.
func TestCertAuthenticatorChainCheck(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	roots := pki.pool()
	distrusted := map[string]bool{}
	check := func(chain []*x509.Certificate) error {
		for _, c := range chain[1:] {
			if distrusted[issuer.Fingerprint(c)] {
				return fmt.Errorf("%w: %s is a compromised intermediate", issuer.ErrCompromised, issuer.Fingerprint(c))
			}
		}
		return nil
	}
	a, err := NewCertAuthenticator(func() *x509.CertPool { return roots }, testTrustDomain, nil, WithChainCheck(check))
	if err != nil {
		t.Fatal(err)
	}
	leaf := pki.leaf(t, nil)
	cred := Credentials{PeerChains: [][]*x509.Certificate{{leaf, pki.inter}}}
	if _, err := a.Authenticate(context.Background(), cred); err != nil {
		t.Fatal(err)
	}
	distrusted[issuer.Fingerprint(pki.inter)] = true
	_, err = a.Authenticate(context.Background(), cred)
	checkErr(t, err, ErrUnauthenticated, "is a compromised intermediate")
	if !errors.Is(err, issuer.ErrCompromised) {
		t.Fatalf("%v does not wrap issuer.ErrCompromised", err)
	}
	if _, err := NewCertAuthenticator(func() *x509.CertPool { return roots }, testTrustDomain, []string{"east"}, WithOwnCluster("west")); err == nil {
		t.Fatal("an own cluster that is not served was accepted")
	}
}

func TestCertAuthenticatorFollowsRootRotation(t *testing.T) {
	oldPKI, newPKI := newTestPKI(t, "old"), newTestPKI(t, "new")
	roots := oldPKI.pool()
	a, err := NewCertAuthenticator(func() *x509.CertPool { return roots }, testTrustDomain, nil)
	if err != nil {
		t.Fatal(err)
	}
	oldLeaf := oldPKI.leaf(t, nil)
	if _, err := a.Authenticate(context.Background(), Credentials{PeerChains: [][]*x509.Certificate{{oldLeaf, oldPKI.inter}}}); err != nil {
		t.Fatal(err)
	}
	// The old root leaves the bundle: its leaves stop authenticating at once.
	roots = newPKI.pool()
	_, err = a.Authenticate(context.Background(), Credentials{PeerChains: [][]*x509.Certificate{{oldLeaf, oldPKI.inter}}})
	checkErr(t, err, ErrUnauthenticated, "certificate signed by unknown authority")
}

func TestCertAuthenticatorWithoutRoots(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	a, err := NewCertAuthenticator(func() *x509.CertPool { return nil }, testTrustDomain, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Authenticate(context.Background(), Credentials{PeerChains: [][]*x509.Certificate{{pki.leaf(t, nil), pki.inter}}})
	if err == nil || wrapsSentinel(err) || !strings.Contains(err.Error(), "trust bundle is not loaded") {
		t.Fatalf("error = %v, want an internal error about the trust bundle", err)
	}
	if _, err := NewCertAuthenticator(nil, testTrustDomain, nil); err == nil {
		t.Fatal("NewCertAuthenticator accepted nil roots")
	}
	if _, err := NewCertAuthenticator(pki.pool, "Bad Domain", nil); err == nil {
		t.Fatal("NewCertAuthenticator accepted an invalid trust domain")
	}
}
