package ca_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/store"
)

const istioCA = "istio-ca"

// reviewCounter counts the TokenReviews a client sends to the API server.
type reviewCounter struct{ n atomic.Int32 }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (c *reviewCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/apis/authentication.k8s.io/v1/tokenreviews") {
			c.n.Add(1)
		}
		return rt.RoundTrip(r)
	})
}

// reviewerClient returns a client that acts as service account "transitca"
// of env's namespace, bound to the system:auth-delegator cluster role as the
// deployment binds it, and counts the TokenReviews it sends.
func reviewerClient(t *testing.T, env *kubetest.Env, counter transportWrapper) kubernetes.Interface {
	t.Helper()
	env.ServiceAccount(t, "transitca")
	ctx := t.Context()
	_, err := env.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "transitca-tokenreview-" + env.Namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:auth-delegator"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "transitca", Namespace: env.Namespace}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	client := serviceAccountClient(t, env, "transitca", counter)
	// RBAC reaches the authorizer through an informer: wait until it lets
	// the account create tokenreviews, without sending one.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: "create", Group: "authentication.k8s.io", Resource: "tokenreviews",
			}},
		}, metav1.CreateOptions{})
		if err == nil && r.Status.Allowed {
			return client
		}
		if time.Now().After(deadline) {
			t.Fatalf("service account transitca may still not create tokenreviews: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// transportWrapper wraps a client's transport, to watch what it sends.
type transportWrapper interface {
	wrap(http.RoundTripper) http.RoundTripper
}

func serviceAccountClient(t *testing.T, env *kubetest.Env, sa string, counter transportWrapper) kubernetes.Interface {
	t.Helper()
	cfg := env.ServiceAccountConfig(t, sa)
	if counter != nil {
		cfg.WrapTransport = counter.wrap
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func newKubeAuthenticator(t *testing.T, client kubernetes.Interface, edit func(*ca.TokenReviewOptions)) *ca.TokenReviewAuthenticator {
	t.Helper()
	opts := ca.TokenReviewOptions{Client: client, TrustDomain: trustDomain, Timeout: 5 * time.Second}
	if edit != nil {
		edit(&opts)
	}
	a, err := ca.NewTokenReviewAuthenticator(opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestTokenReviewKube runs the TokenReview authenticator against a real API
// server: the token istio-agent presents (audience istio-ca, bound to its
// pod) names the service account and the pod; anything else is refused.
func TestTokenReviewKube(t *testing.T) {
	env := kubetest.New(t)
	var reviews reviewCounter
	auth := newKubeAuthenticator(t, reviewerClient(t, env, &reviews), nil)
	env.ServiceAccount(t, "web")
	pod := env.Pod(t, "web-0", "web", "node-a")
	gone := env.Pod(t, "web-1", "web", "node-a")
	goneToken := env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: gone})
	env.DeletePod(t, gone.Name)

	valid := env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: pod})
	tests := []struct {
		name        string
		cred        ca.Credentials
		want        *ca.Caller
		wantSubstr  string // with want nil: the refusal, wrapping ErrUnauthenticated
		wantReviews int32
	}{
		{
			name: "pod-bound istio-ca token",
			cred: ca.Credentials{Token: valid},
			want: &ca.Caller{
				SPIFFEID: spiffe(env.Namespace, "web"), Namespace: env.Namespace, ServiceAccount: "web",
				ClusterID: ca.DefaultCluster, Method: ca.AuthTokenReview, Subject: "system:serviceaccount:" + env.Namespace + ":web",
				PodName: pod.Name, PodUID: string(pod.UID),
			},
			wantReviews: 1,
		},
		{
			name: "token not bound to a pod",
			cred: ca.Credentials{Token: env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}})},
			want: &ca.Caller{
				SPIFFEID: spiffe(env.Namespace, "web"), Namespace: env.Namespace, ServiceAccount: "web",
				ClusterID: ca.DefaultCluster, Method: ca.AuthTokenReview, Subject: "system:serviceaccount:" + env.Namespace + ":web",
			},
			wantReviews: 1,
		},
		{
			name:       "token for the api server's audience",
			cred:       ca.Credentials{Token: env.Token(t, "web", kubetest.TokenOptions{Pod: pod})},
			wantSubstr: "kubernetes rejected the token: [invalid bearer token, token audiences", wantReviews: 1,
		},
		{
			name:       "token for another audience",
			cred:       ca.Credentials{Token: env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{"vault"}, Pod: pod})},
			wantSubstr: "kubernetes rejected the token", wantReviews: 1,
		},
		{
			name:       "token of a deleted pod, never reviewed",
			cred:       ca.Credentials{Token: goneToken},
			wantSubstr: "service account token has been invalidated", wantReviews: 1,
		},
		{
			name:       "clusterid of a cluster not configured",
			cred:       ca.Credentials{Token: valid, ClusterID: "east"},
			wantSubstr: `cluster "east" is not served by this ca`, wantReviews: 0,
		},
		{
			name:       "not a token, never reviewed",
			cred:       ca.Credentials{Token: "not-a-jwt"},
			wantSubstr: "token is not a jwt", wantReviews: 0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := reviews.n.Load()
			got, err := auth.Authenticate(t.Context(), tc.cred)
			if n := reviews.n.Load() - before; n != tc.wantReviews {
				t.Errorf("%d tokenreviews sent, want %d", n, tc.wantReviews)
			}
			if tc.want != nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if *got != *tc.want {
					t.Fatalf("caller\n %+v\nwant\n %+v", *got, *tc.want)
				}
				return
			}
			if !errors.Is(err, ca.ErrUnauthenticated) || !strings.Contains(err.Error(), tc.wantSubstr) {
				t.Fatalf("error = %v; want ErrUnauthenticated containing %q", err, tc.wantSubstr)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// A reviewer without RBAC for tokenreviews is a deployment fault: not
// ErrUnauthenticated (the workload did nothing wrong) and not
// ErrUnavailable (retrying will not help); the message says what to grant.
func TestTokenReviewKubeReviewerWithoutRBAC(t *testing.T) {
	env := kubetest.New(t)
	env.ServiceAccount(t, "unprivileged")
	auth := newKubeAuthenticator(t, serviceAccountClient(t, env, "unprivileged", nil), nil)
	env.ServiceAccount(t, "web")
	pod := env.Pod(t, "web-0", "web", "node-a")
	_, err := auth.Authenticate(t.Context(), ca.Credentials{Token: env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: pod})})
	if err == nil || errors.Is(err, ca.ErrUnauthenticated) || errors.Is(err, ca.ErrUnavailable) ||
		!strings.Contains(err.Error(), "grant its service account system:auth-delegator (403)") {
		t.Fatalf("error = %v; want a configuration error naming system:auth-delegator", err)
	}
}

