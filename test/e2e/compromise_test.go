package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// held is a certificate a workload holds, as "ca request" leaves it: the
// chain as served and the key.
type held struct {
	id    string
	dir   string
	leaf  *x509.Certificate
	inter *x509.Certificate
	pair  tls.Certificate
}

// holdCert gets a certificate for ns/sa from s with a token, as a workload
// does, and loads it.
func holdCert(t *testing.T, s *caServer, ns, sa string) *held {
	t.Helper()
	dir := t.TempDir()
	requestCert(t, s, ns, sa, dir)
	return loadHeld(t, dir)
}

func loadHeld(t *testing.T, dir string) *held {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	certs := parsePEMChain(t, []string{readFile(t, filepath.Join(dir, "cert-chain.pem"))})
	if len(certs) < 2 {
		t.Fatalf("%s: chain of %d certificates", dir, len(certs))
	}
	return &held{id: certs[0].URIs[0].String(), dir: dir, leaf: certs[0], inter: certs[1], pair: pair}
}

// renewWith asks s for a certificate for h's identity authenticated by
// h's certificate alone, as a VM's istio-agent renews with PROV_CERT, and
// returns the chain it got.
func renewWith(t *testing.T, s *caServer, h *held) ([]*x509.Certificate, error) {
	t.Helper()
	return renewAs(t, s, h, "Kubernetes")
}

// renewAs is renewWith with cluster in the ClusterID header and dnsNames
// in the CSR.
func renewAs(t *testing.T, s *caServer, h *held, cluster string, dnsNames ...string) ([]*x509.Certificate, error) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: h.leaf.URIs, DNSNames: dnsNames}, key)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: rootPool(t, readFile(t, s.RootFile)), ServerName: "localhost", Certificates: []tls.Certificate{h.pair},
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "ClusterID", cluster), 10*time.Second)
	defer cancel()
	resp, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})), ValidityDuration: 3600,
	})
	if err != nil {
		return nil, err
	}
	return parsePEMChain(t, resp.GetCertChain()[:2]), nil
}

// adminWith calls every admin method on adminAddr with h's certificate
// and returns the errors by method.
func adminWith(t *testing.T, s *caServer, adminAddr string, h *held) map[string]error {
	t.Helper()
	conn, err := grpc.NewClient(adminAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: rootPool(t, readFile(t, s.RootFile)), ServerName: "localhost", Certificates: []tls.Certificate{h.pair},
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	errs := map[string]error{}
	for name, call := range adminCalls(adminv1.NewAdminServiceClient(conn)) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errs[name] = call(ctx)
		cancel()
	}
	return errs
}

