package ca_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/kube"
	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

// podIndex starts a pod index over client and waits until it has listed.
func podIndex(t *testing.T, client kubernetes.Interface) *kube.PodIndex {
	t.Helper()
	idx, err := kube.NewPodIndex(client, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); idx.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if !idx.WaitForSync(wctx) {
		t.Fatal("pod index did not sync")
	}
	return idx
}

// waitFor polls cond for up to 10 seconds: the index learns of pods through
// a watch.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// impersonating sends a request as a node agent does: its own token, and
// the identity it asks for in the request's metadata.
func (s *loggedService) impersonating(token, identity, csr string) (*pb.IstioCertificateResponse, error) {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
	ctx = peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("192.0.2.20"), Port: 40000}})
	md, err := structpb.NewStruct(map[string]any{ca.ImpersonatedIdentityKey: identity})
	if err != nil {
		return nil, err
	}
	return s.svc.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: 3600, Metadata: md})
}

// TestImpersonationKube runs ambient mode's node authorization against a
// real API server with real pods and pod-bound tokens: ztunnel on node A
// gets a certificate for an identity that has a pod on node A, with that
// identity's tier and a log entry naming both; it is refused, and the
// denial names both, for an identity with no pod on node A, for a caller
// that is not a trusted node account, and for a CSR that names another
// identity. A pod that has terminated no longer counts.
func TestImpersonationKube(t *testing.T) {
	env := kubetest.New(t)
	auth := newKubeAuthenticator(t, reviewerClient(t, env, nil), nil)
	idx := podIndex(t, env.Client)
	nodes, err := ca.NewNodeAuthorizer([]string{env.Namespace + "/ztunnel"}, map[string]ca.NodePods{ca.DefaultCluster: idx})
	if err != nil {
		t.Fatal(err)
	}
	// web is privileged, so that its tier is told from ztunnel's; a
	// privileged identity is protected, so it is named as one node
	// agents may still be issued.
	policy := issuer.DefaultPolicy()
	policy.Rules = append([]issuer.Rule{{Tier: issuer.TierPrivileged, ServiceAccounts: []string{"web"}}}, policy.Rules...)
	s := newLoggedService(t, func(o *ca.ServiceOptions) {
		o.Authenticator = ca.NewMultiAuthenticator(nil, auth)
		o.Nodes = nodes
		o.Policy = policy
		o.Protected = ca.Protected{Allow: []string{spiffe(env.Namespace, "web")}}
	})
	for _, sa := range []string{"ztunnel", "web", "db", "rogue"} {
		env.ServiceAccount(t, sa)
	}
	zt := env.Pod(t, "ztunnel-a", "ztunnel", "node-a")
	web := env.Pod(t, "web-0", "web", "node-a")
	env.Pod(t, "db-0", "db", "node-b")
	rogue := env.Pod(t, "rogue-a", "rogue", "node-a")
	waitFor(t, "the pods in the index", func() bool {
		return idx.ServiceAccountOnNode("node-a", env.Namespace, "web") && idx.ServiceAccountOnNode("node-b", env.Namespace, "db")
	})
	ztToken := env.Token(t, "ztunnel", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: zt})
	rogueToken := env.Token(t, "rogue", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: rogue})
	ztID, webID, dbID := spiffe(env.Namespace, "ztunnel"), spiffe(env.Namespace, "web"), spiffe(env.Namespace, "db")

	resp, err := s.impersonating(ztToken, webID, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(webID)}))
	if err != nil {
		t.Fatalf("ztunnel on node-a asking for web (a pod on node-a): %v", err)
	}
	leaf := parseChain(t, resp.GetCertChain())[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != webID {
		t.Fatalf("leaf names %v, want only %s", leaf.URIs, webID)
	}
	if i := slices.IndexFunc(leaf.Extensions, func(e pkix.Extension) bool { return e.Id.String() == "2.5.29.17" }); i < 0 || !leaf.Extensions[i].Critical {
		t.Fatal("the leaf's subjectAltName extension is missing or not critical (its subject is empty)")
	}
	e := lastEntry(t, s.log)
	switch {
	case e.Kind != store.KindIssuance || e.SPIFFEID != webID || e.Namespace != env.Namespace || e.ServiceAccount != "web":
		t.Fatalf("entry: %v for %s (%s/%s), want an issuance for %s", e.Kind, e.SPIFFEID, e.Namespace, e.ServiceAccount, webID)
	case e.CallerID != ztID || e.PodName != zt.Name || e.PodUID != string(zt.UID) || e.CallerNode != "node-a":
		t.Fatalf("entry names caller %s, pod %s (%s) on %q; want %s, pod %s (%s) on node-a", e.CallerID, e.PodName, e.PodUID, e.CallerNode, ztID, zt.Name, zt.UID)
	case e.Tier != issuer.TierPrivileged:
		t.Fatalf("entry tier %q, want web's tier %q, not ztunnel's", e.Tier, issuer.TierPrivileged)
	}

	cases := []struct {
		name, token, identity, caller string
		csrFor, msg                   string
	}{
		{"identity with no pod on the caller's node", ztToken, dbID, ztID, dbID, "no pod of service account " + env.Namespace + "/db runs on its node \"node-a\""},
		{"caller not a trusted node account", rogueToken, webID, spiffe(env.Namespace, "rogue"), webID, "is not a trusted node account"},
		{"CSR names another identity", ztToken, webID, ztID, dbID, "but " + ztID + " asked for " + webID},
		{"identity in another trust domain", ztToken, "spiffe://other.example/ns/" + env.Namespace + "/sa/web", ztID, webID, "outside its trust domain"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.impersonating(tc.token, tc.identity, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(tc.csrFor)}))
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), tc.msg) {
				t.Fatalf("got %v, want PermissionDenied saying %q", err, tc.msg)
			}
			e := lastEntry(t, s.log)
			if e.Kind != store.KindDenial || e.SPIFFEID != tc.identity || e.CallerID != tc.caller {
				t.Fatalf("entry: %v for %s by %s; want a denial for %s by %s", e.Kind, e.SPIFFEID, e.CallerID, tc.identity, tc.caller)
			}
		})
	}

	// Once web's only pod on node-a has terminated, ztunnel may no longer
	// ask for web.
	web.Status.Phase = corev1.PodSucceeded
	if _, err := env.Client.CoreV1().Pods(env.Namespace).UpdateStatus(t.Context(), web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the terminated pod to leave the index", func() bool {
		return !idx.ServiceAccountOnNode("node-a", env.Namespace, "web")
	})
	if _, err := s.impersonating(ztToken, webID, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(webID)})); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("asking for web after its pod terminated: %v, want PermissionDenied", err)
	}
}