// A token minted by another cluster's API server (its own service account
// signing key) is refused by ours, even with the same issuer URL, the
// same namespace and service account names and a live pod. Once that other
// API server is gone, reviews sent to it fail with ErrUnavailable, which
// istio-agent retries.
func TestTokenReviewKubeOtherCluster(t *testing.T) {
	t.Parallel()
	env := kubetest.New(t)
	auth := newKubeAuthenticator(t, reviewerClient(t, env, nil), nil)

	other, err := kubetest.Start()
	if err != nil {
		t.Fatalf("second api server: %v", err)
	}
	t.Cleanup(other.Stop)
	otherEnv := kubetest.NewOn(t, other)
	otherEnv.ServiceAccount(t, "web")
	otherPod := otherEnv.Pod(t, "web-0", "web", "node-a")
	foreign := otherEnv.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: otherPod})
	if st := otherEnv.Review(t, foreign, istioCA); !st.Authenticated {
		t.Fatalf("the other api server refuses its own token: %q", st.Error)
	}

	_, err = auth.Authenticate(t.Context(), ca.Credentials{Token: foreign})
	if !errors.Is(err, ca.ErrUnauthenticated) || !strings.Contains(err.Error(), "kubernetes rejected the token") {
		t.Fatalf("another cluster's token: error = %v, want ErrUnauthenticated", err)
	}
	t.Logf("another cluster's token refused: %v", err)

	// The other cluster's API server goes away.
	otherAdmin, err := kubernetes.NewForConfig(other.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	down := newKubeAuthenticator(t, otherAdmin, func(o *ca.TokenReviewOptions) { o.Timeout = 3 * time.Second })
	other.Stop()
	start := time.Now()
	_, err = down.Authenticate(t.Context(), ca.Credentials{Token: foreign})
	if !errors.Is(err, ca.ErrUnavailable) {
		t.Fatalf("api server down: error = %v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("an unreachable api server took %s to report, beyond the 3s timeout", took)
	}
	t.Logf("api server down: %v", err)
}

// A token accepted once stays accepted after its pod is deleted only as
// long as the caches allow: kube-apiserver caches a successful
// authentication for 10s, and ours (disabled here) adds up to its TTL.
// This pins the first of the two delays the README documents.
func TestTokenReviewKubeRevocationDelay(t *testing.T) {
	t.Parallel()
	env := kubetest.New(t)
	auth := newKubeAuthenticator(t, reviewerClient(t, env, nil), nil)
	env.ServiceAccount(t, "web")
	pod := env.Pod(t, "web-0", "web", "node-a")
	token := env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: pod})
	if _, err := auth.Authenticate(t.Context(), ca.Credentials{Token: token}); err != nil {
		t.Fatal(err)
	}
	env.DeletePod(t, pod.Name)
	deleted := time.Now()
	const apiServerCache, slack = 10 * time.Second, 5 * time.Second
	for {
		_, err := auth.Authenticate(t.Context(), ca.Credentials{Token: token})
		if err != nil {
			if !errors.Is(err, ca.ErrUnauthenticated) {
				t.Fatalf("error = %v, want ErrUnauthenticated", err)
			}
			t.Logf("refused %s after its pod was deleted: %v", time.Since(deleted).Round(time.Millisecond), err)
			return
		}
		if time.Since(deleted) > apiServerCache+slack {
			t.Fatalf("token of a pod deleted %s ago is still accepted", time.Since(deleted).Round(time.Second))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cachedPodToken returns a fresh namespace, an authenticator with a 10s
// cache and metrics in reg that reviews through a client watched by
// counter, and a token for it bound to pod web-0.
func cachedPodToken(t *testing.T, counter transportWrapper) (*kubetest.Env, *ca.TokenReviewAuthenticator, *prometheus.Registry, *corev1.Pod, string) {
	t.Helper()
	env := kubetest.New(t)
	client := reviewerClient(t, env, counter)
	reg := prometheus.NewRegistry()
	auth := newKubeAuthenticator(t, client, func(o *ca.TokenReviewOptions) {
		o.CacheTTL = 10 * time.Second
		o.Metrics = ca.NewMetrics(reg, nil)
	})
	env.ServiceAccount(t, "web")
	pod := env.Pod(t, "web-0", "web", "node-a")
	return env, auth, reg, pod, env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: pod})
}

