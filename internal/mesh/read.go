package mesh

import (
	"context"
	"errors"
	"fmt"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
)

// ErrNoIstioCRDs is returned by Read when the API server does not serve
// Istio's PeerAuthentication or DestinationRule: Istio's CRDs are not
// installed, so there is no mesh policy to read.
var ErrNoIstioCRDs = errors.New("the API server does not serve Istio's security.istio.io/v1 PeerAuthentication or networking.istio.io/v1 DestinationRule: are Istio's CRDs installed?")

// pageSize bounds each list call.
const pageSize = 500

// Read lists what the policy is computed from: the namespaces (one, when
// namespace is not ""), their pods that have not terminated, and every
// PeerAuthentication and DestinationRule of the cluster (those of other
// namespaces can apply: the mesh-wide ones, and rules whose host is in
// namespace).
func Read(ctx context.Context, kube kubernetes.Interface, istio istioclient.Interface, namespace string) (Objects, error) {
	return read(ctx, kube, istio, namespace, true)
}

// read is Read, with the pods only when pods is true: the namespace-wide
// policy needs none.
func read(ctx context.Context, kube kubernetes.Interface, istio istioclient.Interface, namespace string, pods bool) (Objects, error) {
	var objs Objects
	if namespace != "" {
		ns, err := kube.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
		if err != nil {
			return objs, fmt.Errorf("namespace %s: %w", namespace, err)
		}
		objs.Namespaces = append(objs.Namespaces, ns)
	} else if err := list(ctx, func(ctx context.Context, o metav1.ListOptions) (string, error) {
		l, err := kube.CoreV1().Namespaces().List(ctx, o)
		if err != nil {
			return "", fmt.Errorf("namespaces: %w", err)
		}
		for i := range l.Items {
			objs.Namespaces = append(objs.Namespaces, &l.Items[i])
		}
		return l.Continue, nil
	}); err != nil {
		return objs, err
	}

	if !pods {
		return objs, readIstio(ctx, istio, &objs)
	}
	running := fields.AndSelectors(
		fields.OneTermNotEqualSelector("status.phase", string(corev1.PodSucceeded)),
		fields.OneTermNotEqualSelector("status.phase", string(corev1.PodFailed)),
	).String()
	if err := list(ctx, func(ctx context.Context, o metav1.ListOptions) (string, error) {
		o.FieldSelector = running
		l, err := kube.CoreV1().Pods(namespace).List(ctx, o)
		if err != nil {
			return "", fmt.Errorf("pods: %w", err)
		}
		for i := range l.Items {
			objs.Pods = append(objs.Pods, &l.Items[i])
		}
		return l.Continue, nil
	}); err != nil {
		return objs, err
	}
	return objs, readIstio(ctx, istio, &objs)
}

// readIstio lists every PeerAuthentication and DestinationRule.
func readIstio(ctx context.Context, istio istioclient.Interface, objs *Objects) error {
	if err := list(ctx, func(ctx context.Context, o metav1.ListOptions) (string, error) {
		l, err := istio.SecurityV1().PeerAuthentications(metav1.NamespaceAll).List(ctx, o)
		if err != nil {
			return "", crdError("PeerAuthentications", err)
		}
		objs.PeerAuthentications = append(objs.PeerAuthentications, l.Items...)
		return l.Continue, nil
	}); err != nil {
		return err
	}
	return list(ctx, func(ctx context.Context, o metav1.ListOptions) (string, error) {
		l, err := istio.NetworkingV1().DestinationRules(metav1.NamespaceAll).List(ctx, o)
		if err != nil {
			return "", crdError("DestinationRules", err)
		}
		objs.DestinationRules = append(objs.DestinationRules, l.Items...)
		return l.Continue, nil
	})
}

// list pages through a list call until its continue token is empty.
func list(ctx context.Context, page func(context.Context, metav1.ListOptions) (string, error)) error {
	o := metav1.ListOptions{Limit: pageSize}
	for {
		next, err := page(ctx, o)
		if err != nil {
			return err
		}
		if next == "" {
			return nil
		}
		o.Continue = next
	}
}

func crdError(what string, err error) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%s: %w (%w)", what, ErrNoIstioCRDs, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
