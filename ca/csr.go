package ca

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
)

// DefaultMaxCSRBytes is the largest PEM CSR accepted unless a policy says
// otherwise. An RSA-4096 CSR with a SPIFFE ID is about 1.7 KiB.
const DefaultMaxCSRBytes = 8 << 10

// CSRPolicy is what a caller's CSR may ask for beyond its SPIFFE ID.
type CSRPolicy struct {
	// MaxBytes bounds the PEM text. Zero means DefaultMaxCSRBytes.
	MaxBytes int
	// AllowEd25519 admits Ed25519 keys.
	AllowEd25519 bool
	// AllowedDNSNames are the DNS SANs this identity may ask for, matched
	// exactly: a "*.example.com" pattern is allowed only if it is listed
	// as such.
	AllowedDNSNames []string
}

// Object identifiers CheckCSR knows.
var (
	oidExtensionRequest      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 14}
	oidExtSubjectAltName     = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtKeyUsage           = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtendedKeyUsage   = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtKeyUsageServerAuth = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidExtKeyUsageClientAuth = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

// csrSignatureAlgorithms are the signature algorithms a CSR may use: no MD5,
// no SHA-1.
var csrSignatureAlgorithms = []x509.SignatureAlgorithm{
	x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA,
	x509.SHA256WithRSAPSS, x509.SHA384WithRSAPSS, x509.SHA512WithRSAPSS,
	x509.ECDSAWithSHA256, x509.ECDSAWithSHA384, x509.ECDSAWithSHA512,
	x509.PureEd25519,
}

// maxBytes is MaxBytes or its default.
func (p CSRPolicy) maxBytes() int {
	if p.MaxBytes <= 0 {
		return DefaultMaxCSRBytes
	}
	return p.MaxBytes
}

// CheckCSR parses a PEM CSR and checks it against the caller's identity.
//
// The CSR must be one "CERTIFICATE REQUEST" (or "NEW CERTIFICATE REQUEST")
// PEM block of at most p.MaxBytes, with nothing but whitespace around it. It
// must be a version 1 PKCS #10 request whose only attribute is one
// extensionRequest; carry an ECDSA P-256/P-384 key, an RSA key of 2048 to
// 4096 bits with exponent 65537, or (if allowed) an Ed25519 key; be signed
// with SHA-256 or stronger, and the signature must verify; have an empty
// subject; request only the SAN, keyUsage and extKeyUsage extensions, with
// no CA key usage and no extended key usage but serverAuth and clientAuth;
// and name exactly one URI SAN, the caller's SPIFFE ID, plus only DNS SANs
// listed in p.AllowedDNSNames: no IP, email or other kinds of name.
//
// A request for a name that belongs to someone else wraps
// ErrPermissionDenied; every other failure wraps ErrInvalidRequest.
func CheckCSR(csrPEM string, caller *Caller, p CSRPolicy) (*x509.CertificateRequest, error) {
	if caller == nil || caller.SPIFFEID == "" {
		return nil, errors.New("check csr: no authenticated caller")
	}
	maxBytes := p.maxBytes()
	if len(csrPEM) > maxBytes {
		return nil, fmt.Errorf("%w: csr is %d bytes, more than the %d allowed", ErrInvalidRequest, len(csrPEM), maxBytes)
	}
	der, err := decodeCSRPEM(csrPEM)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: csr does not parse: %w", ErrInvalidRequest, err)
	}
	if err := checkCSRAttributes(csr); err != nil {
		return nil, err
	}
	if err := checkCSRKey(csr, p.AllowEd25519); err != nil {
		return nil, err
	}
	if !slices.Contains(csrSignatureAlgorithms, csr.SignatureAlgorithm) {
		return nil, fmt.Errorf("%w: csr is signed with %s, which is not allowed", ErrInvalidRequest, csr.SignatureAlgorithm)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: csr signature is invalid: %w", ErrInvalidRequest, err)
	}
	if err := checkCSRSubject(csr); err != nil {
		return nil, err
	}
	// The subject is empty, so a critical SAN extension is right (RFC 5280,
	// 4.2.1.6) and a non-critical one harmless: criticality is not checked.
	var san []byte
	for _, ext := range csr.Extensions {
		switch {
		case ext.Id.Equal(oidExtSubjectAltName):
			san = ext.Value
		case ext.Id.Equal(oidExtKeyUsage):
			if err := checkKeyUsage(ext.Value); err != nil {
				return nil, err
			}
		case ext.Id.Equal(oidExtExtendedKeyUsage):
			if err := checkExtKeyUsage(ext.Value); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%w: csr requests extension %s%s; only subjectAltName (2.5.29.17), keyUsage (2.5.29.15) and extKeyUsage (2.5.29.37) are allowed",
				ErrInvalidRequest, clip(ext.Id), extensionName(ext.Id))
		}
	}
	if san == nil {
		return nil, fmt.Errorf("%w: csr has no subject alternative names; it must name %s", ErrInvalidRequest, caller.SPIFFEID)
	}
	if err := checkSANs(san, caller, p.AllowedDNSNames); err != nil {
		return nil, err
	}
	return csr, nil
}