// N requests with one token cost one TokenReview on the API server; the
// metrics count one miss and N-1 hits. Another token is another review.
func TestTokenReviewKubeCache(t *testing.T) {
	var reviews reviewCounter
	env, auth, reg, pod, token := cachedPodToken(t, &reviews)

	const n = 50
	for i := range n {
		c, err := auth.Authenticate(t.Context(), ca.Credentials{Token: token})
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if c.PodUID != string(pod.UID) {
			t.Fatalf("request %d: pod uid %q, want %q", i, c.PodUID, pod.UID)
		}
	}
	if got := reviews.n.Load(); got != 1 {
		t.Fatalf("%d requests with one token sent %d tokenreviews, want 1", n, got)
	}
	checkCounter(t, reg, ca.MetricTokenReviewCache, "result", "hit", n-1)
	checkCounter(t, reg, ca.MetricTokenReviewCache, "result", "miss", 1)

	// A cached token still has to name a configured cluster.
	if _, err := auth.Authenticate(t.Context(), ca.Credentials{Token: token, ClusterID: "east"}); !errors.Is(err, ca.ErrUnauthenticated) {
		t.Fatalf("cached token with an unknown clusterid: error = %v, want ErrUnauthenticated", err)
	}

	other := env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: pod})
	if _, err := auth.Authenticate(t.Context(), ca.Credentials{Token: other}); err != nil {
		t.Fatal(err)
	}
	if got := reviews.n.Load(); got != 2 {
		t.Fatalf("a second token: %d tokenreviews in all, want 2", got)
	}

	// A refusal is not cached: each try asks again.
	wrong := env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{"vault"}, Pod: pod})
	for range 3 {
		if _, err := auth.Authenticate(t.Context(), ca.Credentials{Token: wrong}); !errors.Is(err, ca.ErrUnauthenticated) {
			t.Fatalf("wrong audience: error = %v", err)
		}
	}
	if got := reviews.n.Load(); got != 5 {
		t.Fatalf("three refusals: %d tokenreviews in all, want 5", got)
	}
}

