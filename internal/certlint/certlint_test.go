package certlint_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/certlint"
)

// recorder is a testing.TB that keeps what Check reports.
type recorder struct {
	testing.TB
	errors []string
	fatal  bool
}

func (r *recorder) Helper()             {}
func (r *recorder) Logf(string, ...any) {}
func (r *recorder) Errorf(f string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(f, args...))
}
func (r *recorder) Fatalf(f string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(f, args...))
	r.fatal = true
}

// issue makes a CA and a SPIFFE leaf under it; edit changes the leaf
// template before it is signed.
func issue(t *testing.T, edit func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA", Organization: []string{"test"}},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		SubjectKeyId: []byte{1, 2, 3, 4},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id, _ := url.Parse("spiffe://cluster.local/ns/a/sa/b")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), URIs: []*url.URL{id},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, SubjectKeyId: []byte{5, 6, 7, 8},
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCheck(t *testing.T) {
	cases := []struct {
		name string
		edit func(*x509.Certificate)
		want string // a lint that must be reported; "" for none
	}{
		// A SPIFFE leaf breaks many CA/Browser Forum rules (URI SAN, no
		// certificate policies, no AIA): none of them fails the test.
		{"spiffe leaf passes", nil, ""},
		{"RFC 5280 warning fails", func(c *x509.Certificate) { c.SubjectKeyId = nil }, "w_ext_subject_key_identifier_missing_sub_cert"},
		{"RFC 5280 error fails", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }, "e_ext_key_usage_cert_sign_without_ca"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{TB: t}
			certlint.Check(r, issue(t, tc.edit))
			got := strings.Join(r.errors, "\n")
			switch {
			case tc.want == "" && len(r.errors) > 0:
				t.Fatalf("Check failed a good certificate:\n%s", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Fatalf("Check did not report %s; it reported:\n%s", tc.want, got)
			}
		})
	}
}
