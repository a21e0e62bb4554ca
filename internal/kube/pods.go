package kube

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/transitca/transitca/ca"
)

// podsByNodeAccount is the index of pods by node and service account.
const podsByNodeAccount = "node-service-account"

// runningPods selects the pods that have not terminated.
const runningPods = "status.phase!=Failed,status.phase!=Succeeded"

// PodIndex is one cluster's pods that have not terminated, indexed by node
// and service account, for the node authorization of ambient mode
// (ca.NodePods). It keeps only the fields that authorization reads. A pod
// being deleted counts until its deletionTimestamp, the end of the grace
// period the deletion gave it; past it the pod is gone for authorization,
// although the API may list it for long after (a lost node's kubelet
// never confirms the end, a finalizer holds the object). It needs get,
// list and watch on pods in every namespace.
type PodIndex struct {
	informer cache.SharedIndexInformer
	now      func() time.Time
}

// NewPodIndex returns the index; Run fills it and keeps it current.
func NewPodIndex(client kubernetes.Interface, resync time.Duration) (*PodIndex, error) {
	f := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = runningPods }),
		informers.WithTransform(stripPod))
	inf := f.Core().V1().Pods().Informer()
	if err := inf.AddIndexers(cache.Indexers{podsByNodeAccount: func(obj any) ([]string, error) {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Spec.NodeName == "" || p.Spec.ServiceAccountName == "" {
			return nil, nil
		}
		return []string{nodeAccountKey(p.Spec.NodeName, p.Namespace, p.Spec.ServiceAccountName)}, nil
	}}); err != nil {
		return nil, fmt.Errorf("pod index: %w", err)
	}
	return &PodIndex{informer: inf, now: time.Now}, nil
}

// Run lists and watches the pods until ctx ends.
func (x *PodIndex) Run(ctx context.Context) { x.informer.RunWithContext(ctx) }

// WaitForSync waits until the first list is in, or ctx ends.
func (x *PodIndex) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), x.informer.HasSynced)
}

// HasSynced implements ca.NodePods.
func (x *PodIndex) HasSynced() bool { return x.informer.HasSynced() }

// Pod implements ca.NodePods.
func (x *PodIndex) Pod(namespace, name string) (ca.PodInfo, bool) {
	obj, ok, err := x.informer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return ca.PodInfo{}, false
	}
	p, ok := obj.(*corev1.Pod)
	if !ok || !x.present(p) {
		return ca.PodInfo{}, false
	}
	return ca.PodInfo{UID: string(p.UID), ServiceAccount: p.Spec.ServiceAccountName, Node: p.Spec.NodeName}, true
}

// ServiceAccountOnNode implements ca.NodePods.
func (x *PodIndex) ServiceAccountOnNode(node, namespace, serviceAccount string) bool {
	objs, err := x.informer.GetIndexer().ByIndex(podsByNodeAccount, nodeAccountKey(node, namespace, serviceAccount))
	if err != nil {
		return false
	}
	for _, obj := range objs {
		if p, ok := obj.(*corev1.Pod); ok && x.present(p) {
			return true
		}
	}
	return false
}

// present reports whether p still counts: it is not being deleted, or its
// deletion's grace period (which ends at its deletionTimestamp) has not
// run out.
func (x *PodIndex) present(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil || x.now().Before(p.DeletionTimestamp.Time)
}

// nodeAccountKey is the index key of a node and a service account. Node,
// namespace and service account names cannot hold '/'.
func nodeAccountKey(node, namespace, serviceAccount string) string {
	return node + "/" + namespace + "/" + serviceAccount
}

// stripPod keeps what the index reads of a pod: name, namespace, UID,
// deletion timestamp, service account, node and phase.
func stripPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone: nothing to strip
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{ServiceAccountName: p.Spec.ServiceAccountName, NodeName: p.Spec.NodeName},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}, nil
}

var _ ca.NodePods = (*PodIndex)(nil)
