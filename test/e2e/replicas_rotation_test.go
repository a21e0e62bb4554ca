package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher/plugin"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	"istio.io/istio/security/pkg/pki/util"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// eventually waits up to 15s for cond to hold on every replica but the
// one named by skip (-1: none).
func (rs *replicaSet) eventually(t *testing.T, what string, skip int, cond func(st *adminv1.StatusResponse) bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for i := range rs.replicas {
		if i == skip {
			continue
		}
		for {
			st := rs.op(i).status(t)
			if cond(st) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %d: %s not seen within 15s; status: %v", i, what, st)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// requestFrom gets a certificate for load/probe from replica i itself.
func (rs *replicaSet) requestFrom(t *testing.T, i int) *answer {
	t.Helper()
	s := rs.replicas[i]
	c, err := citadel.NewCitadelClient(&security.Options{
		CAEndpoint: s.Addr, CAEndpointSAN: "localhost", ClusterID: "Kubernetes",
		CredFetcher: plugin.CreateTokenPlugin(s.tokenFile(t, "load", "probe")),
	}, &citadel.TLSOptions{RootCert: s.RootFile})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	csr, _, err := util.GenCSR(util.CertOptions{Host: spiffeID("load", "probe"), ECSigAlg: util.EcdsaSigAlg})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.CSRSign(csr, 3600)
	if err != nil {
		t.Fatalf("replica %d: %v", i, err)
	}
	certs := parsePEMChain(t, chain[:2])
	a := &answer{leaf: certs[0], inter: certs[1], bundle: parsePEMChain(t, chain[2:]), bundlePEM: chain[2]}
	if err := a.verify(a.bundle); err != nil {
		t.Fatalf("replica %d: %v", i, err)
	}
	return a
}

func preparedRoots(st *adminv1.StatusResponse) int {
	n := 0
	for _, r := range st.GetRoots() {
		if r.GetRole() == adminv1.RootRole_ROOT_ROLE_PREPARED {
			n++
		}
	}
	return n
}

// A rotation step taken through one replica's admin API is followed by
// the others (rotation.state_poll_interval: 1s): a prepared root enters
// every replica's bundle, an activated root moves every replica's
// issuance under it. In Vault mode the replicas share the intermediate, so
// one replica's rotate-intermediate is every replica's; in memory mode each
// has its own, all under the one root.
func TestReplicasFollowEachOthersRotation(t *testing.T) {
	for _, mode := range []string{"vault", "memory"} {
		t.Run(mode, func(t *testing.T) {
			rs := startReplicas(t, 3, mode)
			first := make([]string, 3)
			for i := range rs.replicas {
				first[i] = rs.op(i).status(t).GetIntermediate().GetFingerprint()
			}
			shared := first[0] == first[1] && first[1] == first[2]
			if mode == "vault" && !shared {
				t.Fatalf("vault mode: intermediates %v, want one shared", first)
			}
			if mode == "memory" && (first[0] == first[1] || first[1] == first[2] || first[0] == first[2]) {
				t.Fatalf("memory mode: intermediates %v, want one each", first)
			}
			root := rs.requestFrom(t, 0).bundle[0]
			for i := range rs.replicas {
				if a := rs.requestFrom(t, i); len(a.bundle) != 1 || a.inter.CheckSignatureFrom(root) != nil {
					t.Fatalf("replica %d: intermediate not under the one root", i)
				}
			}

			if _, err := rs.op(1).admin(t, "root", "prepare", "--reason", "replicas"); err != nil {
				t.Fatal(err)
			}
			rs.eventually(t, "the root prepared on replica 1", 1, func(st *adminv1.StatusResponse) bool { return preparedRoots(st) == 1 })
			if a := rs.requestFrom(t, 2); len(a.bundle) != 2 {
				t.Fatalf("replica 2 answers a bundle of %d roots after replica 1 prepared one", len(a.bundle))
			}

			rot := &adminv1.RotateIntermediateResponse{}
			rs.op(0).adminJSON(t, rot, "rotate-intermediate", "--reason", "replicas")
			cur := rot.GetCurrent().GetFingerprint()
			if mode == "vault" {
				rs.eventually(t, "the intermediate rotated on replica 0", 0, func(st *adminv1.StatusResponse) bool {
					return st.GetIntermediate().GetFingerprint() == cur
				})
				if a := rs.requestFrom(t, 2); fingerprint(a.inter) != cur {
					t.Fatal("replica 2 still signs with the intermediate replica 0 rotated away")
				}
			} else {
				for i := 1; i < 3; i++ {
					if got := rs.op(i).status(t).GetIntermediate().GetFingerprint(); got != first[i] {
						t.Fatalf("memory mode: replica %d changed its own intermediate when replica 0 rotated", i)
					}
				}
			}

			if _, err := rs.op(2).admin(t, "root", "activate", "--force", "--reason", "replicas"); err != nil {
				t.Fatal(err)
			}
			rs.eventually(t, "the root activated on replica 2", 2, func(st *adminv1.StatusResponse) bool {
				return st.GetIntermediate().GetRootKeyVersion() == 2 && preparedRoots(st) == 0
			})
			inter2 := rs.requestFrom(t, 2).inter
			for i := range rs.replicas {
				a := rs.requestFrom(t, i)
				if len(a.bundle) != 2 || a.inter.CheckSignatureFrom(root) == nil {
					t.Fatalf("replica %d after activate: bundle of %d, intermediate still under the old root", i, len(a.bundle))
				}
				if shared := fingerprint(a.inter) == fingerprint(inter2); i != 2 && shared != (mode == "vault") {
					t.Fatalf("replica %d after activate: intermediate shared with replica 2 = %v in %s mode", i, shared, mode)
				}
			}

			// Retired through replica 0: every replica's root file holds the
			// new root alone, and every replica serves a certificate that
			// verifies with it, as an agent that starts now trusts it.
			if _, err := rs.op(0).admin(t, "root", "retire", "--force", "--reason", "replicas"); err != nil {
				t.Fatal(err)
			}
			newRootPEM := rs.requestFrom(t, 0).bundlePEM
			deadline := time.Now().Add(15 * time.Second)
			for i, s := range rs.replicas {
				for {
					err := dialTrusting(s.Addr, newRootPEM)
					if err == nil && readFile(t, s.RootFile) == newRootPEM {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("replica %d, 15s after the old root was retired on replica 0: root file current %v, serving certificate: %v",
							i, readFile(t, s.RootFile) == newRootPEM, err)
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
		})
	}
}

// dialTrusting makes one TLS connection to addr trusting the roots of
// pemText alone, as an agent holding that bundle does.
func dialTrusting(addr, pemText string) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(pemText)) {
		return fmt.Errorf("no certificate in %q", pemText)
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return err
	}
	return conn.Close()
}

// Each replica refuses to retire a root only for the certificates its own
// log holds. Given every replica's --addr, "ca admin root retire" searches
// every replica's log first: certificates one replica issued under the old
// root stop a retirement asked of another.
func TestRetireChecksEveryReplicasLog(t *testing.T) {
	rs := startReplicas(t, 2, "vault")
	rs.requestFrom(t, 0) // replica 0 issues a workload certificate under root v1
	op1 := rs.op(1)
	if _, err := op1.admin(t, "root", "prepare", "--reason", "replicas"); err != nil {
		t.Fatal(err)
	}
	if _, err := op1.admin(t, "root", "activate", "--force", "--reason", "replicas"); err != nil {
		t.Fatal(err)
	}
	rs.eventually(t, "the activation", 1, func(st *adminv1.StatusResponse) bool { return st.GetIntermediate().GetRootKeyVersion() == 2 })
	both := []string{"--addr", rs.admin[1], "--addr", rs.admin[0]}
	_, err := op1.admin(t, append([]string{"root", "retire"}, both...)...)
	if err == nil || !strings.Contains(err.Error(), "unexpired certificates in the replicas' logs chain only to root version 1") ||
		!strings.Contains(err.Error(), " in "+rs.admin[0]) {
		t.Fatalf("retire through replica 1, with both replicas named: %v, want a refusal naming replica 0's log", err)
	}
	if st := op1.status(t); len(st.GetRoots()) != 2 {
		t.Fatalf("the refused retirement changed the bundle: %v", st.GetRoots())
	}
	out, err := op1.admin(t, append([]string{"root", "retire", "--force", "--reason", "replicas"}, both...)...)
	if err != nil || !strings.Contains(out, "root v1 removed from the trust bundle") {
		t.Fatalf("forced retire with both replicas named: %v\n%s", err, out)
	}
	// The operator's certificate chained to the retired root.
	requestCert(t, rs.replicas[0], "security", "auditor", rs.opDir)
	rs.eventually(t, "the retirement", -1, func(st *adminv1.StatusResponse) bool { return len(st.GetRoots()) == 1 })
}

// In Vault mode the replicas share the intermediate, so what it signed is
// in every replica's log. Given every replica's --addr, "ca admin
// revoke-intermediate" waits until every replica has followed the
// revocation and lists the certificates it signed from all of them. (The
// operator's certificate must not be one of them, or no replica would
// accept it for the search: it rotates first and gets a new one.)
func TestRevokeListsEveryReplicasCertificates(t *testing.T) {
	rs := startReplicas(t, 2, "vault")
	probe := rs.requestFrom(t, 0) // in replica 0's log only
	old := fingerprint(probe.inter)
	if _, err := rs.op(1).admin(t, "rotate-intermediate", "--reason", "replicas"); err != nil {
		t.Fatal(err)
	}
	requestCert(t, rs.replicas[1], "security", "auditor", rs.opDir)
	out, err := rs.op(1).admin(t, "revoke-intermediate", "--fingerprint", old, "--reason", "replicas", "--addr", rs.admin[1], "--addr", rs.admin[0])
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var g struct {
			SPIFFEID string   `json:"spiffe_id"`
			Serials  []string `json:"serials"`
		}
		if err := json.Unmarshal([]byte(line), &g); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if g.SPIFFEID == spiffeID("load", "probe") {
			listed = g.Serials
		}
	}
	if !slices.Contains(listed, probe.leaf.SerialNumber.Text(16)) {
		t.Fatalf("revoke-intermediate through replica 1 does not list the certificate replica 0 issued (%s):\n%s", probe.leaf.SerialNumber.Text(16), out)
	}
	for i := range rs.replicas {
		if st := rs.op(i).status(t); !slices.Contains(st.GetCompromisedIntermediates(), old) || st.GetIntermediate().GetFingerprint() == old {
			t.Fatalf("replica %d had not followed the revocation when the list was written: %v", i, st)
		}
	}
}
