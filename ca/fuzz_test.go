package ca

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// FuzzCheckCSR feeds CheckCSR arbitrary input, as PEM text or as DER wrapped
// in a CSR PEM block. It must never panic, every refusal must wrap
// ErrInvalidRequest or ErrPermissionDenied, and an accepted CSR must name
// exactly the caller's SPIFFE ID and nothing else.
func FuzzCheckCSR(f *testing.F) {
	good := csrDER(f, keyP256(), nil)
	seeds := [][]byte{
		good,
		csrDER(f, keyRSA2048(), nil),
		csrDER(f, keyP256(), func(r *x509.CertificateRequest) {
			r.URIs = nil
			r.ExtraExtensions = []pkix.Extension{{Id: oidExtSubjectAltName, Critical: true, Value: generalNames(f, uriName(testID))}}
		}),
		csrDER(f, keyP256(), func(r *x509.CertificateRequest) {
			r.ExtraExtensions = []pkix.Extension{keyUsageExt(f, true, 0, 2), extKeyUsageExt(f, oidExtKeyUsageServerAuth, oidExtKeyUsageClientAuth)}
		}),
		csrDER(f, keyP256(), func(r *x509.CertificateRequest) { r.DNSNames = []string{"sleep.default.svc"} }),
		csrDER(f, keyP256(), func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} }),
		csrDER(f, keyP256(), func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"a@b.c"} }),
		csrDER(f, keyP256(), func(r *x509.CertificateRequest) { r.Subject.CommonName = "x" }),
		csrDER(f, keyP256(), func(r *x509.CertificateRequest) {
			r.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: mustMarshal(f, struct{ CA bool }{true})}}
		}),
		csrDER(f, keyP224(), nil),
		csrDER(f, keyEd25519(), nil),
	}
	broken := append([]byte(nil), good...)
	broken[len(broken)-1] ^= 1
	seeds = append(seeds, broken)
	for _, der := range seeds {
		f.Add(der, true)
		f.Add([]byte(pemCSR(der)), false)
	}
	for _, name := range []string{"openssl-p256.csr.pem", "dsa2048.csr.pem"} {
		f.Add([]byte(readTestdata(f, name)), false)
	}
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"), false)

	f.Fuzz(func(t *testing.T, data []byte, asDER bool) {
		in := string(data)
		if asDER {
			in = pemCSR(data)
		}
		csr, err := CheckCSR(in, testCaller, CSRPolicy{AllowEd25519: true})
		if err != nil {
			if !errors.Is(err, ErrInvalidRequest) && !errors.Is(err, ErrPermissionDenied) {
				t.Fatalf("refusal wraps no request sentinel: %v", err)
			}
			if csr != nil {
				t.Fatal("csr returned with an error")
			}
			return
		}
		if len(csr.URIs) != 1 || csr.URIs[0].String() != testID {
			t.Fatalf("accepted a csr naming %v", csr.URIs)
		}
		if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
			t.Fatalf("accepted a csr with dns %v, ip %v, email %v", csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
		}
		if len(csr.Subject.Names) != 0 {
			t.Fatalf("accepted a csr with subject %s", csr.Subject)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a csr whose signature does not verify: %v", err)
		}
	})
}

// FuzzJWT feeds the JWT authenticator arbitrary tokens. It must never panic,
// every refusal must wrap ErrUnauthenticated, and nothing but the one valid
// token minted here may ever authenticate: a mutated token never does. The
// token is RS256 from a fixed key at a fixed time, so every fuzz worker mints
// the same one.
func FuzzJWT(f *testing.F) {
	e := newJWTEnv(f)
	valid, err := e.minter.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	parts := strings.Split(valid, ".")
	f.Add(valid)
	f.Add(valid + "=")
	f.Add(valid[:len(valid)-1])
	f.Add(parts[0] + "." + parts[1] + ".")
	f.Add(b64(map[string]string{"alg": "none"}) + "." + parts[1] + ".")
	f.Add(b64(map[string]string{"alg": "HS256", "kid": "rsa-1"}) + "." + parts[1] + "." + parts[2])
	f.Add(b64(map[string]string{"alg": "RS256", "kid": "rsa-1", "jku": "https://evil.example/jwks"}) + "." + parts[1] + "." + parts[2])
	f.Add(parts[0] + "." + b64(claims()) + "." + parts[2])
	f.Add("a.b.c.d.e")
	f.Add("..")
	f.Add("")

	f.Fuzz(func(t *testing.T, token string) {
		caller, err := e.auth.Authenticate(context.Background(), Credentials{Token: token})
		if err != nil {
			if !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("refusal does not wrap ErrUnauthenticated: %v", err)
			}
			return
		}
		if token != valid {
			t.Fatalf("accepted a token other than the one valid token: %q", token)
		}
		if caller.SPIFFEID != testID {
			t.Fatalf("token authenticated as %s", caller.SPIFFEID)
		}
	})
}
