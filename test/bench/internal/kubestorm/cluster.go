package kubestorm

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/kubetest"
)

// servicesPerNamespace is how many services (each its own service
// account) share a namespace.
const servicesPerNamespace = 10

// setupWorkers is how many API calls the setup makes at once.
const setupWorkers = 16

// workload is one pod: its identity and the token its kubelet would have
// projected into it.
type workload struct {
	namespace, serviceAccount, pod string
	token                          string
	csr                            []byte
}

func (w *workload) spiffeID(trustDomain string) string {
	return "spiffe://" + trustDomain + "/ns/" + w.namespace + "/sa/" + w.serviceAccount
}

// layout names the pods of services × replicas: service s is service
// account svc-<s mod 10> in namespace storm-<s/10>, its replicas are pods
// <sa>-<r>.
func layout(services, replicas int) []*workload {
	out := make([]*workload, 0, services*replicas)
	for s := range services {
		ns, sa := fmt.Sprintf("storm-%03d", s/servicesPerNamespace), fmt.Sprintf("svc-%d", s%servicesPerNamespace)
		for r := range replicas {
			out = append(out, &workload{namespace: ns, serviceAccount: sa, pod: fmt.Sprintf("%s-%d", sa, r)})
		}
	}
	return out
}

// parallel runs f(0) … f(n-1) on workers goroutines and returns the first
// error; after one, the remaining calls are skipped.
func parallel(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		once     sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// populate creates the namespaces, service accounts and pods of the
// workloads, on nodes node-0 … node-<nodes-1>, and mints each pod's token
// (audience istio-ca, bound to the pod), as the kubelet does before the
// pod's containers start.
func populate(ctx context.Context, c kubernetes.Interface, ws []*workload, nodes int, tokenTTL time.Duration) error {
	var namespaces []string
	accounts := map[[2]string]bool{}
	for _, w := range ws {
		key := [2]string{w.namespace, w.serviceAccount}
		if !accounts[key] {
			if len(namespaces) == 0 || namespaces[len(namespaces)-1] != w.namespace {
				namespaces = append(namespaces, w.namespace)
			}
			accounts[key] = true
		}
	}
	err := parallel(ctx, len(namespaces), setupWorkers, func(ctx context.Context, i int) error {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespaces[i]}}, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("create namespaces: %w", err)
	}
	var sas [][2]string
	for k := range accounts {
		sas = append(sas, k)
	}
	err = parallel(ctx, len(sas), setupWorkers, func(ctx context.Context, i int) error {
		_, err := c.CoreV1().ServiceAccounts(sas[i][0]).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sas[i][1]}}, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("create service accounts: %w", err)
	}
	secs := int64(tokenTTL / time.Second)
	err = parallel(ctx, len(ws), setupWorkers, func(ctx context.Context, i int) error {
		w := ws[i]
		pod, err := c.CoreV1().Pods(w.namespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: w.pod, Labels: map[string]string{"app": w.serviceAccount}},
			Spec: corev1.PodSpec{
				ServiceAccountName: w.serviceAccount,
				NodeName:           fmt.Sprintf("node-%d", i%nodes),
				Containers:         []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create pod %s/%s: %w", w.namespace, w.pod, err)
		}
		w.token, err = podToken(ctx, c, pod, []string{ca.DefaultAudience}, secs)
		return err
	})
	if err != nil {
		return fmt.Errorf("pods and tokens: %w", err)
	}
	return nil
}

// podToken mints a token of the pod's service account bound to the pod
// (or, with pod.Name empty and pod.Namespace and Spec.ServiceAccountName
// set, a token not bound to any object).
func podToken(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, audiences []string, secs int64) (string, error) {
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &secs}}
	if pod.Name != "" {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	resp, err := c.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s: %w", pod.Namespace, pod.Spec.ServiceAccountName, err)
	}
	return resp.Status.Token, nil
}

// daemonKubeconfig applies the shipped RBAC (deploy/rbac: service account
// istio-system/transitca and its roles) and writes a kubeconfig at path
// that acts as that service account, with a token valid for ttl.
func daemonKubeconfig(ctx context.Context, s *kubetest.Server, c kubernetes.Interface, path string, ttl time.Duration) error {
	if err := kubetest.ApplyFiles(ctx, c, kubetest.RBACManifests()...); err != nil {
		return fmt.Errorf("shipped rbac: %w", err)
	}
	sa := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system"}, Spec: corev1.PodSpec{ServiceAccountName: "transitca"}}
	token, err := podToken(ctx, c, sa, nil, int64(ttl/time.Second))
	if err != nil {
		return err
	}
	return s.WriteKubeconfig(path, token, "istio-system")
}
