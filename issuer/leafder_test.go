package issuer

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

// testCA is a self-signed CA of key type typ, as parent of the leaves.
func testCA(t testing.TB, typ KeyType) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := GenerateKey(typ)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "test ca " + string(typ), Organization: []string{"transitca"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

// TestLeafEncodingMatchesCreateCertificate encodes workload leaves for
// every issuer and subject key type, with and without DNS names, before
// and after 2050, and checks that the TBSCertificate is byte for byte what
// x509.CreateCertificate writes, and that the signed leaf parses and
// verifies under its issuer.
func TestLeafEncodingMatchesCreateCertificate(t *testing.T) {
	id, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/web")
	now := time.Date(2026, 12, 2, 10, 11, 12, 345678901, time.UTC)
	for _, issuerType := range []KeyType{KeyECDSAP256, KeyECDSAP384, KeyRSA2048, KeyEd25519} {
		parent, signer := testCA(t, issuerType)
		alg, ok := sigAlgFor(parent.PublicKey)
		if !ok {
			t.Fatalf("%s: no signature algorithm", issuerType)
		}
		for _, subjectType := range []KeyType{KeyECDSAP256, KeyECDSAP384, KeyRSA2048, KeyEd25519} {
			sub, err := GenerateKey(subjectType)
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name    string
				dns     []string
				at      time.Time
				ttl     time.Duration
				cluster string
			}{
				{"plain", nil, now, 24 * time.Hour, ""},
				{"dns names", []string{"istiod.istio-system.svc", "istiod-remote.istio-system.svc"}, now, 7 * 24 * time.Hour, ""},
				{"after 2049", nil, time.Date(2049, 12, 31, 12, 0, 0, 0, time.UTC), 48 * time.Hour, ""},
				{"a cluster", []string{"web.shop.svc"}, now, 24 * time.Hour, "prod-east"},
			} {
				t.Run(fmt.Sprintf("%s by %s, %s", subjectType, issuerType, tc.name), func(t *testing.T) {
					tmpl, err := LeafTemplate(LeafRequest{SPIFFEID: id, DNSNames: tc.dns, PublicKey: sub.Public(), Now: tc.at, TTL: tc.ttl, Cluster: tc.cluster})
					if err != nil {
						t.Fatal(err)
					}
					tmpl.SerialNumber = new(big.Int).SetBytes(bytes.Repeat([]byte{0x9c}, 16))
					tmpl.SubjectKeyId = keyID(sub.Public())
					if !isWorkloadLeaf(tmpl) {
						t.Fatal("a LeafTemplate is not taken as a workload leaf")
					}
					want, err := x509.CreateCertificate(rand.Reader, tmpl, parent, sub.Public(), signer)
					if err != nil {
						t.Fatal(err)
					}
					wantCert, err := x509.ParseCertificate(want)
					if err != nil {
						t.Fatal(err)
					}
					spki, err := x509.MarshalPKIXPublicKey(sub.Public())
					if err != nil {
						t.Fatal(err)
					}
					tbs, err := encodeLeafTBS(tmpl, parent, spki, alg)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(tbs, wantCert.RawTBSCertificate) {
						t.Fatalf("TBSCertificate differs from x509.CreateCertificate's:\ngot  %x\nwant %x", tbs, wantCert.RawTBSCertificate)
					}
					der, err := signLeaf(tmpl, parent, alg, sub.Public(), signer)
					if err != nil {
						t.Fatal(err)
					}
					got, err := x509.ParseCertificate(der)
					if err != nil {
						t.Fatal(err)
					}
					if err := got.CheckSignatureFrom(parent); err != nil {
						t.Fatalf("leaf does not verify under its issuer: %v", err)
					}
					if got.SignatureAlgorithm != wantCert.SignatureAlgorithm || !bytes.Equal(got.RawTBSCertificate, wantCert.RawTBSCertificate) {
						t.Fatalf("signed leaf: algorithm %v, want %v; TBS equal %v", got.SignatureAlgorithm, wantCert.SignatureAlgorithm, bytes.Equal(got.RawTBSCertificate, wantCert.RawTBSCertificate))
					}
					if cluster, ok, err := CertCluster(got); err != nil || ok != (tc.cluster != "") || cluster != tc.cluster {
						t.Fatalf("cluster read back: %q %v %v, want %q", cluster, ok, err, tc.cluster)
					}
				})
			}
		}
	}
}

