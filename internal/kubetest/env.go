package kubetest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/transitca/transitca/internal/testserver"
)

// callLimit bounds each API call a helper makes.
const callLimit = 30 * time.Second

// shared is the package's shared server.
var shared = testserver.New("kubetest", Start)

// Main runs a package's tests with one shared API server, started on first
// use by Shared and stopped when the tests end. Call it from TestMain.
func Main(m *testing.M) { shared.Main(m) }

// Shared returns the package's shared server, starting it on first use. The
// test fails, naming what went wrong, when the server cannot be started.
func Shared(tb testing.TB) *Server {
	tb.Helper()
	return shared.Get(tb)
}

// Env is a test's own corner of an API server: an admin client and a fresh
// namespace. The namespace is left behind when the test ends: without a
// controller manager nothing would finish deleting it, and the server dies
// with the test process.
type Env struct {
	Server    *Server
	Client    kubernetes.Interface // the admin user's clientset
	Namespace string
}

// New creates a fresh namespace for the test on the package's shared server.
func New(tb testing.TB) *Env {
	tb.Helper()
	return NewOn(tb, Shared(tb))
}

// NewOn is New on a given server.
func NewOn(tb testing.TB, s *Server) *Env {
	tb.Helper()
	c, err := s.AdminClient()
	if err != nil {
		tb.Fatalf("kubetest: admin client: %v", err)
	}
	env := &Env{Server: s, Client: c}
	env.Namespace = env.CreateNamespace(tb, "t-"+randHex(5)).Name
	return env
}

// CreateNamespace creates a namespace. It has no default service account:
// the controller that would make one does not run.
func (e *Env) CreateNamespace(tb testing.TB, name string) *corev1.Namespace {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), callLimit)
	defer cancel()
	ns, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("kubetest: create namespace %s: %v", name, err)
	}
	return ns
}

// ServiceAccount creates a service account in the test's namespace.
func (e *Env) ServiceAccount(tb testing.TB, name string) *corev1.ServiceAccount {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), callLimit)
	defer cancel()
	sa, err := e.Client.CoreV1().ServiceAccounts(e.Namespace).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("kubetest: create service account %s/%s: %v", e.Namespace, name, err)
	}
	return sa
}

// Pod creates a pod in the test's namespace that runs as the service account
// on the named node. No kubelet runs it: it stays Pending, an object that
// tokens can be bound to. The node need not exist.
func (e *Env) Pod(tb testing.TB, name, serviceAccount, nodeName string) *corev1.Pod {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), callLimit)
	defer cancel()
	pod, err := e.Client.CoreV1().Pods(e.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: serviceAccount,
			NodeName:           nodeName,
			Containers:         []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("kubetest: create pod %s/%s: %v", e.Namespace, name, err)
	}
	return pod
}

// DeletePod deletes a pod at once, as a kubelet confirming its end would:
// with a grace period a pod bound to a node would stay, terminating, until
// its kubelet removed it, and none runs here.
func (e *Env) DeletePod(tb testing.TB, name string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), callLimit)
	defer cancel()
	if err := e.Client.CoreV1().Pods(e.Namespace).Delete(ctx, name, *metav1.NewDeleteOptions(0)); err != nil {
		tb.Fatalf("kubetest: delete pod %s/%s: %v", e.Namespace, name, err)
	}
}

// TokenOptions shape a token minted by Token.
type TokenOptions struct {
	// Audiences are the token's aud claim; empty means the API server's own
	// audience, Issuer.
	Audiences []string
	// Pod, when set, binds the token to the pod (its name and UID): the
	// token is valid only while that pod exists, and TokenReview reports
	// the pod in the user's extra fields.
	Pod *corev1.Pod
	// Expiration is the token's requested lifetime; zero means an hour. The
	// API server refuses less than ten minutes.
	Expiration time.Duration
}

// Token mints a projected service account token through the TokenRequest
// API, as the kubelet does for a pod's projected token volume.
func (e *Env) Token(tb testing.TB, serviceAccount string, opts TokenOptions) string {
	tb.Helper()
	exp := opts.Expiration
	if exp == 0 {
		exp = time.Hour
	}
	secs := int64(exp / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         opts.Audiences,
		ExpirationSeconds: &secs,
	}}
	if opts.Pod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: opts.Pod.Name, UID: opts.Pod.UID,
		}
	}
	ctx, cancel := context.WithTimeout(tb.Context(), callLimit)
	defer cancel()
	resp, err := e.Client.CoreV1().ServiceAccounts(e.Namespace).CreateToken(ctx, serviceAccount, req, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("kubetest: token for service account %s/%s: %v", e.Namespace, serviceAccount, err)
	}
	return resp.Status.Token
}

// Review asks the TokenReview API, as the admin, whether the token is valid
// for the audiences (empty: the API server's own), and returns its answer.
func (e *Env) Review(tb testing.TB, token string, audiences ...string) authenticationv1.TokenReviewStatus {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), callLimit)
	defer cancel()
	resp, err := e.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("kubetest: token review: %v", err)
	}
	return resp.Status
}

// ServiceAccountConfig returns a client configuration that acts as the
// service account, with a fresh token for the API server's audience. RBAC
// decides what it may do.
func (e *Env) ServiceAccountConfig(tb testing.TB, serviceAccount string) *rest.Config {
	tb.Helper()
	return e.Server.Config(e.Token(tb, serviceAccount, TokenOptions{}))
}

// ServiceAccountKubeconfig writes a kubeconfig file that acts as the service
// account in the test's namespace (a fresh token for the API server's
// audience, valid for an hour) and returns its path, under tb.TempDir().
func (e *Env) ServiceAccountKubeconfig(tb testing.TB, serviceAccount string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), serviceAccount+".kubeconfig")
	if err := e.Server.WriteKubeconfig(path, e.Token(tb, serviceAccount, TokenOptions{}), e.Namespace); err != nil {
		tb.Fatalf("kubetest: write kubeconfig: %v", err)
	}
	return path
}