// decodeCSRPEM returns the DER of the single CSR PEM block in s.
func decodeCSRPEM(s string) ([]byte, error) {
	trimmed := strings.TrimSpace(s)
	if trimmed == "" {
		return nil, fmt.Errorf("%w: csr is empty", ErrInvalidRequest)
	}
	if !strings.HasPrefix(trimmed, "-----BEGIN ") {
		return nil, fmt.Errorf("%w: csr is not pem: it must start with -----BEGIN CERTIFICATE REQUEST-----", ErrInvalidRequest)
	}
	if n := strings.Count(trimmed, "-----BEGIN"); n != 1 {
		return nil, fmt.Errorf("%w: csr holds %d pem blocks, expected one", ErrInvalidRequest, n)
	}
	block, rest := pem.Decode([]byte(trimmed))
	if block == nil {
		return nil, fmt.Errorf("%w: csr is not a well-formed pem block", ErrInvalidRequest)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: csr has %d bytes of trailing data after its pem block", ErrInvalidRequest, len(rest))
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: csr pem block is a %s, expected a \"CERTIFICATE REQUEST\"", ErrInvalidRequest, quote(block.Type))
	}
	if len(block.Headers) != 0 {
		return nil, fmt.Errorf("%w: csr pem block has headers", ErrInvalidRequest)
	}
	return block.Bytes, nil
}

// tbsCSR is the CertificationRequestInfo of RFC 2986, section 4.1.
type tbsCSR struct {
	Version       int
	Subject       asn1.RawValue
	PublicKeyInfo asn1.RawValue
	Attributes    []asn1.RawValue `asn1:"tag:0"`
}

// csrAttribute is the Attribute of RFC 2986, section 4.1.
type csrAttribute struct {
	Type   asn1.ObjectIdentifier
	Values []asn1.RawValue `asn1:"set"`
}

// checkCSRAttributes checks the version and that the only attribute is a
// single extensionRequest with one value. Go's parser silently skips other
// attributes and extra values; this refuses them.
func checkCSRAttributes(csr *x509.CertificateRequest) error {
	var tbs tbsCSR
	rest, err := asn1.Unmarshal(csr.RawTBSCertificateRequest, &tbs)
	if err != nil || len(rest) != 0 {
		return fmt.Errorf("%w: csr request info is malformed", ErrInvalidRequest)
	}
	if tbs.Version != 0 {
		return fmt.Errorf("%w: csr version is %d, expected 0 (v1)", ErrInvalidRequest, tbs.Version)
	}
	seen := false
	for _, raw := range tbs.Attributes {
		var attr csrAttribute
		if rest, err := asn1.Unmarshal(raw.FullBytes, &attr); err != nil || len(rest) != 0 {
			return fmt.Errorf("%w: csr has a malformed attribute", ErrInvalidRequest)
		}
		if !attr.Type.Equal(oidExtensionRequest) {
			return fmt.Errorf("%w: csr carries the attribute %s%s; only extensionRequest (%s) is allowed",
				ErrInvalidRequest, clip(attr.Type), attributeName(attr.Type), oidExtensionRequest)
		}
		if seen {
			return fmt.Errorf("%w: csr carries more than one extensionRequest attribute", ErrInvalidRequest)
		}
		seen = true
		if len(attr.Values) != 1 {
			return fmt.Errorf("%w: csr extensionRequest has %d values, expected one", ErrInvalidRequest, len(attr.Values))
		}
	}
	return nil
}