// TestOnlyWorkloadLeavesAreEncodedDirectly: any field beyond a workload
// leaf's sends the template to x509.CreateCertificate.
func TestOnlyWorkloadLeavesAreEncodedDirectly(t *testing.T) {
	id, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/web")
	key, err := GenerateKey(KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	base := func() *x509.Certificate {
		tmpl, err := LeafTemplate(LeafRequest{SPIFFEID: id, PublicKey: key.Public(), Now: time.Now(), TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		tmpl.SerialNumber = big.NewInt(42)
		return tmpl
	}
	if !isWorkloadLeaf(base()) {
		t.Fatal("a workload template is not taken as one")
	}
	serving, err := ServingTemplate(ServingRequest{DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, PublicKey: key.Public(), Now: time.Now(), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	serving.SerialNumber = big.NewInt(42)
	for name, edit := range map[string]func(c *x509.Certificate){
		"a subject":            func(c *x509.Certificate) { c.Subject.CommonName = "web" },
		"an IP address":        func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} },
		"a CA":                 func(c *x509.Certificate) { c.IsCA = true },
		"no basic constraints": func(c *x509.Certificate) { c.BasicConstraintsValid = false },
		"an extra extension": func(c *x509.Certificate) {
			c.ExtraExtensions = []pkix.Extension{{Id: oidExtKeyUsage, Value: []byte{3, 0}}}
		},
		"a critical cluster extension": func(c *x509.Certificate) {
			ext, _ := ClusterExtension("prod")
			ext.Critical = true
			c.ExtraExtensions = []pkix.Extension{ext}
		},
		"another EKU":  func(c *x509.Certificate) { c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageCodeSigning) },
		"a CRL point":  func(c *x509.Certificate) { c.CRLDistributionPoints = []string{"http://crl"} },
		"no SPIFFE ID": func(c *x509.Certificate) { c.URIs = nil },
		"no serial":    func(c *x509.Certificate) { c.SerialNumber = nil },
		"a signature algorithm": func(c *x509.Certificate) {
			c.SignatureAlgorithm = x509.ECDSAWithSHA384
		},
	} {
		tmpl := base()
		edit(tmpl)
		if isWorkloadLeaf(tmpl) {
			t.Errorf("a template with %s is encoded directly", name)
		}
	}
	if isWorkloadLeaf(serving) {
		t.Error("a serving template is encoded directly")
	}
}

// TestSignLeafRefusesWhatCreateCertificateRefuses: a signer that does not
// hold the issuer's key, and a name that is not IA5, yield no certificate.
func TestSignLeafRefusesWhatCreateCertificateRefuses(t *testing.T) {
	parent, _ := testCA(t, KeyECDSAP256)
	alg, _ := sigAlgFor(parent.PublicKey)
	other, err := GenerateKey(KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := GenerateKey(KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/web")
	tmpl, err := LeafTemplate(LeafRequest{SPIFFEID: id, PublicKey: sub.Public(), Now: time.Now(), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(42)
	if _, err := signLeaf(tmpl, parent, alg, sub.Public(), other); err == nil || !strings.Contains(err.Error(), "does not hold the issuer's key") {
		t.Errorf("signer with another key: %v", err)
	}
	tmpl.DNSNames = []string{"wéb.example"}
	if _, err := signLeaf(tmpl, parent, alg, sub.Public(), other); err == nil || !strings.Contains(err.Error(), "IA5String") {
		t.Errorf("non-IA5 DNS name: %v", err)
	}
}

// BenchmarkLeafEncoding signs the same P-256 workload leaf both ways, in
// one process: directly (what SignLeaf does) and through
// x509.CreateCertificate, each with the check of the new signature and the
// parse of the result.
func BenchmarkLeafEncoding(b *testing.B) {
	parent, signer := testCA(b, KeyECDSAP256)
	alg, _ := sigAlgFor(parent.PublicKey)
	sub, err := GenerateKey(KeyECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	id, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/web")
	tmpl, err := LeafTemplate(LeafRequest{SPIFFEID: id, PublicKey: sub.Public(), Now: time.Now(), TTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(42)
	tmpl.SubjectKeyId = keyID(sub.Public())
	for _, way := range []struct {
		name string
		sign func() ([]byte, error)
	}{
		{"direct", func() ([]byte, error) { return signLeaf(tmpl, parent, alg, sub.Public(), signer) }},
		{"x509.CreateCertificate", func() ([]byte, error) {
			return x509.CreateCertificate(rand.Reader, tmpl, parent, sub.Public(), signer)
		}},
	} {
		b.Run(way.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				der, err := way.sign()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := x509.ParseCertificate(der); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