// deletePod deletes a pod with a grace period, as kubectl delete does: the
// pod stays, terminating, with its deletionTimestamp grace seconds ahead,
// until its kubelet confirms its end, and none runs here (as when a node
// is lost). It returns the pod as the API then has it.
func deletePod(t *testing.T, env *kubetest.Env, name string, grace int64) *corev1.Pod {
	t.Helper()
	if err := env.Client.CoreV1().Pods(env.Namespace).Delete(t.Context(), name, *metav1.NewDeleteOptions(grace)); err != nil {
		t.Fatal(err)
	}
	p, err := env.Client.CoreV1().Pods(env.Namespace).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("pod %s after a graceful delete: %v", name, err)
	}
	if p.DeletionTimestamp == nil {
		t.Fatalf("pod %s has no deletionTimestamp after a graceful delete", name)
	}
	return p
}

// podWithFinalizer creates a pod on node that a finalizer keeps in the API
// after its deletion, terminating; the finalizer is removed when the test
// ends.
func podWithFinalizer(t *testing.T, env *kubetest.Env, name, sa, node string) *corev1.Pod {
	t.Helper()
	pods := env.Client.CoreV1().Pods(env.Namespace)
	p, err := pods.Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Finalizers: []string{"transitca.test/hold"}},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cur, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return
		}
		cur.Finalizers = nil
		_, _ = pods.Update(ctx, cur, metav1.UpdateOptions{})
	})
	return p
}

