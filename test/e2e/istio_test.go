package e2e

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher/plugin"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	"istio.io/istio/security/pkg/pki/util"
)

// istioClient is istio-agent's own CA client, configured the way the agent
// configures it: CA_ADDR, the istio-ca-root-cert bundle, the projected
// service-account token file, and the cluster ID.
func istioClient(t *testing.T, s *caServer, tokenFile string) *citadel.CitadelClient {
	t.Helper()
	c, err := citadel.NewCitadelClient(&security.Options{
		CAEndpoint:    s.Addr,
		CAEndpointSAN: "localhost",
		ClusterID:     "Kubernetes",
		CredFetcher:   plugin.CreateTokenPlugin(tokenFile),
	}, &citadel.TLSOptions{RootCert: s.RootFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func spiffeID(ns, sa string) string { return fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, sa) }

// TestIstioAgentGetsCertificates requests certificates with Istio's own
// client and CSR code, in both intermediate modes, with ECDSA and RSA keys.
func TestIstioAgentGetsCertificates(t *testing.T) {
	for _, mode := range []string{"memory", "vault"} {
		t.Run(mode, func(t *testing.T) {
			s := startCA(t, mode, "")
			cases := []struct {
				name      string
				ns, sa    string
				opts      util.CertOptions
				requested time.Duration
				maxTTL    time.Duration
			}{
				{"ecdsa service default request", "default", "web", util.CertOptions{ECSigAlg: util.EcdsaSigAlg}, 24 * time.Hour, 24 * time.Hour},
				{"rsa service", "shop", "cart", util.CertOptions{RSAKeySize: 2048}, 24 * time.Hour, 24 * time.Hour},
				{"ecdsa p384 service asks 90 days", "shop", "cart", util.CertOptions{ECSigAlg: util.EcdsaSigAlg, ECCCurve: util.P384Curve}, 90 * 24 * time.Hour, 30 * 24 * time.Hour},
				{"privileged asks 30 days", "istio-system", "istio-ingressgateway", util.CertOptions{ECSigAlg: util.EcdsaSigAlg}, 30 * 24 * time.Hour, 7 * 24 * time.Hour},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					id := spiffeID(tc.ns, tc.sa)
					opts := tc.opts
					opts.Host = id
					csrPEM, _, err := util.GenCSR(opts)
					if err != nil {
						t.Fatal(err)
					}
					client := istioClient(t, s, s.tokenFile(t, tc.ns, tc.sa))
					chain, err := client.CSRSign(csrPEM, int64(tc.requested.Seconds()))
					if err != nil {
						t.Fatalf("CSRSign: %v\ndaemon log:\n%s", err, s.Logs())
					}
					if len(chain) != 3 {
						t.Fatalf("chain has %d elements, want leaf, intermediate, root bundle", len(chain))
					}
					certs := parsePEMChain(t, chain)
					leaf, inter := certs[0], certs[1]
					roots := rootPool(t, chain[len(chain)-1])
					ip := x509.NewCertPool()
					ip.AddCert(inter)
					for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
						if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: ip, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
							t.Fatalf("chain does not verify against the root bundle for %v: %v", usage, err)
						}
					}
					if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
						t.Fatalf("leaf URIs %v, want exactly %s", leaf.URIs, id)
					}
					if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || leaf.Subject.String() != "" {
						t.Fatalf("leaf carries more than the SPIFFE ID: %v %v %v %q", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, leaf.Subject)
					}
					// The validity period, back-dating included, is the tier's
					// maximum, never more.
					if life := leaf.NotAfter.Sub(leaf.NotBefore); life != tc.maxTTL {
						t.Fatalf("leaf validity period %v, tier allows %v", life, tc.maxTTL)
					}
					// The root bundle the agent receives is the one the daemon published.
					if !strings.Contains(readFile(t, s.RootFile), strings.TrimSpace(chain[2])) {
						t.Fatal("answered root bundle differs from root-cert.pem")
					}
					if mode == "vault" && !strings.Contains(s.Logs(), "mode=vault") {
						t.Fatal("daemon did not run the in-Vault intermediate")
					}
				})
			}
		})
	}
}

// TestIstioAgentRefused checks that Istio's client sees the refusal codes it
// expects: no retry for bad credentials or another identity's CSR.
func TestIstioAgentRefused(t *testing.T) {
	s := startCA(t, "memory", "")
	csrPEM, _, err := util.GenCSR(util.CertOptions{Host: spiffeID("payments", "api"), ECSigAlg: util.EcdsaSigAlg})
	if err != nil {
		t.Fatal(err)
	}
	client := istioClient(t, s, s.tokenFile(t, "default", "web"))
	start := time.Now()
	_, err = client.CSRSign(csrPEM, 3600)
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(err.Error(), "payments") {
		t.Fatalf("CSR for another identity: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("the client retried a PermissionDenied")
	}
	// No token at all.
	nobody := istioClient(t, s, "")
	csr2, _, _ := util.GenCSR(util.CertOptions{Host: spiffeID("default", "web"), ECSigAlg: util.EcdsaSigAlg})
	if _, err := nobody.CSRSign(csr2, 3600); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Fatalf("request without token: %v", err)
	}
}
