package kubetest

import (
	"context"
	"slices"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) { Main(m) }

const istioCA = "istio-ca"

// The server is the pinned release, and reports how long it took to start.
func TestServerVersion(t *testing.T) {
	env := New(t)
	t.Logf("etcd and kube-apiserver ready in %s", env.Server.StartDuration.Round(time.Millisecond))
	v, err := env.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != Version {
		t.Errorf("server version %s, want %s", v.GitVersion, Version)
	}
}

// A token minted for a pod with audience istio-ca is what istio-agent
// presents; the TokenReview API accepts it for istio-ca only, names the
// service account, and reports the pod it is bound to.
func TestPodBoundTokenReview(t *testing.T) {
	env := New(t)
	env.ServiceAccount(t, "web")
	pod := env.Pod(t, "web-0", "web", "node-a")
	token := env.Token(t, "web", TokenOptions{Audiences: []string{istioCA}, Pod: pod, Expiration: 10 * time.Minute})

	st := env.Review(t, token, istioCA)
	if !st.Authenticated {
		t.Fatalf("pod-bound istio-ca token refused: %q", st.Error)
	}
	if want := "system:serviceaccount:" + env.Namespace + ":web"; st.User.Username != want {
		t.Errorf("username %q, want %q", st.User.Username, want)
	}
	for key, want := range map[string]string{
		"authentication.kubernetes.io/pod-name":  pod.Name,
		"authentication.kubernetes.io/pod-uid":   string(pod.UID),
		"authentication.kubernetes.io/node-name": "node-a",
	} {
		if got := st.User.Extra[key]; !slices.Equal(got, authenticationv1.ExtraValue{want}) {
			t.Errorf("extra %s = %q, want [%q]", key, got, want)
		}
	}
	if !slices.Equal(st.Audiences, []string{istioCA}) {
		t.Errorf("audiences %q, want [%q]", st.Audiences, istioCA)
	}

	// Neither audience stands in for the other.
	for _, tc := range []struct {
		name      string
		audiences []string // of the token
		reviewFor []string // asked of TokenReview; empty: the API server's own
	}{
		{"other audience for istio-ca", []string{"other"}, []string{istioCA}},
		{"api server audience for istio-ca", nil, []string{istioCA}},
		{"istio-ca for the api server", []string{istioCA}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := env.Token(t, "web", TokenOptions{Audiences: tc.audiences, Pod: pod})
			if st := env.Review(t, tok, tc.reviewFor...); st.Authenticated {
				t.Errorf("token for %q accepted for %q as %q", tc.audiences, tc.reviewFor, st.User.Username)
			}
		})
	}
}

// Deleting the pod revokes the tokens bound to it, though not at once: the
// API server looks the pod up in its informer cache, and it caches a
// successful authentication for 10 s (TokenSuccessCacheTTL, not a flag), so
// a token it accepted just before is accepted up to 10 s longer.
func TestTokenOfDeletedPodRefused(t *testing.T) {
	env := New(t)
	env.ServiceAccount(t, "web")
	pod := env.Pod(t, "web-0", "web", "node-a")
	reviewed := env.Token(t, "web", TokenOptions{Audiences: []string{istioCA}, Pod: pod})
	fresh := env.Token(t, "web", TokenOptions{Audiences: []string{istioCA}, Pod: pod})
	if st := env.Review(t, reviewed, istioCA); !st.Authenticated {
		t.Fatalf("token refused while its pod exists: %q", st.Error)
	}

	env.DeletePod(t, pod.Name)
	deleted := time.Now()
	for _, tc := range []struct {
		name  string
		token string
	}{
		{"not reviewed before", fresh},
		{"reviewed before", reviewed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for {
				st := env.Review(t, tc.token, istioCA)
				if !st.Authenticated {
					t.Logf("refused %s after the pod was deleted: %q", time.Since(deleted).Round(time.Millisecond), st.Error)
					return
				}
				if time.Since(deleted) > 30*time.Second {
					t.Fatalf("token of a pod deleted %s ago still accepted as %q", time.Since(deleted).Round(time.Second), st.User.Username)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// RBAC is enforced for a service account acting through a kubeconfig: it may
// list configmaps only where a RoleBinding lets it.
func TestServiceAccountRBAC(t *testing.T) {
	env := New(t)
	env.ServiceAccount(t, "reader")
	other := env.CreateNamespace(t, "t-"+randHex(5)).Name

	cfg, err := clientcmd.BuildConfigFromFlags("", env.ServiceAccountKubeconfig(t, "reader"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()

	who, err := c.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := "system:serviceaccount:" + env.Namespace + ":reader"; who.Status.UserInfo.Username != want {
		t.Errorf("kubeconfig acts as %q, want %q", who.Status.UserInfo.Username, want)
	}

	list := func(ns string) error {
		_, err := c.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		return err
	}
	if err := list(env.Namespace); !apierrors.IsForbidden(err) {
		t.Fatalf("list configmaps without a role: got %v, want Forbidden", err)
	}

	_, err = env.Client.RbacV1().Roles(env.Namespace).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "configmap-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.Client.RbacV1().RoleBindings(env.Namespace).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "configmap-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: env.Namespace, Name: "reader"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// The authorizer reads roles from its informer cache: the binding takes
	// effect shortly after it is created.
	bound := time.Now()
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		err := list(env.Namespace)
		if err == nil {
			t.Logf("allowed %s after the RoleBinding", time.Since(bound).Round(time.Millisecond))
			break
		}
		if !apierrors.IsForbidden(err) || waitCtx.Err() != nil {
			t.Fatalf("list configmaps with a RoleBinding: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := list(other); !apierrors.IsForbidden(err) {
		t.Errorf("list configmaps in a namespace without a binding: got %v, want Forbidden", err)
	}
}
