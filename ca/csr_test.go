package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// testCaller is the authenticated workload the CSR tests ask for.
var testCaller = &Caller{SPIFFEID: testID, Namespace: "default", ServiceAccount: "sleep", ClusterID: DefaultCluster, Method: AuthJWT}

// Test keys, made once: RSA generation is slow.
var (
	keyP256    = sync.OnceValue(func() crypto.Signer { return mustEC(elliptic.P256()) })
	keyP384    = sync.OnceValue(func() crypto.Signer { return mustEC(elliptic.P384()) })
	keyP224    = sync.OnceValue(func() crypto.Signer { return mustEC(elliptic.P224()) })
	keyP521    = sync.OnceValue(func() crypto.Signer { return mustEC(elliptic.P521()) })
	keyRSA1024 = sync.OnceValue(func() crypto.Signer { return mustRSAKey(1024) })
	keyRSA2048 = sync.OnceValue(func() crypto.Signer { return mustRSAKey(2048) })
	keyRSA4096 = sync.OnceValue(func() crypto.Signer { return mustRSAKey(4096) })
	keyRSAE3   = sync.OnceValue(func() crypto.Signer { return rsaKeyWithExponent3(2048) })
	keyEd25519 = sync.OnceValue(func() crypto.Signer {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func mustEC(c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

func mustRSAKey(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

// rsaKeyWithExponent3 builds an RSA key with e = 3, which rsa.GenerateKey
// never makes.
func rsaKeyWithExponent3(bits int) *rsa.PrivateKey {
	e, one := big.NewInt(3), big.NewInt(1)
	for {
		p, err := rand.Prime(rand.Reader, bits/2)
		if err != nil {
			panic(err)
		}
		q, err := rand.Prime(rand.Reader, bits/2)
		if err != nil {
			panic(err)
		}
		n := new(big.Int).Mul(p, q)
		phi := new(big.Int).Mul(new(big.Int).Sub(p, one), new(big.Int).Sub(q, one))
		d := new(big.Int).ModInverse(e, phi)
		if d == nil || n.BitLen() != bits {
			continue
		}
		k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: 3}, D: d, Primes: []*big.Int{p, q}}
		k.Precompute()
		return k
	}
}

// csrDER makes a CSR for testID with key; edit changes the template.
func csrDER(t testing.TB, key crypto.Signer, edit func(r *x509.CertificateRequest)) []byte {
	t.Helper()
	u, err := url.Parse(testID)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{u}}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemCSR(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func makeCSR(t testing.TB, key crypto.Signer, edit func(r *x509.CertificateRequest)) string {
	t.Helper()
	return pemCSR(csrDER(t, key, edit))
}

// rawCSR is the outer CertificationRequest of RFC 2986.
type rawCSR struct {
	TBS    asn1.RawValue
	SigAlg pkix.AlgorithmIdentifier
	Sig    asn1.BitString
}

var (
	oidECDSAWithSHA1   = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 1}
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
)

// rebuildCSR takes a P-256 CSR apart, lets edit change its request info,
// and signs it again with key (P-256) using SHA-256, or SHA-1 if sha1Sig.
// It makes the CSRs crypto/x509 refuses to create.
func rebuildCSR(t testing.TB, der []byte, key crypto.Signer, sha1Sig bool, edit func(tbs *tbsCSR)) string {
	t.Helper()
	var outer rawCSR
	if _, err := asn1.Unmarshal(der, &outer); err != nil {
		t.Fatal(err)
	}
	var tbs tbsCSR
	if _, err := asn1.Unmarshal(outer.TBS.FullBytes, &tbs); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(&tbs)
	}
	tbsDER, err := asn1.Marshal(tbs)
	if err != nil {
		t.Fatal(err)
	}
	var digest []byte
	hash, alg := crypto.SHA256, oidECDSAWithSHA256
	if sha1Sig {
		sum := sha1.Sum(tbsDER)
		digest, hash, alg = sum[:], crypto.SHA1, oidECDSAWithSHA1
	} else {
		sum := sha256.Sum256(tbsDER)
		digest = sum[:]
	}
	sig, err := key.Sign(rand.Reader, digest, hash)
	if err != nil {
		t.Fatal(err)
	}
	out, err := asn1.Marshal(rawCSR{
		TBS:    asn1.RawValue{FullBytes: tbsDER},
		SigAlg: pkix.AlgorithmIdentifier{Algorithm: alg},
		Sig:    asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return pemCSR(out)
}

// attribute marshals a PKCS #10 attribute for tbsCSR.Attributes.
func attribute(t testing.TB, oid asn1.ObjectIdentifier, values ...asn1.RawValue) asn1.RawValue {
	t.Helper()
	der, err := asn1.Marshal(csrAttribute{Type: oid, Values: values})
	if err != nil {
		t.Fatal(err)
	}
	return asn1.RawValue{FullBytes: der}
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	der, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// generalNames marshals a SAN extension value from context-tagged names.
func generalNames(t testing.TB, names ...asn1.RawValue) []byte {
	t.Helper()
	var body []byte
	for _, n := range names {
		body = append(body, mustMarshal(t, n)...)
	}
	return mustMarshal(t, asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: body})
}

func uriName(s string) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: sanURI, Bytes: []byte(s)}
}

func otherName(t testing.TB) asn1.RawValue {
	t.Helper()
	// UPN otherName, as Active Directory puts in certificates.
	body := mustMarshal(t, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3})
	body = append(body, mustMarshal(t, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true,
		Bytes: mustMarshal(t, asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagUTF8String, Bytes: []byte("admin@corp")})})...)
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: sanOtherName, IsCompound: true, Bytes: body}
}