// allowedKeys describes the keys checkCSRKey accepts, for messages.
const allowedKeys = "ECDSA P-256 or P-384, RSA 2048 to 4096 bits with exponent 65537"

// checkCSRKey checks the public key type and strength.
func checkCSRKey(csr *x509.CertificateRequest, allowEd25519 bool) error {
	allowed := allowedKeys
	if allowEd25519 {
		allowed += ", Ed25519"
	}
	switch pub := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve == elliptic.P256() || pub.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("%w: csr key is ECDSA %s; allowed keys: %s", ErrInvalidRequest, pub.Curve.Params().Name, allowed)
	case *rsa.PublicKey:
		bits := pub.N.BitLen()
		if bits < 2048 || bits > 4096 {
			return fmt.Errorf("%w: csr key is RSA-%d; allowed keys: %s", ErrInvalidRequest, bits, allowed)
		}
		if pub.E != 65537 {
			return fmt.Errorf("%w: csr key is RSA-%d with exponent %d; allowed keys: %s", ErrInvalidRequest, bits, pub.E, allowed)
		}
		return nil
	case ed25519.PublicKey:
		if allowEd25519 {
			return nil
		}
		return fmt.Errorf("%w: csr key is Ed25519; allowed keys: %s", ErrInvalidRequest, allowed)
	}
	if csr.PublicKeyAlgorithm == x509.DSA {
		return fmt.Errorf("%w: csr key is DSA; allowed keys: %s", ErrInvalidRequest, allowed)
	}
	return fmt.Errorf("%w: csr key is of an unsupported type (%s); allowed keys: %s", ErrInvalidRequest, csr.PublicKeyAlgorithm, allowed)
}

// checkCSRSubject refuses any subject attribute with a value: the identity
// lives in the URI SAN alone, and the subject is never copied into the
// certificate. Attributes with an empty value are tolerated, because
// istio-agent's CSRs always carry an empty organization (O=""), which Istio's
// GenCSRTemplate sets from its unset Org option.
func checkCSRSubject(csr *x509.CertificateRequest) error {
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(csr.RawSubject, &rdns); err != nil || len(rest) != 0 {
		return fmt.Errorf("%w: csr subject is malformed", ErrInvalidRequest)
	}
	for _, rdn := range rdns {
		if len(rdn) == 0 {
			return fmt.Errorf("%w: csr subject must be empty, got an empty relative distinguished name", ErrInvalidRequest)
		}
		for _, atv := range rdn {
			if s, ok := atv.Value.(string); ok && s == "" {
				continue
			}
			return fmt.Errorf("%w: csr subject must be empty, got %s", ErrInvalidRequest, clip(csr.Subject.String()))
		}
	}
	return nil
}

// keyUsageNames names the bits of the keyUsage BIT STRING (RFC 5280, 4.2.1.3).
var keyUsageNames = []string{
	"digitalSignature", "nonRepudiation", "keyEncipherment", "dataEncipherment",
	"keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly",
}

// checkKeyUsage refuses the CA key usages keyCertSign and cRLSign.
func checkKeyUsage(value []byte) error {
	var bits asn1.BitString
	if rest, err := asn1.Unmarshal(value, &bits); err != nil || len(rest) != 0 {
		return fmt.Errorf("%w: csr keyUsage extension is malformed", ErrInvalidRequest)
	}
	for _, bit := range []int{5, 6} {
		if bits.At(bit) == 1 {
			return fmt.Errorf("%w: csr requests key usage %s, which only a ca may have", ErrInvalidRequest, keyUsageNames[bit])
		}
	}
	return nil
}

// checkExtKeyUsage admits only serverAuth and clientAuth.
func checkExtKeyUsage(value []byte) error {
	var oids []asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(value, &oids); err != nil || len(rest) != 0 {
		return fmt.Errorf("%w: csr extKeyUsage extension is malformed", ErrInvalidRequest)
	}
	for _, oid := range oids {
		if !oid.Equal(oidExtKeyUsageServerAuth) && !oid.Equal(oidExtKeyUsageClientAuth) {
			return fmt.Errorf("%w: csr requests extended key usage %s; only serverAuth and clientAuth are allowed", ErrInvalidRequest, clip(oid))
		}
	}
	return nil
}