// checkCounter fails t unless the counter with the given label has value
// want.
func checkCounter(t *testing.T, reg *prometheus.Registry, name, label, value string, want float64) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					if got := m.GetCounter().GetValue(); got != want {
						t.Errorf("%s{%s=%q} = %v, want %v", name, label, value, got, want)
					}
					return
				}
			}
		}
	}
	t.Errorf("%s{%s=%q} not exported", name, label, value)
}

// The pod a certificate was issued to is in its log entry: a request with a
// pod-bound token through the whole service lands in a real issuance log
// with the pod's name and UID, and the admin API's form carries them too.
func TestTokenReviewKubePodInLog(t *testing.T) {
	env := kubetest.New(t)
	auth := newKubeAuthenticator(t, reviewerClient(t, env, nil), nil)
	s := newLoggedService(t, func(o *ca.ServiceOptions) { o.Authenticator = ca.NewMultiAuthenticator(nil, auth) })
	env.ServiceAccount(t, "web")
	pod := env.Pod(t, "web-0", "web", "node-a")
	token := env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: pod})

	id := spiffe(env.Namespace, "web")
	csr := csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(id)})
	if err := s.call("192.0.2.10", metadata.Pairs("authorization", "Bearer "+token), csr); err != nil {
		t.Fatalf("issuance: %v", err)
	}
	e := lastEntry(t, s.log)
	if e.Kind != store.KindIssuance || e.SPIFFEID != id || e.AuthMethod != string(ca.AuthTokenReview) {
		t.Fatalf("last entry is %v %s by %s, want the issuance to %s by tokenreview", e.Kind, e.SPIFFEID, e.AuthMethod, id)
	}
	if e.PodName != pod.Name || e.PodUID != string(pod.UID) {
		t.Fatalf("entry names pod %q (uid %q), want %q (uid %q)", e.PodName, e.PodUID, pod.Name, pod.UID)
	}
	if p := ca.EntryToProto(e, nil); p.GetPodName() != pod.Name || p.GetPodUid() != string(pod.UID) {
		t.Fatalf("admin api entry names pod %q (uid %q)", p.GetPodName(), p.GetPodUid())
	}

	// An authenticated caller's denial names its pod too.
	bad := csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(spiffe(env.Namespace, "other"))})
	err := s.call("192.0.2.10", metadata.Pairs("authorization", "Bearer "+token), bad)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("CSR for another identity: %v, want PermissionDenied", err)
	}
	if e := lastEntry(t, s.log); e.Kind != store.KindDenial || e.PodName != pod.Name || e.PodUID != string(pod.UID) {
		t.Fatalf("denial entry: %v, pod %q uid %q; want a denial naming pod %q", e.Kind, e.PodName, e.PodUID, pod.Name)
	}
}

