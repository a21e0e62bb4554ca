package daemon

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/store"
)

// ask sends one CreateCertificate for the identity id with a bearer token
// and a clusterid ("" sends none); impersonate, when set, names the
// identity as a node agent does. It returns the entry the log holds for
// the answer.
func (r *running) ask(t *testing.T, tok, cluster, id string, impersonate bool) (*store.Entry, error) {
	t.Helper()
	var meta *structpb.Struct
	if impersonate {
		var err error
		if meta, err = structpb.NewStruct(map[string]any{ca.ImpersonatedIdentityKey: id}); err != nil {
			t.Fatal(err)
		}
	}
	_, _, callErr := r.createCertificate(t, tok, cluster, id, meta)
	e, err := r.Log().Get(context.Background(), r.Log().Size()-1)
	if err != nil {
		t.Fatal(err)
	}
	return e, callErr
}

func spiffeID(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

// clusterTokens creates service accounts web and ztunnel with a pod each
// on node-a and returns their pod-bound tokens.
func clusterTokens(t *testing.T, env *kubetest.Env) (web, ztunnel string) {
	t.Helper()
	toks := map[string]string{}
	for _, sa := range []string{"web", "ztunnel"} {
		env.ServiceAccount(t, sa)
		pod := env.Pod(t, sa+"-0", sa, "node-a")
		toks[sa] = env.Token(t, sa, kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: pod})
	}
	return toks["web"], toks["ztunnel"]
}

// Two clusters, each with its own API server: east is the daemon's own
// (kubernetes.kubeconfig), west is reached through its clusters[] entry's
// kubeconfig, each as the transitca service account under the shipped
// RBAC. Each cluster's tokens are accepted with its own ID only, and the
// log names the cluster of every entry. ztunnel in west gets a certificate
// for a pod on its node in west (the pods are watched per cluster), not
// with east's ID.
func TestDaemonSeveralClusters(t *testing.T) {
	eastEnv, eastSystem := rbacCluster(t)
	westEnv, westSystem := rbacCluster(t)
	eastWeb, _ := clusterTokens(t, eastEnv)
	westWeb, westZtunnel := clusterTokens(t, westEnv)

	cfg := devConfig(t, t.TempDir())
	cfg.Kubernetes.Kubeconfig = eastSystem.ServiceAccountKubeconfig(t, "transitca")
	cfg.Clusters = []config.Cluster{{ID: "east"}, {ID: "west", Kubeconfig: westSystem.ServiceAccountKubeconfig(t, "transitca")}}
	cfg.Auth.TrustedNodeAccounts = []string{westEnv.Namespace + "/ztunnel"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfg)

	eastID, westID := spiffeID(eastEnv.Namespace, "web"), spiffeID(westEnv.Namespace, "web")
	cases := []struct {
		name, tok, cluster, id string
		impersonate            bool
		code                   codes.Code
	}{
		{"east's token as east", eastWeb, "east", eastID, false, codes.OK},
		{"west's token as west", westWeb, "west", westID, false, codes.OK},
		{"east's token as west", eastWeb, "west", eastID, false, codes.Unauthenticated},
		{"west's token as east", westWeb, "east", westID, false, codes.Unauthenticated},
		{"east's token without a clusterid (Kubernetes is not served)", eastWeb, "", eastID, false, codes.Unauthenticated},
		{"west's ztunnel for web on its node", westZtunnel, "west", westID, true, codes.OK},
		{"west's ztunnel presented as east", westZtunnel, "east", westID, true, codes.Unauthenticated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var e *store.Entry
			var err error
			// The pod index fills within a moment of the start.
			waitFor(t, 10*time.Second, func() error {
				e, err = d.ask(t, tc.tok, tc.cluster, tc.id, tc.impersonate)
				if status.Code(err) == codes.Unavailable {
					return err
				}
				return nil
			})
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %s", err, tc.code)
			}
			if tc.code != codes.OK {
				// The denial names the cluster claimed (none here).
				if e.Kind != store.KindDenial || e.ClusterID != tc.cluster {
					t.Fatalf("entry %v of cluster %q, want a denial of cluster %q", e.Kind, e.ClusterID, tc.cluster)
				}
				return
			}
			if e.Kind != store.KindIssuance || e.SPIFFEID != tc.id || e.ClusterID != tc.cluster {
				t.Fatalf("entry %v for %s in cluster %q, want an issuance for %s in %s", e.Kind, e.SPIFFEID, e.ClusterID, tc.id, tc.cluster)
			}
		})
	}
	for cluster, want := range map[string]int{"east": 1, "west": 2} {
		got, _, err := d.Log().Query(t.Context(), store.Query{Cluster: cluster, Kind: ptr(store.KindIssuance)})
		if err != nil || len(got) != want {
			t.Errorf("issuances of cluster %s: %d (%v), want %d", cluster, len(got), err, want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// Ambient mode on a single-cluster configuration (auth.tokenreview, no
// clusters:), as the transitca service account under the shipped RBAC:
// ztunnel gets web's certificate for web's pod on its node and is refused
// db's, whose pod is on another node; the denial names both identities.
func TestDaemonAmbientSingleCluster(t *testing.T) {
	env, system := rbacCluster(t)
	_, ztunnel := clusterTokens(t, env)
	env.ServiceAccount(t, "db")
	env.Pod(t, "db-0", "db", "node-b")

	cfg := devConfig(t, t.TempDir())
	cfg.Kubernetes.Kubeconfig = system.ServiceAccountKubeconfig(t, "transitca")
	cfg.Auth.TokenReview.Enabled = true
	cfg.Auth.TrustedNodeAccounts = []string{env.Namespace + "/ztunnel"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfg)
	web, db, zt := spiffeID(env.Namespace, "web"), spiffeID(env.Namespace, "db"), spiffeID(env.Namespace, "ztunnel")

	var e *store.Entry
	var err error
	waitFor(t, 10*time.Second, func() error {
		if e, err = d.ask(t, ztunnel, "", web, true); status.Code(err) == codes.Unavailable {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ztunnel asking for web on its node: %v", err)
	}
	if e.Kind != store.KindIssuance || e.SPIFFEID != web || e.CallerID != zt || e.ClusterID != ca.DefaultCluster {
		t.Fatalf("entry %v for %s by %s in %q, want an issuance for %s by %s in %s", e.Kind, e.SPIFFEID, e.CallerID, e.ClusterID, web, zt, ca.DefaultCluster)
	}
	e, err = d.ask(t, ztunnel, "", db, true)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ztunnel asking for db, on another node: %v, want PermissionDenied", err)
	}
	if e.Kind != store.KindDenial || e.SPIFFEID != db || e.CallerID != zt {
		t.Fatalf("entry %v for %s by %s, want a denial for %s by %s", e.Kind, e.SPIFFEID, e.CallerID, db, zt)
	}
}