// servedChain is the TLS serving certificate s presents now, and its
// intermediate.
func servedChain(t *testing.T, s *caServer) (leaf, inter *x509.Certificate) {
	t.Helper()
	conn, err := tls.Dial("tcp", s.Addr, &tls.Config{RootCAs: rootPool(t, readFile(t, s.RootFile)), ServerName: "localhost", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	chain := conn.ConnectionState().PeerCertificates
	if len(chain) < 2 {
		t.Fatalf("%s serves a chain of %d certificates", s.Addr, len(chain))
	}
	return chain[0], chain[1]
}

// docBlockLines returns the lines of the first ```sh block after the line
// of the repository's Markdown file doc that contains marker.
func docBlockLines(t *testing.T, doc, marker string) []string {
	t.Helper()
	text := readFile(t, filepath.Join("..", "..", doc))
	i := strings.Index(text, marker)
	if i < 0 {
		t.Fatalf("%s has no %q", doc, marker)
	}
	text = text[i:]
	start := strings.Index(text, "```sh\n")
	if start < 0 {
		t.Fatalf("%s has no sh block after %q", doc, marker)
	}
	text = text[start+len("```sh\n"):]
	end := strings.Index(text, "```")
	if end < 0 {
		t.Fatalf("%s: unterminated sh block after %q", doc, marker)
	}
	return strings.Split(strings.TrimSpace(text[:end]), "\n")
}

// affectedLine is one line of affected.jsonl.
type affectedLine struct {
	SPIFFEID string   `json:"spiffe_id"`
	Serials  []string `json:"serials"`
}

// docs/operations.md's compromise response for an intermediate, its steps
// as the guide gives them, against two replicas sharing one Vault, in both
// intermediate modes: "ca admin status" on the replica whose intermediate
// is compromised; "ca admin revoke-intermediate --fingerprint …" with
// every replica's --addr, which takes the step and, since the operator's
// own certificate was signed by the intermediate, says that the list needs
// a new one; a new admin certificate; "ca admin affected --fingerprint … >
// affected.jsonl". Afterwards no certificate the revoked intermediate signed
// authenticates anywhere: not to renew on the Istio port, not on the admin
// port (every method), on either replica, nor after a restart; and
// affected.jsonl lists every certificate it signed, from both replicas'
// logs, and nothing else. In the memory mode the intermediate is replica
// 0's own and the replicas are named replica 1 first: the step runs on
// the replica whose log records it.
func TestCompromiseResponseFromTheOperationsGuide(t *testing.T) {
	for _, mode := range []string{"vault", "memory"} {
		t.Run(mode, func(t *testing.T) {
			rs := startReplicas(t, 2, mode)
			guide := append(docBlockLines(t, "docs/operations.md", "**An intermediate is compromised**"),
				docBlockLines(t, "docs/operations.md", "write the list with")...)
			if len(guide) != 3 || !strings.HasPrefix(guide[0], "ca admin status $A") ||
				!strings.HasPrefix(guide[1], `ca admin revoke-intermediate $A --fingerprint <sha256> --reason "INC-1234: node compromise" > affected.jsonl`) ||
				guide[2] != "ca admin affected $A --fingerprint <sha256> > affected.jsonl" {
				t.Fatalf("docs/operations.md's steps changed; this test runs them: %q", guide)
			}

			// Workloads on both replicas, and the operator's certificate.
			var certs []*held
			for i, s := range rs.replicas {
				for _, sa := range []string{"web", "cart"} {
					certs = append(certs, holdCert(t, s, fmt.Sprintf("shop-%d", i), sa))
				}
			}
			operator := loadHeld(t, rs.opDir)
			certs = append(certs, operator)

			// ca admin status $A: which intermediate is current.
			st := rs.op(0).status(t)
			revoked := st.GetIntermediate().GetFingerprint()
			if revoked != fingerprint(operator.inter) {
				t.Fatalf("replica 0's current intermediate %s did not sign the operator's certificate", revoked)
			}
			var under, other []*held
			for _, h := range certs {
				if fingerprint(h.inter) == revoked {
					under = append(under, h)
				} else {
					other = append(other, h)
				}
			}
			// What the revoked intermediate signed: the workloads' and the
			// operator's certificates and the serving certificates.
			want := map[string]bool{}
			for _, h := range under {
				want[h.leaf.SerialNumber.Text(16)] = true
			}
			for _, s := range rs.replicas {
				if c, in := servedChain(t, s); fingerprint(in) == revoked {
					want[c.SerialNumber.Text(16)] = true
				}
			}
			switch {
			case mode == "vault" && (len(other) != 0 || len(under) != len(certs)):
				t.Fatalf("vault mode: %d of %d certificates under the shared intermediate", len(under), len(certs))
			case mode == "memory" && (len(other) != 2 || len(under) != len(certs)-2):
				t.Fatalf("memory mode: %d certificates under replica 0's intermediate, %d under replica 1's", len(under), len(other))
			}
			for _, h := range certs {
				chain, err := renewWith(t, rs.replicas[0], h)
				if err != nil {
					t.Fatalf("before the revocation, %s's certificate does not renew: %v", h.id, err)
				}
				if fingerprint(chain[1]) == revoked {
					want[chain[0].SerialNumber.Text(16)] = true
				}
			}

			// ca admin revoke-intermediate $A --fingerprint <sha256> --reason "INC-1234: node compromise" > affected.jsonl
			addrs := []string{"--addr", rs.admin[0], "--addr", rs.admin[1]}
			if mode == "memory" {
				addrs = []string{"--addr", rs.admin[1], "--addr", rs.admin[0]}
			}
			conn := append(addrs, "--server-name", "localhost", "--cert", filepath.Join(rs.opDir, "cert-chain.pem"),
				"--key", filepath.Join(rs.opDir, "key.pem"), "--root-cert", rs.replicas[0].RootFile)
			out, err := runCAStdout(t, rs.replicas[0], append([]string{"admin", "revoke-intermediate", "--fingerprint", revoked,
				"--reason", "INC-1234: node compromise"}, conn...)...)
			// The operator's certificate was among those it signed: the
			// step is taken, and the command says the list needs a new one.
			if err == nil || !strings.Contains(err.Error(), "intermediate revoked, but the revoked intermediate signed your admin certificate") ||
				!strings.Contains(err.Error(), "ca admin affected --fingerprint "+revoked) || out != "" {
				t.Fatalf("ca admin revoke-intermediate with the operator's certificate under it: %v\nstdout: %q", err, out)
			}

			// A new admin certificate, then
			// ca admin affected $A --fingerprint <sha256> > affected.jsonl
			requestCert(t, rs.replicas[0], "security", "auditor", rs.opDir)
			out, err = runCAStdout(t, rs.replicas[0], append([]string{"admin", "affected", "--fingerprint", revoked}, conn...)...)
			if err != nil {
				t.Fatalf("ca admin affected: %v", err)
			}
			affected := filepath.Join(t.TempDir(), "affected.jsonl")
			if err := os.WriteFile(affected, []byte(out), 0o600); err != nil {
				t.Fatal(err)
			}
			listed := map[string]bool{}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				var a affectedLine
				if err := json.Unmarshal([]byte(line), &a); err != nil {
					t.Fatalf("affected.jsonl line %q: %v", line, err)
				}
				for _, s := range a.Serials {
					listed[s] = true
				}
			}
			for s := range want {
				if !listed[s] {
					t.Errorf("affected.jsonl misses certificate %s, signed by the revoked intermediate", s)
				}
			}
			for s := range listed {
				if !want[s] {
					t.Errorf("affected.jsonl lists certificate %s, which the revoked intermediate did not sign", s)
				}
			}

			// Nothing under the revoked intermediate authenticates, on any
			// replica (the other within rotation.state_poll_interval).
			refusedEverywhere := func(when string) {
				t.Helper()
				for i, s := range rs.replicas {
					deadline := time.Now().Add(15 * time.Second)
					for _, h := range under {
						for {
							_, err := renewWith(t, s, h)
							if status.Code(err) == codes.Unauthenticated && strings.Contains(status.Convert(err).Message(), "compromised") {
								break
							}
							if time.Now().After(deadline) {
								t.Fatalf("%s: replica %d renews %s's certificate under the revoked intermediate: %v", when, i, h.id, err)
							}
							time.Sleep(200 * time.Millisecond)
						}
						for name, err := range adminWith(t, s, rs.admin[i], h) {
							if status.Code(err) != codes.Unauthenticated {
								t.Errorf("%s: replica %d, admin %s with %s's certificate: %v, want Unauthenticated", when, i, name, h.id, err)
							}
						}
					}
					for _, h := range other {
						if _, err := renewWith(t, s, h); err != nil {
							t.Errorf("%s: replica %d refuses %s's certificate under the other replica's intermediate: %v", when, i, h.id, err)
						}
					}
				}
			}
			refusedEverywhere("after the revocation")
			rs.eventually(t, "the revocation", -1, func(st *adminv1.StatusResponse) bool {
				return slices.Contains(st.GetCompromisedIntermediates(), revoked) && st.GetIntermediate().GetFingerprint() != revoked
			})
			rs.replicas[0].stop()
			rs.replicas[0].start(t)
			refusedEverywhere("after replica 0 restarted")
		})
	}
}
