package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher/plugin"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	"istio.io/istio/security/pkg/pki/util"

	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/internal/vaulttest"
)

// kubeCluster is a real API server standing for one cluster of a mesh.
type kubeCluster struct {
	id  string
	env *kubetest.Env
	// kubeconfig acts as the API server's admin: transitca's clusters[]
	// entry for this cluster.
	kubeconfig string
}

func startCluster(t *testing.T, id string) *kubeCluster {
	t.Helper()
	srv, err := kubetest.Start()
	if err != nil {
		t.Fatalf("cluster %s: %v", id, err)
	}
	t.Cleanup(srv.Stop)
	c := &kubeCluster{id: id, env: kubetest.NewOn(t, srv), kubeconfig: filepath.Join(t.TempDir(), id+".kubeconfig")}
	if err := srv.WriteKubeconfig(c.kubeconfig, srv.AdminToken, "default"); err != nil {
		t.Fatal(err)
	}
	return c
}

// workload creates a service account with a pod on node and returns a
// token file holding its projected token (audience istio-ca, bound to the
// pod), as the kubelet writes it.
func (c *kubeCluster) workload(t *testing.T, sa, node string) string {
	t.Helper()
	c.env.ServiceAccount(t, sa)
	pod := c.env.Pod(t, sa+"-0", sa, node)
	path := filepath.Join(t.TempDir(), c.id+"-"+sa+".jwt")
	if err := os.WriteFile(path, []byte(c.env.Token(t, sa, kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: pod})), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (c *kubeCluster) identity(sa string) string { return spiffeID(c.env.Namespace, sa) }

// startClustersCA initializes a CA in a fresh corner of the shared Vault and
// starts "ca serve" serving the clusters, with ambient mode on for the
// trusted node accounts. Nothing but the clusters' entries checks tokens.
func startClustersCA(t *testing.T, trusted []string, clusters ...*kubeCluster) *caServer {
	t.Helper()
	env := vaulttest.New(t)
	dir, addr := t.TempDir(), freeAddr(t)
	var cl strings.Builder
	for _, c := range clusters {
		fmt.Fprintf(&cl, "  - id: %s\n    kubeconfig: %s\n", c.id, c.kubeconfig)
	}
	cfg := fmt.Sprintf(`data_dir: %s
trust_domain: cluster.local
vault:
  transit_mount: %s
  kv_mount: %s
  timeout: 3s
server:
  listen: %s
  metrics_listen: ""
  tls:
    dns_names: [localhost]
    ip_addresses: [127.0.0.1]
admin:
  listen: ""
auth:
  trusted_node_accounts: [%s]
clusters:
%s`, filepath.Join(dir, "data"), env.Transit, env.KV, addr, strings.Join(trusted, ", "), cl.String())
	s := &caServer{Addr: addr, DataDir: filepath.Join(dir, "data"), Config: filepath.Join(dir, "transitca.yaml"), Env: env}
	s.RootFile = filepath.Join(s.DataDir, "root-cert.pem")
	if err := os.WriteFile(s.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := s.command("init", "--config", s.Config).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	s.start(t)
	return s
}

// agentFor is istio-agent's own CA client for a workload of cluster.
func agentFor(t *testing.T, s *caServer, cluster, tokenFile string) *citadel.CitadelClient {
	t.Helper()
	c, err := citadel.NewCitadelClient(&security.Options{
		CAEndpoint: s.Addr, CAEndpointSAN: "localhost", ClusterID: cluster, CredFetcher: plugin.CreateTokenPlugin(tokenFile),
	}, &citadel.TLSOptions{RootCert: s.RootFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// impersonate asks for a certificate the way ztunnel does: its own token,
// the ClusterID header, and the identity it wants under Istio's
// ImpersonatedIdentity metadata key; the CSR, made by Istio's own code,
// names csrFor.
func impersonate(t *testing.T, s *caServer, cluster, tokenFile, identity, csrFor string) ([]string, error) {
	t.Helper()
	csrPEM, _, err := util.GenCSR(util.CertOptions{Host: csrFor, ECSigAlg: util.EcdsaSigAlg})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: rootPool(t, readFile(t, s.RootFile)), ServerName: "localhost", MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	md, err := structpb.NewStruct(map[string]any{security.ImpersonatedIdentity: identity})
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.NewOutgoingContext(context.Background(), metadata.Pairs(
		"authorization", security.BearerTokenPrefix+readFile(t, tokenFile), "ClusterID", cluster))
	resp, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr: string(csrPEM), ValidityDuration: 3600, Metadata: md,
	})
	return resp.GetCertChain(), err
}

// TestClustersAndAmbient runs the daemon against two real API servers as
// two clusters of one mesh, with Istio's own client code: each cluster's
// workload gets a certificate with its own cluster ID and is refused with
// the other's; ztunnel on node-a gets a certificate for an identity with a
// pod on node-a and is refused (PermissionDenied) for one without, as is a
// caller that is not a trusted node account and a CSR for another
// identity. The log, read with "ca log query --cluster", records every
// refusal with both identities.
func TestClustersAndAmbient(t *testing.T) {
	east, west := startCluster(t, "east"), startCluster(t, "west")
	eastWeb, westWeb := east.workload(t, "web", "node-a"), west.workload(t, "web", "node-a")
	ztunnel, rogue := east.workload(t, "ztunnel", "node-a"), east.workload(t, "rogue", "node-a")
	east.workload(t, "db", "node-b")
	s := startClustersCA(t, []string{east.env.Namespace + "/ztunnel"}, east, west)

	for _, tc := range []struct {
		name, cluster, token, id string
		ok                       bool
	}{
		{"east's workload as east", "east", eastWeb, east.identity("web"), true},
		{"west's workload as west", "west", westWeb, west.identity("web"), true},
		{"east's workload as west", "west", eastWeb, east.identity("web"), false},
		{"west's workload as east", "east", westWeb, west.identity("web"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			csrPEM, _, err := util.GenCSR(util.CertOptions{Host: tc.id, ECSigAlg: util.EcdsaSigAlg})
			if err != nil {
				t.Fatal(err)
			}
			chain, err := agentFor(t, s, tc.cluster, tc.token).CSRSign(csrPEM, 3600)
			if !tc.ok {
				if err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
					t.Fatalf("got %v, want Unauthenticated", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if leaf := parsePEMChain(t, chain)[0]; len(leaf.URIs) != 1 || leaf.URIs[0].String() != tc.id {
				t.Fatalf("leaf names %v, want %s", leaf.URIs, tc.id)
			}
		})
	}

	web, db := east.identity("web"), east.identity("db")
	chain, err := impersonate(t, s, "east", ztunnel, web, web)
	for i := 0; status.Code(err) == codes.Unavailable && i < 100; i++ { // the pods are being listed
		chain, err = impersonate(t, s, "east", ztunnel, web, web)
	}
	if err != nil {
		t.Fatalf("ztunnel on node-a asking for web (a pod on node-a): %v\n%s", err, s.Logs())
	}
	if leaf := parsePEMChain(t, chain)[0]; len(leaf.URIs) != 1 || leaf.URIs[0].String() != web {
		t.Fatalf("leaf names %v, want only %s", leaf.URIs, web)
	}
	refusals := []struct {
		name, token, identity, csrFor, caller string
	}{
		{"identity with no pod on the node", ztunnel, db, db, east.identity("ztunnel")},
		{"caller not a trusted node account", rogue, web, web, east.identity("rogue")},
		{"CSR for another identity", ztunnel, web, db, east.identity("ztunnel")},
	}
	for _, tc := range refusals {
		if _, err := impersonate(t, s, "east", tc.token, tc.identity, tc.csrFor); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", tc.name, err)
		}
	}

	s.stop()
	out, err := s.command("log", "query", "--db", filepath.Join(s.DataDir, "issuance.db"), "--cluster", "east", "--kind", "denial", "--json").CombinedOutput()
	if err != nil {
		t.Fatalf("ca log query: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		var e struct {
			SPIFFEID  string `json:"spiffe_id"`
			CallerID  string `json:"caller_id"`
			ClusterID string `json:"cluster_id"`
			Code      string `json:"code"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if e.ClusterID != "east" {
			t.Fatalf("ca log query --cluster east returned an entry of %q", e.ClusterID)
		}
		if e.Code == "PermissionDenied" {
			seen[e.SPIFFEID+" by "+e.CallerID] = true
		}
	}
	for _, tc := range refusals {
		if !seen[tc.identity+" by "+tc.caller] {
			t.Errorf("%s: no denial in the log for %s by %s; denials of east:\n%s", tc.name, tc.identity, tc.caller, out)
		}
	}
}