// TestImpersonationKubeTerminatingPods: a pod that is being deleted counts
// for the node check only until its deletionTimestamp (the end of its
// grace period). Past it the pod is gone for authorization, although the
// API still lists it: a lost node's kubelet never confirms the end, and a
// finalizer holds the object. This holds for the identity asked for and
// for the node agent's own pod.
func TestImpersonationKubeTerminatingPods(t *testing.T) {
	env := kubetest.New(t)
	auth := newKubeAuthenticator(t, reviewerClient(t, env, nil), nil)
	idx := podIndex(t, env.Client)
	nodes, err := ca.NewNodeAuthorizer([]string{env.Namespace + "/ztunnel"}, map[string]ca.NodePods{ca.DefaultCluster: idx})
	if err != nil {
		t.Fatal(err)
	}
	s := newLoggedService(t, func(o *ca.ServiceOptions) {
		o.Authenticator = ca.NewMultiAuthenticator(nil, auth)
		o.Nodes = nodes
	})
	for _, sa := range []string{"ztunnel", "web", "api", "db"} {
		env.ServiceAccount(t, sa)
	}
	zt := podWithFinalizer(t, env, "ztunnel-a", "ztunnel", "node-a")
	env.Pod(t, "web-0", "web", "node-a")
	podWithFinalizer(t, env, "api-0", "api", "node-a")
	env.Pod(t, "db-0", "db", "node-a")
	waitFor(t, "the pods in the index", func() bool {
		return idx.ServiceAccountOnNode("node-a", env.Namespace, "web") && idx.ServiceAccountOnNode("node-a", env.Namespace, "api") &&
			idx.ServiceAccountOnNode("node-a", env.Namespace, "db")
	})
	ztToken := env.Token(t, "ztunnel", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: zt})
	ask := func(sa string) error {
		id := spiffe(env.Namespace, sa)
		_, err := s.impersonating(ztToken, id, csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(id)}))
		return err
	}
	for _, sa := range []string{"web", "api", "db"} {
		if err := ask(sa); err != nil {
			t.Fatalf("ztunnel asking for %s with its pod running on node-a: %v", sa, err)
		}
	}

	// api-0, held by its finalizer, deleted with no grace: gone at once.
	deletePod(t, env, "api-0", 0)
	// web-0 deleted with a grace period: still counts during it, not after.
	const grace = 8
	web := deletePod(t, env, "web-0", grace)
	noPod := "no pod of service account " + env.Namespace + "/"
	refused := func(sa string) func() bool {
		return func() bool {
			err := ask(sa)
			return status.Code(err) == codes.PermissionDenied && strings.Contains(status.Convert(err).Message(), noPod+sa+" runs on its node")
		}
	}
	waitFor(t, "api-0, deleted with no grace, to stop counting", refused("api"))
	if time.Until(web.DeletionTimestamp.Time) > time.Second {
		if err := ask("web"); err != nil {
			t.Fatalf("ztunnel asking for web during web-0's grace period (until %s): %v", web.DeletionTimestamp.Format(time.RFC3339), err)
		}
	} else {
		t.Logf("web-0's grace period had nearly run out (until %s) before it could be checked", web.DeletionTimestamp.Format(time.RFC3339))
	}
	deadline := time.Now().Add(grace*time.Second + 15*time.Second)
	for !refused("web")() {
		if time.Now().After(deadline) {
			t.Fatalf("ztunnel may still ask for web at %s, past web-0's deletionTimestamp %s", time.Now().Format(time.RFC3339), web.DeletionTimestamp.Format(time.RFC3339))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := env.Client.CoreV1().Pods(env.Namespace).Get(t.Context(), "web-0", metav1.GetOptions{}); err != nil {
		t.Fatalf("web-0 should still be in the API, terminating: %v", err)
	}

	// The node agent's own pod terminated (its token still passes
	// TokenReview for a minute past the deletionTimestamp): its node no
	// longer vouches for anything.
	deletePod(t, env, zt.Name, 0)
	waitFor(t, "ztunnel's own terminated pod to stop counting", func() bool {
		err := ask("db")
		return status.Code(err) == codes.PermissionDenied && strings.Contains(status.Convert(err).Message(), "its pod "+env.Namespace+"/"+zt.Name+" is not running")
	})
	e := lastEntry(t, s.log)
	if e.Kind != store.KindDenial || e.CallerID != spiffe(env.Namespace, "ztunnel") {
		t.Fatalf("entry: %v by %s, want a denial by ztunnel", e.Kind, e.CallerID)
	}
}