func readTestdata(t testing.TB, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func keyUsageExt(t testing.TB, critical bool, bits ...int) pkix.Extension {
	t.Helper()
	var b [2]byte
	n := 0
	for _, bit := range bits {
		b[bit/8] |= 0x80 >> (bit % 8)
		n = max(n, bit+1)
	}
	return pkix.Extension{Id: oidExtKeyUsage, Critical: critical,
		Value: mustMarshal(t, asn1.BitString{Bytes: b[:(n+7)/8], BitLength: n})}
}

func extKeyUsageExt(t testing.TB, oids ...asn1.ObjectIdentifier) pkix.Extension {
	t.Helper()
	return pkix.Extension{Id: oidExtExtendedKeyUsage, Value: mustMarshal(t, oids)}
}

func TestCheckCSR(t *testing.T) {
	sanExt := func(t testing.TB, critical bool, names ...asn1.RawValue) pkix.Extension {
		return pkix.Extension{Id: oidExtSubjectAltName, Critical: critical, Value: generalNames(t, names...)}
	}
	uris := func(t testing.TB, ss ...string) func(r *x509.CertificateRequest) {
		return func(r *x509.CertificateRequest) {
			r.URIs = nil
			for _, s := range ss {
				u, err := url.Parse(s)
				if err != nil {
					t.Fatal(err)
				}
				r.URIs = append(r.URIs, u)
			}
		}
	}
	tests := []struct {
		name       string
		csr        func(t *testing.T) string
		policy     CSRPolicy
		wantErr    error
		wantSubstr string
	}{
		// Accepted.
		{name: "ecdsa p-256", csr: func(t *testing.T) string { return makeCSR(t, keyP256(), nil) }},
		{name: "ecdsa p-384 with sha-384", csr: func(t *testing.T) string {
			return makeCSR(t, keyP384(), func(r *x509.CertificateRequest) { r.SignatureAlgorithm = x509.ECDSAWithSHA384 })
		}},
		{name: "rsa 2048", csr: func(t *testing.T) string { return makeCSR(t, keyRSA2048(), nil) }},
		{name: "rsa 2048 pss", csr: func(t *testing.T) string {
			return makeCSR(t, keyRSA2048(), func(r *x509.CertificateRequest) { r.SignatureAlgorithm = x509.SHA256WithRSAPSS })
		}},
		{name: "rsa 4096", csr: func(t *testing.T) string { return makeCSR(t, keyRSA4096(), nil) }},
		{name: "ed25519 when allowed", policy: CSRPolicy{AllowEd25519: true},
			csr: func(t *testing.T) string { return makeCSR(t, keyEd25519(), nil) }},
		{name: "istio-agent style: empty organization", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) { r.Subject = pkix.Name{Organization: []string{""}} })
		}},
		{name: "organization with a value", wantErr: ErrInvalidRequest, wantSubstr: "csr subject must be empty, got O=Evil Corp",
			csr: func(t *testing.T) string {
				return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) { r.Subject = pkix.Name{Organization: []string{"Evil Corp"}} })
			}},
		{name: "istio style: critical san, empty subject", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) {
				r.URIs = nil
				r.ExtraExtensions = []pkix.Extension{sanExt(t, true, uriName(testID))}
			})
		}},
		{name: "key usage and ext key usage", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) {
				r.ExtraExtensions = []pkix.Extension{
					keyUsageExt(t, true, 0, 2),
					extKeyUsageExt(t, oidExtKeyUsageServerAuth, oidExtKeyUsageClientAuth),
				}
			})
		}},
		{name: "allowed dns names", policy: CSRPolicy{AllowedDNSNames: []string{"sleep.default.svc", "*.sleep.example.com"}},
			csr: func(t *testing.T) string {
				return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) {
					r.DNSNames = []string{"sleep.default.svc", "*.sleep.example.com"}
				})
			}},
		{name: "new certificate request pem type", csr: func(t *testing.T) string {
			return string(pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: csrDER(t, keyP256(), nil)}))
		}},
		{name: "whitespace around the block", csr: func(t *testing.T) string {
			return "\n\t " + makeCSR(t, keyP256(), nil) + "\r\n\n"
		}},
		{name: "openssl p-256", csr: func(t *testing.T) string { return readTestdata(t, "openssl-p256.csr.pem") }},

		// Size and PEM framing.
		{name: "larger than the policy", policy: CSRPolicy{MaxBytes: 300},
			csr:     func(t *testing.T) string { return makeCSR(t, keyP256(), nil) },
			wantErr: ErrInvalidRequest, wantSubstr: "more than the 300 allowed"},
		{name: "larger than the default", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), nil) + strings.Repeat(" ", DefaultMaxCSRBytes)
		}, wantErr: ErrInvalidRequest, wantSubstr: "more than the 8192 allowed"},
		{name: "empty", csr: func(t *testing.T) string { return " \n" },
			wantErr: ErrInvalidRequest, wantSubstr: "csr is empty"},
		{name: "bare der", csr: func(t *testing.T) string { return string(csrDER(t, keyP256(), nil)) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr is not pem"},
		{name: "text before the block", csr: func(t *testing.T) string { return "Certificate Request:\n" + makeCSR(t, keyP256(), nil) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr is not pem"},
		{name: "text after the block", csr: func(t *testing.T) string { return makeCSR(t, keyP256(), nil) + "garbage" },
			wantErr: ErrInvalidRequest, wantSubstr: "7 bytes of trailing data after its pem block"},
		{name: "two blocks", csr: func(t *testing.T) string { return makeCSR(t, keyP256(), nil) + makeCSR(t, keyP256(), nil) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr holds 2 pem blocks, expected one"},
		{name: "broken block hiding a good one", csr: func(t *testing.T) string {
			return "-----BEGIN CERTIFICATE REQUEST-----\n!!!\n" + makeCSR(t, keyP256(), nil)
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr holds 2 pem blocks"},
		{name: "unterminated block", csr: func(t *testing.T) string { return "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n" },
			wantErr: ErrInvalidRequest, wantSubstr: "csr is not a well-formed pem block"},
		{name: "certificate instead of csr", csr: func(t *testing.T) string {
			return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: csrDER(t, keyP256(), nil)}))
		}, wantErr: ErrInvalidRequest, wantSubstr: `csr pem block is a "CERTIFICATE"`},
		{name: "pem headers", csr: func(t *testing.T) string {
			return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"},
				Bytes: csrDER(t, keyP256(), nil)}))
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr pem block has headers"},
		{name: "not der", csr: func(t *testing.T) string { return pemCSR([]byte("this is not asn.1")) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr does not parse"},
		{name: "trailing der", csr: func(t *testing.T) string { return pemCSR(append(csrDER(t, keyP256(), nil), 0)) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr does not parse"},

		// Structure and signature.
		{name: "broken signature", csr: func(t *testing.T) string {
			der := csrDER(t, keyP256(), nil)
			der[len(der)-1] ^= 0x01
			return pemCSR(der)
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr signature is invalid"},
		{name: "signed by another key", csr: func(t *testing.T) string {
			return rebuildCSR(t, csrDER(t, keyP256(), nil), mustEC(elliptic.P256()), false, nil)
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr signature is invalid"},
		{name: "sha-1 signature", csr: func(t *testing.T) string {
			return rebuildCSR(t, csrDER(t, keyP256(), nil), keyP256(), true, nil)
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr is signed with ECDSA-SHA1, which is not allowed"},
		{name: "version 2", csr: func(t *testing.T) string {
			return rebuildCSR(t, csrDER(t, keyP256(), nil), keyP256(), false, func(tbs *tbsCSR) { tbs.Version = 1 })
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr version is 1, expected 0 (v1)"},
		{name: "challenge password", csr: func(t *testing.T) string {
			return rebuildCSR(t, csrDER(t, keyP256(), nil), keyP256(), false, func(tbs *tbsCSR) {
				tbs.Attributes = append(tbs.Attributes, attribute(t, asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7},
					asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagPrintableString, Bytes: []byte("hunter2")}))
			})
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr carries the attribute 1.2.840.113549.1.9.7 (challengePassword)"},
		{name: "second extension request", csr: func(t *testing.T) string {
			return rebuildCSR(t, csrDER(t, keyP256(), nil), keyP256(), false, func(tbs *tbsCSR) {
				exts := mustMarshal(t, []pkix.Extension{keyUsageExt(t, true, 0)})
				tbs.Attributes = append(tbs.Attributes, attribute(t, oidExtensionRequest, asn1.RawValue{FullBytes: exts}))
			})
		}, wantErr: ErrInvalidRequest, wantSubstr: "more than one extensionRequest attribute"},
		{name: "extension request with two values", csr: func(t *testing.T) string {
			return rebuildCSR(t, csrDER(t, keyP256(), nil), keyP256(), false, func(tbs *tbsCSR) {
				first := mustMarshal(t, []pkix.Extension{{Id: oidExtSubjectAltName, Value: generalNames(t, uriName(testID))}})
				hidden := mustMarshal(t, []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: mustMarshal(t, struct{ CA bool }{true})}})
				tbs.Attributes = []asn1.RawValue{attribute(t, oidExtensionRequest, asn1.RawValue{FullBytes: first}, asn1.RawValue{FullBytes: hidden})}
			})
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr extensionRequest has 2 values, expected one"},

		// Keys.
		{name: "ecdsa p-224", csr: func(t *testing.T) string { return makeCSR(t, keyP224(), nil) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr key is ECDSA P-224; allowed keys: ECDSA P-256 or P-384"},
		{name: "ecdsa p-521", csr: func(t *testing.T) string { return makeCSR(t, keyP521(), nil) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr key is ECDSA P-521"},
		{name: "rsa 1024", csr: func(t *testing.T) string { return makeCSR(t, keyRSA1024(), nil) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr key is RSA-1024"},
		{name: "rsa 8192", csr: func(t *testing.T) string { return readTestdata(t, "rsa8192.csr.pem") },
			wantErr: ErrInvalidRequest, wantSubstr: "csr key is RSA-8192"},
		{name: "rsa exponent 3", csr: func(t *testing.T) string { return makeCSR(t, keyRSAE3(), nil) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr key is RSA-2048 with exponent 3"},
		{name: "dsa", csr: func(t *testing.T) string { return readTestdata(t, "dsa2048.csr.pem") },
			wantErr: ErrInvalidRequest, wantSubstr: "csr key is DSA"},
		{name: "ed25519 not allowed", csr: func(t *testing.T) string { return makeCSR(t, keyEd25519(), nil) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr key is Ed25519"},

		// Subject.
		{name: "common name", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) { r.Subject.CommonName = "sleep.default" })
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr subject must be empty, got CN=sleep.default"},
		{name: "organization", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) { r.Subject.Organization = []string{"cluster.local"} })
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr subject must be empty, got O=cluster.local"},
		{name: "unusual subject attribute", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) {
				r.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}, Value: "sleep"}}
			})
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr subject must be empty, got 0.9.2342.19200300.100.1.1=#130573"},

		// Extensions.
		{name: "basic constraints ca true", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) {
				r.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: mustMarshal(t, struct{ CA bool }{true})}}
			})
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr requests extension 2.5.29.19 (basicConstraints)"},
		{name: "unknown extension", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) {
				r.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: []byte{5, 0}}}
			})
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr requests extension 1.3.6.1.4.1.99999.1; only subjectAltName"},
		{name: "key usage certificate signing", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) {
				r.ExtraExtensions = []pkix.Extension{keyUsageExt(t, true, 0, 5)}
			})
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr requests key usage keyCertSign, which only a ca may have"},
		{name: "key usage crl signing", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) {
				r.ExtraExtensions = []pkix.Extension{keyUsageExt(t, true, 6)}
			})
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr requests key usage cRLSign"},
		{name: "code signing", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) {
				r.ExtraExtensions = []pkix.Extension{extKeyUsageExt(t, oidExtKeyUsageClientAuth, asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 3})}
			})
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr requests extended key usage 1.3.6.1.5.5.7.3.3"},

		// Names.
		{name: "no san at all", csr: func(t *testing.T) string { return makeCSR(t, keyP256(), uris(t)) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr has no subject alternative names; it must name " + testID},
		{name: "dns only", policy: CSRPolicy{AllowedDNSNames: []string{"sleep.default.svc"}}, csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) { r.URIs, r.DNSNames = nil, []string{"sleep.default.svc"} })
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr has no uri san; it must name " + testID},
		{name: "another service's identity", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), uris(t, "spiffe://cluster.local/ns/kube-system/sa/admin"))
		}, wantErr: ErrPermissionDenied, wantSubstr: `csr asks for the uri "spiffe://cluster.local/ns/kube-system/sa/admin", but the caller is ` + testID},
		{name: "same names in another trust domain", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), uris(t, "spiffe://evil.example/ns/default/sa/sleep"))
		}, wantErr: ErrPermissionDenied, wantSubstr: `"spiffe://evil.example/ns/default/sa/sleep"`},
		{name: "case variant of own id", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), uris(t, "spiffe://cluster.local/ns/default/sa/Sleep"))
		}, wantErr: ErrPermissionDenied, wantSubstr: `"spiffe://cluster.local/ns/default/sa/Sleep"`},
		{name: "own id plus another", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), uris(t, testID, "spiffe://cluster.local/ns/default/sa/admin"))
		}, wantErr: ErrPermissionDenied, wantSubstr: `csr asks for the uri "spiffe://cluster.local/ns/default/sa/admin"`},
		{name: "own id twice", csr: func(t *testing.T) string { return makeCSR(t, keyP256(), uris(t, testID, testID)) },
			wantErr: ErrInvalidRequest, wantSubstr: "csr lists the uri \"" + testID + "\" 2 times"},
		{name: "dns name not allowed", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) { r.DNSNames = []string{"evil.example.com"} })
		}, wantErr: ErrPermissionDenied, wantSubstr: `csr asks for the dns name "evil.example.com", which ` + testID + " may not request"},
		{name: "wildcard not listed literally", policy: CSRPolicy{AllowedDNSNames: []string{"a.example.com"}}, csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) { r.DNSNames = []string{"*.example.com"} })
		}, wantErr: ErrPermissionDenied, wantSubstr: `the dns name "*.example.com"`},
		{name: "pattern does not match names", policy: CSRPolicy{AllowedDNSNames: []string{"*.example.com"}}, csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) { r.DNSNames = []string{"a.example.com"} })
		}, wantErr: ErrPermissionDenied, wantSubstr: `the dns name "a.example.com"`},
		{name: "ip address", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.ParseIP("10.0.0.1")} })
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr asks for the ip address 10.0.0.1; ip sans are not allowed"},
		{name: "email address", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"sleep@example.com"} })
		}, wantErr: ErrInvalidRequest, wantSubstr: `csr asks for the email address "sleep@example.com"; email sans are not allowed`},
		{name: "other name", csr: func(t *testing.T) string {
			return makeCSR(t, keyP256(), func(r *x509.CertificateRequest) {
				r.ExtraExtensions = []pkix.Extension{sanExt(t, false, uriName(testID), otherName(t))}
			})
		}, wantErr: ErrInvalidRequest, wantSubstr: "csr asks for a otherName san; only uri and dns sans are allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			csr, err := CheckCSR(tc.csr(t), testCaller, tc.policy)
			checkErr(t, err, tc.wantErr, tc.wantSubstr)
			if tc.wantErr != nil {
				if csr != nil {
					t.Fatal("CheckCSR returned a csr with an error")
				}
				return
			}
			if len(csr.URIs) != 1 || csr.URIs[0].String() != testID {
				t.Fatalf("accepted csr names %v", csr.URIs)
			}
		})
	}
}

func TestCheckCSRWithoutCaller(t *testing.T) {
	csr := makeCSR(t, keyP256(), nil)
	for _, c := range []*Caller{nil, {}} {
		if _, err := CheckCSR(csr, c, CSRPolicy{}); err == nil || wrapsSentinel(err) {
			t.Fatalf("CheckCSR without a caller: %v; want an internal error", err)
		}
	}
}
