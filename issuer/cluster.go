package issuer

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"unicode/utf8"
)

// OIDCluster identifies the certificate extension in which transitca
// writes the cluster a workload certificate was issued for: a non-critical
// extension whose value is the cluster ID as a DER UTF8String. A renewal
// authenticated by the certificate is judged as that cluster, whichever
// replica receives it, since the certificate carries it signed.
//
// transitca has no IANA private enterprise number of its own: the OID sits
// under 1.3.6.1.4.1.32473, the enterprise number RFC 5612 reserves for
// documentation, which therefore names no other party's extension. The
// extension is only read from certificates that verified against the CA's
// own roots, so an extension with the same OID from anyone else is never
// consulted.
var OIDCluster = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 21, 1}

// maxClusterBytes bounds the cluster ID in the extension, as the
// configuration bounds cluster IDs.
const maxClusterBytes = 253

// ClusterExtension returns the extension that records cluster in a leaf.
func ClusterExtension(cluster string) (pkix.Extension, error) {
	if cluster == "" || len(cluster) > maxClusterBytes || !utf8.ValidString(cluster) {
		return pkix.Extension{}, fmt.Errorf("cluster id %q cannot be written in a certificate: 1 to %d bytes of UTF-8", cluster, maxClusterBytes)
	}
	v, err := asn1.MarshalWithParams(cluster, "utf8")
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: OIDCluster, Value: v}, nil
}

// ErrBadClusterExtension means a certificate carries the cluster extension
// in a form transitca never writes.
var ErrBadClusterExtension = errors.New("malformed cluster extension")

// CertCluster returns the cluster cert was issued for, and false when it
// carries no cluster extension (certificates issued before transitca
// recorded it, and those it issues on its own account). An extension
// marked critical, repeated, or holding anything but a UTF8String of 1 to
// 253 bytes is an error wrapping ErrBadClusterExtension.
func CertCluster(cert *x509.Certificate) (string, bool, error) {
	var found *pkix.Extension
	for i := range cert.Extensions {
		if !cert.Extensions[i].Id.Equal(OIDCluster) {
			continue
		}
		if found != nil {
			return "", false, fmt.Errorf("%w: it appears twice", ErrBadClusterExtension)
		}
		found = &cert.Extensions[i]
	}
	if found == nil {
		return "", false, nil
	}
	if found.Critical {
		return "", false, fmt.Errorf("%w: it is marked critical", ErrBadClusterExtension)
	}
	var cluster string
	rest, err := asn1.UnmarshalWithParams(found.Value, &cluster, "utf8")
	if err != nil || len(rest) != 0 || cluster == "" || len(cluster) > maxClusterBytes {
		return "", false, fmt.Errorf("%w: not a UTF8String of 1 to %d bytes", ErrBadClusterExtension, maxClusterBytes)
	}
	return cluster, true, nil
}
