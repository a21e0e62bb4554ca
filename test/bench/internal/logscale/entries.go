package logscale

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net/url"
	"time"

	"github.com/transitca/transitca/store"
)

// The modelled mesh: 200 namespaces of 50 service accounts (10,000
// identities), one issuance every 2.6 s of log time, an intermediate
// rotated every 50,000 issuances, 2% denials, 0.1% admin entries. Every
// issuance carries a P-256 leaf shaped as the issuer package makes them
// and the pod its bound token names, as a k8s-jwt caller's does.
const (
	namespaces    = 200
	accounts      = 50
	issuerEvery   = 50_000
	entryInterval = 2600 * time.Millisecond
)

// logStart is the time of entry 0 of every generated log.
var logStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// generator makes the entries of a benchmark log.
type generator struct {
	cert []byte
	r    *mrand.Rand
}

func newGenerator(seed uint64) (*generator, error) {
	cert, err := leafDER()
	if err != nil {
		return nil, err
	}
	return &generator{cert: cert, r: mrand.New(mrand.NewPCG(seed, 0x5eed))}, nil //nolint:gosec // benchmark data: serials and pod names need no secrecy
}

// leafDER signs one leaf certificate: an ECDSA P-256 key, a SPIFFE URI
// SAN, digital signature key usage, server and client auth, under a P-256
// intermediate with transitca's naming.
func leafDER() ([]byte, error) {
	issuerKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	intermediate := x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject: pkix.Name{
			Organization: []string{"cluster.local"},
			CommonName:   "transitca issuing CA 5f3c9a01",
		},
		NotBefore:             logStart,
		NotAfter:              logStart.AddDate(0, 1, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          sha256.New().Sum(nil)[:20],
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	spiffe, err := url.Parse("spiffe://cluster.local/ns/ns-042/sa/sa-17")
	if err != nil {
		return nil, err
	}
	leaf := x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes([]byte("a 16-byte serial")),
		URIs:                  []*url.URL{spiffe},
		NotBefore:             logStart.Add(-5 * time.Minute),
		NotAfter:              logStart.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	return x509.CreateCertificate(rand.Reader, &leaf, &intermediate, &key.PublicKey, issuerKey)
}

// entry returns entry i of a benchmark log.
func (g *generator) entry(i int) *store.Entry {
	id := i % (namespaces * accounts)
	ns, sa := fmt.Sprintf("ns-%03d", id%namespaces), fmt.Sprintf("sa-%02d", id/namespaces)
	at := logStart.Add(time.Duration(i) * entryInterval)
	switch {
	case i%997 == 996:
		return &store.Entry{Kind: store.KindAdmin, Time: at, Action: "rotate-intermediate", Actor: "ops@example.com", Detail: `{"drill":true}`}
	case i%47 == 7:
		return &store.Entry{Kind: store.KindDenial, Time: at, Code: "PermissionDenied",
			Reason:   "CSR URI SAN does not match the caller identity",
			SPIFFEID: "spiffe://cluster.local/ns/" + ns + "/sa/" + sa, Namespace: ns, ServiceAccount: sa,
			CallerID: "system:serviceaccount:" + ns + ":" + sa, AuthMethod: "k8s-jwt", ClusterID: "Kubernetes"}
	}
	fp := sha256.Sum256(fmt.Appendf(nil, "intermediate %d", i/issuerEvery))
	pod := fmt.Sprintf("%s-%08x-%05x", sa, g.r.Uint32(), g.r.Uint32()&0xfffff)
	return &store.Entry{
		Kind:              store.KindIssuance,
		Time:              at,
		Serial:            fmt.Sprintf("%016x%016x", g.r.Uint64()|1<<62, g.r.Uint64()),
		SPIFFEID:          "spiffe://cluster.local/ns/" + ns + "/sa/" + sa,
		Namespace:         ns,
		ServiceAccount:    sa,
		Tier:              "service",
		RequestedTTL:      24 * time.Hour,
		GrantedTTL:        24 * time.Hour,
		NotBefore:         at.Add(-5 * time.Minute),
		NotAfter:          at.Add(24*time.Hour - 5*time.Minute),
		IssuerFingerprint: hex.EncodeToString(fp[:]),
		IssuerKeyVersion:  1 + i/issuerEvery,
		RootKeyVersion:    1,
		CallerID:          "system:serviceaccount:" + ns + ":" + sa,
		AuthMethod:        "k8s-jwt",
		CallerSubject:     "system:serviceaccount:" + ns + ":" + sa,
		ClusterID:         "Kubernetes",
		Certificate:       g.cert,
		PodName:           pod,
		PodUID:            fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", g.r.Uint32(), g.r.Uint32()&0xffff, g.r.Uint32()&0xfff, g.r.Uint32()&0xfff, g.r.Uint64()&0xffffffffffff),
	}
}