func lastEntry(t *testing.T, l *store.Log) *store.Entry {
	t.Helper()
	size := l.Size()
	if size == 0 {
		t.Fatal("the log is empty")
	}
	e, err := l.Get(context.Background(), size-1)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// blockingCounter counts the TokenReviews a client sends, and the most in
// flight at once, holding each until release is closed.
type blockingCounter struct {
	reviewCounter
	release           chan struct{}
	inFlight, maxSeen atomic.Int32
}

func (c *blockingCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return c.reviewCounter.wrap(roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/apis/authentication.k8s.io/v1/tokenreviews") {
			n := c.inFlight.Add(1)
			defer c.inFlight.Add(-1)
			for {
				m := c.maxSeen.Load()
				if n <= m || c.maxSeen.CompareAndSwap(m, n) {
					break
				}
			}
			<-c.release
		}
		return rt.RoundTrip(r)
	}))
}

// authenticateAll authenticates each token from its own goroutine, all at
// once, and returns the callers in order.
func authenticateAll(t *testing.T, auth *ca.TokenReviewAuthenticator, tokens []string) []*ca.Caller {
	t.Helper()
	callers := make([]*ca.Caller, len(tokens))
	errs := make([]error, len(tokens))
	var wg sync.WaitGroup
	for i, tok := range tokens {
		wg.Go(func() { callers[i], errs[i] = auth.Authenticate(t.Context(), ca.Credentials{Token: tok}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	return callers
}

// N concurrent requests with one token, as the replicas of a restarted pod
// or an agent's retries send them, make one TokenReview: the requests that
// arrive while it is in flight wait for its answer instead of sending their
// own.
func TestTokenReviewKubeConcurrentSameToken(t *testing.T) {
	counter := &blockingCounter{release: make(chan struct{})}
	_, auth, reg, pod, token := cachedPodToken(t, counter)

	const n = 50
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = token
	}
	// Hold the first review until a second one would have been sent.
	go func() {
		for counter.n.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		close(counter.release)
	}()
	for i, c := range authenticateAll(t, auth, tokens) {
		if c.PodUID != string(pod.UID) || c.ServiceAccount != "web" {
			t.Fatalf("request %d: caller %+v, want pod %s of service account web", i, c, pod.UID)
		}
	}
	if got := counter.n.Load(); got != 1 {
		t.Fatalf("%d concurrent requests with one token sent %d tokenreviews, want 1", n, got)
	}
	checkCounter(t, reg, ca.MetricTokenReviewRequests, "result", "authenticated", 1)
}

// The reviews in flight at once are bounded: a storm of distinct tokens
// queues in the daemon instead of piling onto the API server.
func TestTokenReviewKubeConcurrencyBound(t *testing.T) {
	env := kubetest.New(t)
	counter := &blockingCounter{release: make(chan struct{})}
	close(counter.release)
	client := reviewerClient(t, env, counter)
	const limit, n = 3, 30
	auth := newKubeAuthenticator(t, client, func(o *ca.TokenReviewOptions) { o.MaxConcurrentReviews = limit })
	env.ServiceAccount(t, "web")
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}})
	}
	authenticateAll(t, auth, tokens)
	if got := counter.n.Load(); got != n {
		t.Fatalf("%d distinct tokens sent %d tokenreviews, want %d", n, got, n)
	}
	if got := counter.maxSeen.Load(); got > limit {
		t.Fatalf("%d tokenreviews in flight at once, want at most %d", got, limit)
	}
}