// GeneralName tags (RFC 5280, 4.2.1.6).
const (
	sanOtherName     = 0
	sanRFC822Name    = 1
	sanDNSName       = 2
	sanX400Address   = 3
	sanDirectoryName = 4
	sanEDIPartyName  = 5
	sanURI           = 6
	sanIPAddress     = 7
	sanRegisteredID  = 8
)

var sanTypeNames = map[int]string{
	sanOtherName: "otherName", sanX400Address: "x400Address", sanDirectoryName: "directoryName",
	sanEDIPartyName: "ediPartyName", sanRegisteredID: "registeredID",
}

// checkSANs walks the SAN extension itself, since Go's parser drops the
// kinds of name it does not know, and checks every name against the caller.
func checkSANs(der []byte, caller *Caller, allowedDNS []string) error {
	var seq asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &seq); err != nil || len(rest) != 0 ||
		seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return fmt.Errorf("%w: csr subjectAltName extension is malformed", ErrInvalidRequest)
	}
	var uris []string
	for in := seq.Bytes; len(in) > 0; {
		var name asn1.RawValue
		var err error
		if in, err = asn1.Unmarshal(in, &name); err != nil || name.Class != asn1.ClassContextSpecific {
			return fmt.Errorf("%w: csr subjectAltName extension is malformed", ErrInvalidRequest)
		}
		switch name.Tag {
		case sanURI:
			uris = append(uris, string(name.Bytes))
		case sanDNSName:
			dns := string(name.Bytes)
			if !slices.Contains(allowedDNS, dns) {
				return fmt.Errorf("%w: csr asks for the dns name %s, which %s may not request", ErrPermissionDenied, quote(dns), caller.SPIFFEID)
			}
		case sanIPAddress:
			return fmt.Errorf("%w: csr asks for the ip address %s; ip sans are not allowed", ErrInvalidRequest, clip(net.IP(name.Bytes)))
		case sanRFC822Name:
			return fmt.Errorf("%w: csr asks for the email address %s; email sans are not allowed", ErrInvalidRequest, quote(string(name.Bytes)))
		default:
			kind, ok := sanTypeNames[name.Tag]
			if !ok {
				kind = fmt.Sprintf("[%d]", name.Tag)
			}
			return fmt.Errorf("%w: csr asks for a %s san; only uri and dns sans are allowed", ErrInvalidRequest, kind)
		}
	}
	for _, u := range uris {
		if u != caller.SPIFFEID {
			if caller.Impersonator != "" {
				return fmt.Errorf("%w: csr asks for the uri %s, but %s asked for %s", ErrPermissionDenied, quote(u), caller.Impersonator, caller.SPIFFEID)
			}
			return fmt.Errorf("%w: csr asks for the uri %s, but the caller is %s", ErrPermissionDenied, quote(u), caller.SPIFFEID)
		}
	}
	switch len(uris) {
	case 0:
		return fmt.Errorf("%w: csr has no uri san; it must name %s", ErrInvalidRequest, caller.SPIFFEID)
	case 1:
		return nil
	default:
		return fmt.Errorf("%w: csr lists the uri %q %d times; it must appear once", ErrInvalidRequest, caller.SPIFFEID, len(uris))
	}
}

// extensionNames and attributeNames name well-known OIDs in messages.
var (
	extensionNames = map[string]string{
		"2.5.29.14":          "subjectKeyIdentifier",
		"2.5.29.19":          "basicConstraints",
		"2.5.29.30":          "nameConstraints",
		"2.5.29.31":          "cRLDistributionPoints",
		"2.5.29.32":          "certificatePolicies",
		"2.5.29.35":          "authorityKeyIdentifier",
		"1.3.6.1.5.5.7.1.1":  "authorityInfoAccess",
		"1.3.6.1.5.5.7.1.24": "tlsFeature",
	}
	attributeNames = map[string]string{
		"1.2.840.113549.1.9.2": "unstructuredName",
		"1.2.840.113549.1.9.7": "challengePassword",
	}
)

// extensionName returns " (name)" for a well-known extension, else "".
func extensionName(oid asn1.ObjectIdentifier) string {
	if n, ok := extensionNames[oid.String()]; ok {
		return " (" + n + ")"
	}
	return ""
}

// attributeName returns " (name)" for a well-known PKCS #9 attribute, else "".
func attributeName(oid asn1.ObjectIdentifier) string {
	if n, ok := attributeNames[oid.String()]; ok {
		return " (" + n + ")"
	}
	return ""
}
