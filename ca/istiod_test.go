package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/certlint"
)

// istiod's serving certificate goes through the service's own issuance
// stages: the issuer's leaf template with istiod's DNS names, the chain
// check, the privileged tier's cap, and the issuance log, as the CA's own
// issuance under istiod's identity.
func TestIssueIstiod(t *testing.T) {
	a := devAuthority(t)
	rec := &countingRecorder{}
	svc := devService(t, a, rec)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const id = "spiffe://cluster.local/ns/istio-system/sa/istiod"
	names := []string{"istiod.istio-system.svc", "istiod-canary.istio-system.svc"}
	is, roots, err := svc.IssueIstiod(context.Background(), ca.IstiodRequest{
		SPIFFEID: id, DNSNames: names, PublicKey: key.Public(), TTL: 30 * 24 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	leaf := is.Cert
	for _, n := range names {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool(roots...), Intermediates: pool(is.Issuer.Cert), DNSName: n,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("istiod certificate does not verify for %s: %v", n, err)
		}
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("istiod certificate URIs %v, want %s", leaf.URIs, id)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 7*24*time.Hour {
		t.Errorf("validity period %s, want the privileged tier's 168h", got)
	}
	certlint.Check(t, leaf)
	if n, _ := rec.counts(); n != 1 {
		t.Fatalf("%d issuances recorded, want 1", n)
	}
	r := rec.issuances[0]
	if r.Cert != leaf || r.Tier != ca.IstiodTier || r.Caller.Method != ca.AuthSelf || r.Caller.SPIFFEID != id ||
		r.Caller.Namespace != "istio-system" || r.Caller.ServiceAccount != "istiod" ||
		r.RequestedTTL != 30*24*time.Hour || r.GrantedTTL != 7*24*time.Hour {
		t.Errorf("recorded %+v (caller %+v)", r, r.Caller)
	}

	rec.fail = errors.New("disk full")
	if is, _, err := svc.IssueIstiod(context.Background(), ca.IstiodRequest{
		SPIFFEID: id, DNSNames: names, PublicKey: key.Public(), TTL: time.Hour,
	}); err == nil || is != nil {
		t.Fatalf("an unrecorded istiod certificate was returned (err %v)", err)
	}
	rec.fail = nil

	for name, r := range map[string]ca.IstiodRequest{
		"not a workload identity": {SPIFFEID: "spiffe://cluster.local/istiod", DNSNames: names, PublicKey: key.Public(), TTL: time.Hour},
		"no DNS name":             {SPIFFEID: id, PublicKey: key.Public(), TTL: time.Hour},
		"bad DNS name":            {SPIFFEID: id, DNSNames: []string{"*.istio-system.svc"}, PublicKey: key.Public(), TTL: time.Hour},
	} {
		if _, _, err := svc.IssueIstiod(context.Background(), r); !errors.Is(err, ca.ErrInvalidRequest) {
			t.Errorf("%s: %v, want ErrInvalidRequest", name, err)
		}
	}
	if n, _ := rec.counts(); n != 1 {
		t.Fatalf("%d issuances recorded after refusals, want 1", n)
	}
}
