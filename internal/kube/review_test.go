package kube

import (
	"path/filepath"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/internal/kubetest"
)

// The TokenReview clientset has no client-side rate limit, unlike the
// client a kubeconfig gives by default (5 requests/s), and reviews tokens
// under the shipped RBAC.
func TestReviewClientset(t *testing.T) {
	c := newCluster(t)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	token := c.system.Token(t, "transitca", kubetest.TokenOptions{})
	if err := c.env.Server.WriteKubeconfig(path, token, "istio-system"); err != nil {
		t.Fatal(err)
	}
	client, err := NewClient(path, "transitca/test")
	if err != nil {
		t.Fatal(err)
	}
	if client.Clientset.(*kubernetes.Clientset).AuthenticationV1().RESTClient().GetRateLimiter() == nil {
		t.Fatal("the kubeconfig's own client has no rate limiter; the test no longer shows the default")
	}
	rc, err := client.ReviewClientset()
	if err != nil {
		t.Fatal(err)
	}
	if rl := rc.(*kubernetes.Clientset).AuthenticationV1().RESTClient().GetRateLimiter(); rl != nil {
		t.Fatalf("the tokenreview client is rate limited (%T)", rl)
	}
	c.env.ServiceAccount(t, "web")
	workload := c.env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{"istio-ca"}})
	tr, err := rc.AuthenticationV1().TokenReviews().Create(t.Context(), &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: workload, Audiences: []string{"istio-ca"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Status.Authenticated {
		t.Fatalf("token not authenticated: %s", tr.Status.Error)
	}
}
