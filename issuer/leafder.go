package issuer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"reflect"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// A workload leaf is the same few fields every time, so it is encoded here
// directly, byte for byte as x509.CreateCertificate encodes it (the tests
// compare the two), without encoding/asn1's reflection. It is then signed,
// and the signature is checked under the issuer's public key before the
// certificate is returned, as x509.CreateCertificate does. Any template
// with more than a workload leaf's fields goes to x509.CreateCertificate.

// Object identifiers of what a leaf carries.
var (
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidECDSAWithSHA512 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}
	oidSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidEd25519         = asn1.ObjectIdentifier{1, 3, 101, 112}

	oidExtKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtSubjectKeyID     = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidExtAuthorityKeyID   = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}

	oidServerAuth = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidClientAuth = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

// leafSigAlg is how an issuer key signs: the algorithm identifier and the
// digest (0 for Ed25519, which signs the message itself).
type leafSigAlg struct {
	oid  asn1.ObjectIdentifier
	null bool // parameters NULL (RSA), else absent
	hash crypto.Hash
}

// sigAlgFor returns the algorithm x509.CreateCertificate picks for an
// issuer key, and false for keys it does not cover.
func sigAlgFor(pub crypto.PublicKey) (leafSigAlg, bool) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return leafSigAlg{oid: oidECDSAWithSHA256, hash: crypto.SHA256}, true
		case elliptic.P384():
			return leafSigAlg{oid: oidECDSAWithSHA384, hash: crypto.SHA384}, true
		case elliptic.P521():
			return leafSigAlg{oid: oidECDSAWithSHA512, hash: crypto.SHA512}, true
		}
	case *rsa.PublicKey:
		return leafSigAlg{oid: oidSHA256WithRSA, null: true, hash: crypto.SHA256}, true
	case ed25519.PublicKey:
		return leafSigAlg{oid: oidEd25519}, true
	}
	return leafSigAlg{}, false
}

// isWorkloadLeaf reports whether t holds nothing but what this file
// encodes: an empty subject, URI and DNS SANs, validity, key usage, the
// server and client auth extended key usages, basic constraints of a
// non-CA, a subject key identifier, a serial and the cluster extension.
func isWorkloadLeaf(t *x509.Certificate) bool {
	c := *t
	c.SerialNumber, c.NotBefore, c.NotAfter, c.KeyUsage = nil, time.Time{}, time.Time{}, 0
	c.URIs, c.DNSNames, c.SubjectKeyId, c.ExtKeyUsage = nil, nil, nil, nil
	for _, e := range t.ExtraExtensions {
		if !e.Id.Equal(OIDCluster) || e.Critical {
			return false
		}
	}
	c.ExtraExtensions = nil
	if !c.BasicConstraintsValid || c.IsCA || t.SerialNumber == nil || t.SerialNumber.Sign() <= 0 || len(t.URIs) == 0 {
		return false
	}
	c.BasicConstraintsValid = false
	for _, u := range t.ExtKeyUsage {
		if u != x509.ExtKeyUsageServerAuth && u != x509.ExtKeyUsageClientAuth {
			return false
		}
	}
	return reflect.DeepEqual(c, x509.Certificate{})
}

// encodeLeafTBS returns the DER TBSCertificate of a workload leaf t for
// the subject public key spki (DER SubjectPublicKeyInfo), issued by parent
// with algorithm alg.
func encodeLeafTBS(t, parent *x509.Certificate, spki []byte, alg leafSigAlg) ([]byte, error) {
	for _, n := range t.DNSNames {
		if err := checkIA5(n); err != nil {
			return nil, err
		}
	}
	uris := make([]string, len(t.URIs))
	for i, u := range t.URIs {
		uris[i] = u.String()
		if err := checkIA5(uris[i]); err != nil {
			return nil, err
		}
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddASN1Int64(2) })
		b.AddASN1BigInt(t.SerialNumber)
		addSigAlg(b, alg)
		b.AddBytes(parent.RawSubject)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, t.NotBefore)
			addTime(b, t.NotAfter)
		})
		b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) // empty subject
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				addLeafExtensions(b, t, parent, uris)
			})
		})
	})
	return b.Bytes()
}