// TestTokenReviewKubeScreensTokensBeforeReview: a bearer string that cannot
// be a service-account token costs no TokenReview on the real API server:
// not a JWT (8 KiB of garbage), a header or payload that is not JSON, an
// algorithm that is none or an HMAC, no issuer, an encrypted JWT. With the
// cluster's issuers configured, a well-formed token of another issuer is
// refused without a review too; without them, it is reviewed (and refused
// by the API server). A token the API server minted is still reviewed and
// accepted, with or without the issuers.
func TestTokenReviewKubeScreensTokensBeforeReview(t *testing.T) {
	env := kubetest.New(t)
	var reviews reviewCounter
	client := reviewerClient(t, env, &reviews)
	reg := prometheus.NewRegistry()
	metrics := ca.NewMetrics(reg, nil)
	withIssuers := newKubeAuthenticator(t, client, func(o *ca.TokenReviewOptions) {
		o.Issuers = []string{kubetest.Issuer}
		o.Metrics = metrics
	})
	anyIssuer := newKubeAuthenticator(t, client, func(o *ca.TokenReviewOptions) { o.Metrics = metrics })
	env.ServiceAccount(t, "web")
	pod := env.Pod(t, "web-0", "web", "node-a")
	valid := env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: pod})

	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	sig := b64(strings.Repeat("s", 256))
	claims := `{"iss":"` + kubetest.Issuer + `","sub":"system:serviceaccount:` + env.Namespace + `:web","aud":["istio-ca"],"exp":4102444800}`
	cases := []struct {
		name, token, want      string
		reviewedWithoutIssuers bool
	}{
		{"8 KiB that is not a jwt", strings.Repeat("A", 8<<10), "token is not a jwt: expected 3 dot-separated parts, got 1", false},
		{"8 KiB in three parts, not base64url json", strings.Repeat("A", 4<<10) + "." + strings.Repeat("B", 2<<10) + "." + strings.Repeat("C", 2<<10-2), "token header is not a json object", false},
		{"algorithm none", b64(`{"alg":"none"}`) + "." + b64(claims) + ".", `token algorithm "none" is not allowed`, false},
		{"hmac", b64(`{"alg":"HS256"}`) + "." + b64(claims) + "." + sig, `token algorithm "HS256" is not allowed`, false},
		{"payload not json", b64(`{"alg":"RS256"}`) + "." + b64("not json") + "." + sig, "token payload is not a json object", false},
		{"no issuer", b64(`{"alg":"RS256"}`) + "." + b64(`{"sub":"system:serviceaccount:`+env.Namespace+`:web"}`) + "." + sig, "token names no issuer", false},
		{"encrypted jwt", "a.b.c.d.e", "token is an encrypted jwt", false},
		{"another issuer", b64(`{"alg":"RS256","kid":"k"}`) + "." + b64(`{"iss":"https://attacker.example","sub":"system:serviceaccount:`+env.Namespace+`:web"}`) + "." + sig,
			`token issuer "https://attacker.example" is not this cluster's`, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := reviews.n.Load()
			_, err := withIssuers.Authenticate(t.Context(), ca.Credentials{Token: tc.token})
			if n := reviews.n.Load() - before; n != 0 {
				t.Errorf("with the cluster's issuers: %d tokenreviews sent, want none", n)
			}
			if !errors.Is(err, ca.ErrUnauthenticated) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("with the cluster's issuers: error = %v, want ErrUnauthenticated containing %q", err, tc.want)
			}
			before = reviews.n.Load()
			_, err = anyIssuer.Authenticate(t.Context(), ca.Credentials{Token: tc.token})
			if !errors.Is(err, ca.ErrUnauthenticated) {
				t.Fatalf("without issuers: error = %v, want ErrUnauthenticated", err)
			}
			want := int32(0)
			if tc.reviewedWithoutIssuers {
				want = 1
			}
			if n := reviews.n.Load() - before; n != want {
				t.Errorf("without issuers: %d tokenreviews sent, want %d (%v)", n, want, err)
			}
		})
	}
	checkCounter(t, reg, ca.MetricTokenReviewRequests, "result", "refused", 1)
	for name, a := range map[string]*ca.TokenReviewAuthenticator{"with the cluster's issuers": withIssuers, "without issuers": anyIssuer} {
		before := reviews.n.Load()
		if c, err := a.Authenticate(t.Context(), ca.Credentials{Token: valid}); err != nil || c.PodUID != string(pod.UID) {
			t.Fatalf("%s: the api server's own token: %+v, %v", name, c, err)
		}
		if n := reviews.n.Load() - before; n != 1 {
			t.Errorf("%s: the api server's own token sent %d tokenreviews, want 1", name, n)
		}
	}
	checkCounter(t, reg, ca.MetricTokenReviewRequests, "result", "authenticated", 2)
}
