package daemon

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/kubetest"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// opsAdminToken creates, in env's cluster, the service account admin of
// namespace ops with a pod on node-a, and returns a pod-bound token for
// it: spiffe://cluster.local/ns/ops/sa/admin, whichever cluster mints it.
func opsAdminToken(t *testing.T, env *kubetest.Env) string {
	t.Helper()
	ops := &kubetest.Env{Server: env.Server, Client: env.Client, Namespace: "ops"}
	ops.CreateNamespace(t, "ops")
	ops.ServiceAccount(t, "admin")
	pod := ops.Pod(t, "admin-0", "admin", "node-a")
	return ops.Token(t, "admin", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: pod})
}

// askCertificate sends CreateCertificate as d.ask does, waiting out the
// moment after the start when the clusters' pods are not listed yet.
func askCertificate(t *testing.T, d *running, tok, cluster, id string, impersonate bool) (*store.Entry, error) {
	t.Helper()
	var e *store.Entry
	var err error
	waitFor(t, 10*time.Second, func() error {
		if e, err = d.ask(t, tok, cluster, id, impersonate); status.Code(err) == codes.Unavailable {
			return err
		}
		return nil
	})
	return e, err
}

// An admin identity is a certificate only the clusters admin.clusters
// names may ask for, by default the CA's own: two clusters, each with its
// own API server, where the CA's own is east. A token that west's API
// server mints for ops/admin, the configured admin identity, is refused
// its certificate (PermissionDenied, recorded with cluster west), so it
// never reaches the admin API; east's token for the same service account
// gets one that calls the admin API. With admin.clusters naming west too,
// west's token gets one.
func TestAdminIdentityBoundToItsClusters(t *testing.T) {
	eastEnv, eastSystem := rbacCluster(t)
	westEnv, westSystem := rbacCluster(t)
	eastAdmin, westAdmin := opsAdminToken(t, eastEnv), opsAdminToken(t, westEnv)
	const adminID = "spiffe://cluster.local/ns/ops/sa/admin"

	newConfig := func() *config.Config {
		cfg := devConfig(t, t.TempDir())
		cfg.Kubernetes.Kubeconfig = eastSystem.ServiceAccountKubeconfig(t, "transitca")
		cfg.Clusters = []config.Cluster{{ID: "east"}, {ID: "west", Kubeconfig: westSystem.ServiceAccountKubeconfig(t, "transitca")}}
		cfg.Admin.Identities = []string{adminID}
		return cfg
	}
	cfg := newConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfg)

	e, err := askCertificate(t, d, westAdmin, "west", adminID, false)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("west's token for the admin identity: %v, want PermissionDenied", err)
	}
	if !strings.Contains(status.Convert(err).Message(), "admin identity") || e.Kind != store.KindDenial || e.SPIFFEID != adminID || e.ClusterID != "west" {
		t.Fatalf("west's token for the admin identity: %q; the log holds a %v for %s of cluster %q; want a recorded denial of an admin identity to west",
			status.Convert(err).Message(), e.Kind, e.SPIFFEID, e.ClusterID)
	}

	key, resp, err := d.createCertificate(t, eastAdmin, "east", adminID, nil)
	if err != nil {
		t.Fatalf("east's token for the admin identity: %v", err)
	}
	w := &workload{key: key}
	for _, elem := range resp.GetCertChain()[:len(resp.GetCertChain())-1] {
		w.chain = append(w.chain, parsePEM(t, elem)...)
	}
	if _, err := d.admin(t, w).Status(context.Background(), &adminv1.StatusRequest{}); err != nil {
		t.Fatalf("the admin identity of east calling the admin API: %v", err)
	}
	d.stop(t)

	// Named, west may ask too.
	cfg = withYAML(t, newConfig(), "admin:\n  clusters: [east, west]\n")
	d = startDaemon(t, cfg)
	if e, err := askCertificate(t, d, westAdmin, "west", adminID, false); err != nil || e.Kind != store.KindIssuance || e.ClusterID != "west" {
		t.Fatalf("west's token for the admin identity with admin.clusters [east, west]: %v (entry %v of %q)", err, e.Kind, e.ClusterID)
	}
}

// A trusted node agent (ztunnel) asks for the identities of pods on its
// node, and is refused those that are protected: the admin identities
// (operator and reader), istiod's, and identities of the privileged tier,
// every refusal recorded with both identities; a workload's identity it
// still gets. auth.allow_protected_impersonation lets it have the ones it
// names, and only those.
func TestImpersonationNeverYieldsProtectedIdentities(t *testing.T) {
	env, system := rbacCluster(t)
	_, ztunnel := clusterTokens(t, env)
	for _, sa := range []string{"admin", "auditor", "istiod", "payments"} {
		env.ServiceAccount(t, sa)
		env.Pod(t, sa+"-0", sa, "node-a")
	}
	id := func(sa string) string { return spiffeID(env.Namespace, sa) }

	newConfig := func() *config.Config {
		cfg := devConfig(t, t.TempDir())
		cfg.Kubernetes.Kubeconfig = system.ServiceAccountKubeconfig(t, "transitca")
		cfg.Auth.TokenReview.Enabled = true
		cfg.Auth.TrustedNodeAccounts = []string{env.Namespace + "/ztunnel"}
		cfg.Admin.Identities = []string{id("admin")}
		// istiod's identity is the one of kubernetes.istiod, whether or not
		// transitca writes its certificate.
		cfg.Kubernetes.Istiod.Enabled, cfg.Kubernetes.Istiod.Namespace = false, env.Namespace
		cfg.Policy = append([]config.Rule{{Tier: "privileged", Namespaces: []string{env.Namespace}, ServiceAccounts: []string{"payments"}}}, cfg.Policy...)
		return cfg
	}
	cfg := newConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfg)
	ask := func(d *running, sa string) (*store.Entry, error) {
		t.Helper()
		return askCertificate(t, d, ztunnel, "", id(sa), true)
	}
	refused := func(d *running, sa, why string) {
		t.Helper()
		e, err := ask(d, sa)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), why) {
			t.Fatalf("ztunnel asking for %s: %v, want PermissionDenied saying %q", sa, err, why)
		}
		if e.Kind != store.KindDenial || e.SPIFFEID != id(sa) || e.CallerID != id("ztunnel") {
			t.Fatalf("ztunnel asking for %s: the log holds a %v for %s by %s, want a denial for %s by %s", sa, e.Kind, e.SPIFFEID, e.CallerID, id(sa), id("ztunnel"))
		}
	}
	allowed := func(d *running, sa string) {
		t.Helper()
		if e, err := ask(d, sa); err != nil || e.Kind != store.KindIssuance || e.SPIFFEID != id(sa) || e.CallerID != id("ztunnel") {
			t.Fatalf("ztunnel asking for %s on its node: %v", sa, err)
		}
	}
	allowed(d, "web")
	refused(d, "admin", "admin identity")
	refused(d, "istiod", "istiod")
	refused(d, "payments", "privileged")
	d.stop(t)

	cfg = withYAML(t, newConfig(), `
admin:
  readers: [`+id("auditor")+`]
auth:
  allow_protected_impersonation: ["`+id("pay*")+`"]
`)
	d = startDaemon(t, cfg)
	allowed(d, "payments")
	refused(d, "auditor", "admin identity")
	refused(d, "admin", "admin identity")
	refused(d, "istiod", "istiod")
}