// addLeafExtensions adds the extensions in x509.CreateCertificate's order.
func addLeafExtensions(b *cryptobyte.Builder, t, parent *x509.Certificate, uris []string) {
	if t.KeyUsage != 0 {
		addExtension(b, oidExtKeyUsage, true, func(b *cryptobyte.Builder) { addKeyUsage(b, t.KeyUsage) })
	}
	if len(t.ExtKeyUsage) > 0 {
		addExtension(b, oidExtExtKeyUsage, false, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for _, u := range t.ExtKeyUsage {
					if u == x509.ExtKeyUsageServerAuth {
						b.AddASN1ObjectIdentifier(oidServerAuth)
					} else {
						b.AddASN1ObjectIdentifier(oidClientAuth)
					}
				}
			})
		})
	}
	// A non-CA with no path length: an empty SEQUENCE.
	addExtension(b, oidExtBasicConstraints, true, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {})
	})
	if len(t.SubjectKeyId) > 0 {
		addExtension(b, oidExtSubjectKeyID, false, func(b *cryptobyte.Builder) { b.AddASN1OctetString(t.SubjectKeyId) })
	}
	if len(parent.SubjectKeyId) > 0 {
		addExtension(b, oidExtAuthorityKeyID, false, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(parent.SubjectKeyId) })
			})
		})
	}
	// RFC 5280 4.2.1.6: with an empty subject, the SAN extension is
	// critical.
	addExtension(b, oidExtSubjectAltName, true, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			for _, n := range t.DNSNames {
				b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(n)) })
			}
			for _, u := range uris {
				b.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(u)) })
			}
		})
	})
	// x509.CreateCertificate appends ExtraExtensions last, as given.
	for _, e := range t.ExtraExtensions {
		addExtension(b, e.Id, e.Critical, func(b *cryptobyte.Builder) { b.AddBytes(e.Value) })
	}
}

func addExtension(b *cryptobyte.Builder, oid asn1.ObjectIdentifier, critical bool, value cryptobyte.BuilderContinuation) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if critical {
			b.AddASN1Boolean(true)
		}
		b.AddASN1(cbasn1.OCTET_STRING, value)
	})
}

// addKeyUsage adds ku as the shortest BIT STRING that holds its bits, bit 0
// (digitalSignature) first, as RFC 5280 4.2.1.3 and encoding/asn1 do.
func addKeyUsage(b *cryptobyte.Builder, ku x509.KeyUsage) {
	bits := []byte{reverseBits(byte(ku)), reverseBits(byte(ku >> 8))}
	if bits[1] == 0 {
		bits = bits[:1]
	}
	last := bits[len(bits)-1]
	unused := byte(0)
	for last&1 == 0 {
		last >>= 1
		unused++
	}
	b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
		b.AddUint8(unused)
		b.AddBytes(bits)
	})
}

func reverseBits(x byte) byte {
	var r byte
	for range 8 {
		r = r<<1 | x&1
		x >>= 1
	}
	return r
}

func addSigAlg(b *cryptobyte.Builder, alg leafSigAlg) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(alg.oid)
		if alg.null {
			b.AddASN1NULL()
		}
	})
}

// addTime adds t as UTCTime before 2050 and GeneralizedTime from then on
// (RFC 5280 4.1.2.5), to the second, in UTC.
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC().Truncate(time.Second)
	if y := t.Year(); y >= 1950 && y < 2050 {
		b.AddASN1UTCTime(t)
		return
	}
	b.AddASN1GeneralizedTime(t)
}

func checkIA5(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return fmt.Errorf("x509: %q cannot be encoded as an IA5String", s)
		}
	}
	return nil
}

// signLeaf encodes the workload leaf t, signs it with signer for parent
// with alg (sigAlgFor of parent's key) and checks the signature under
// parent's public key, which signer must hold.
func signLeaf(t, parent *x509.Certificate, alg leafSigAlg, pub crypto.PublicKey, signer crypto.Signer) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	tbs, err := encodeLeafTBS(t, parent, spki, alg)
	if err != nil {
		return nil, err
	}
	signed := tbs
	var opts crypto.SignerOpts = crypto.Hash(0)
	if alg.hash != 0 {
		d := alg.hash.New()
		d.Write(tbs)
		signed, opts = d.Sum(nil), alg.hash
	}
	sig, err := signer.Sign(rand.Reader, signed, opts)
	if err != nil {
		return nil, err
	}
	if err := checkLeafSignature(parent.PublicKey, alg, signed, sig); err != nil {
		return nil, err
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		addSigAlg(b, alg)
		b.AddASN1BitString(sig)
	})
	return b.Bytes()
}

// checkLeafSignature checks that sig, made over signed (a digest, or the
// message for Ed25519), verifies under the issuer's key: a signer that
// misbehaved, or signed with another key, yields no certificate.
func checkLeafSignature(pub crypto.PublicKey, alg leafSigAlg, signed, sig []byte) error {
	ok := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, signed, sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(k, alg.hash, signed, sig) == nil
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, signed, sig)
	}
	if !ok {
		return errors.New("x509: signature over certificate returned by signer is invalid: the signer does not hold the issuer's key")
	}
	return nil
}
