package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// The ConfigMap istio-agent and istiod read the mesh's roots from, as
// istiod writes it when it is the CA.
const (
	// RootCertConfigMap is the ConfigMap's name, in every namespace.
	RootCertConfigMap = "istio-ca-root-cert"
	// RootCertKey is the key that holds the PEM roots.
	RootCertKey = "root-cert.pem"
	// ConfigLabel marks the ConfigMap as Istio configuration; its value
	// is "true".
	ConfigLabel = "istio.io/config"
)

// FieldManager names transitca's writes in managedFields.
const FieldManager = "transitca"

// BundleOptions configure a BundleController.
type BundleOptions struct {
	Client kubernetes.Interface
	// Bundle returns the current trust bundle, PEM: the bytes of
	// <data_dir>/root-cert.pem.
	Bundle func() []byte
	// NamespaceSelector picks the namespaces; nil or empty: all of them.
	NamespaceSelector labels.Selector
	// Resync is how often every namespace is reconciled even when nothing
	// was seen to change. Default: a minute.
	Resync time.Duration
	Logger *slog.Logger
}

// BundleController keeps the istio-ca-root-cert ConfigMap in every
// selected namespace equal to the trust bundle. It is a Runner: it works
// only while Run runs.
type BundleController struct {
	client   kubernetes.Interface
	bundle   func() []byte
	selector labels.Selector
	resync   time.Duration
	log      *slog.Logger

	changed chan struct{}
	writes  atomic.Uint64
}

// NewBundleController returns a controller; it does nothing until Run.
func NewBundleController(o BundleOptions) (*BundleController, error) {
	if o.Client == nil || o.Bundle == nil {
		return nil, errors.New("trust bundle controller: client and bundle must be set")
	}
	if o.NamespaceSelector == nil {
		o.NamespaceSelector = labels.Everything()
	}
	if o.Resync <= 0 {
		o.Resync = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &BundleController{
		client: o.Client, bundle: o.Bundle, selector: o.NamespaceSelector, resync: o.Resync,
		log: o.Logger.With(slog.String("controller", "trust-bundle")), changed: make(chan struct{}, 1),
	}, nil
}

// BundleChanged tells the controller that the bundle changed: every
// namespace is reconciled at once. It never blocks, and does nothing
// while the controller is not running (Run starts with a full pass).
func (c *BundleController) BundleChanged() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// Writes is how many ConfigMaps the controller created or updated.
func (c *BundleController) Writes() uint64 { return c.writes.Load() }

// Run watches namespaces and ConfigMaps and reconciles until ctx ends.
// Each call starts its own informers and queue, so it can run again in
// a later leadership term.
func (c *BundleController) Run(ctx context.Context) {
	// Drain a signal from before this term: the first pass covers it.
	select {
	case <-c.changed:
	default:
	}
	// No informer resync: the ticker below reconciles every namespace
	// each resync period from the listers.
	nsFactory := informers.NewSharedInformerFactoryWithOptions(c.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = c.selector.String() }))
	cmFactory := informers.NewSharedInformerFactoryWithOptions(c.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", RootCertConfigMap).String()
		}))
	nsInformer := nsFactory.Core().V1().Namespaces()
	cmInformer := cmFactory.Core().V1().ConfigMaps()
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "transitca_trust_bundle"})
	// On return: the queue shuts down, then the worker finishes what it
	// was doing (with ctx ended, a write in flight is cut off).
	var worker sync.WaitGroup
	defer worker.Wait()
	defer queue.ShutDown()

	enqueueNamespace := func(obj any) {
		if ns, ok := objectMeta(obj); ok {
			queue.Add(ns.GetName())
		}
	}
	enqueueConfigMapNamespace := func(obj any) {
		if cm, ok := objectMeta(obj); ok {
			queue.Add(cm.GetNamespace())
		}
	}
	if _, err := nsInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueNamespace,
		UpdateFunc: func(_, obj any) { enqueueNamespace(obj) },
	}); err != nil {
		c.log.ErrorContext(ctx, "namespace informer", slog.Any("error", err))
		return
	}
	if _, err := cmInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueConfigMapNamespace,
		UpdateFunc: func(_, obj any) { enqueueConfigMapNamespace(obj) },
		DeleteFunc: enqueueConfigMapNamespace,
	}); err != nil {
		c.log.ErrorContext(ctx, "configmap informer", slog.Any("error", err))
		return
	}
	nsFactory.Start(ctx.Done())
	cmFactory.Start(ctx.Done())
	defer nsFactory.Shutdown()
	defer cmFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), nsInformer.Informer().HasSynced, cmInformer.Informer().HasSynced) {
		return
	}
	r := &reconciler{client: c.client, namespaces: nsInformer.Lister(), configMaps: cmInformer.Lister(),
		bundle: c.bundle, selector: c.selector, writes: &c.writes, log: c.log}
	c.log.InfoContext(ctx, "trust bundle controller started", slog.String("namespace_selector", c.selector.String()))

	worker.Go(func() { c.worker(ctx, queue, r) })
	enqueueAll := func() {
		nss, err := r.namespaces.List(labels.Everything())
		if err != nil {
			return
		}
		for _, ns := range nss {
			queue.Add(ns.Name)
		}
	}
	t := time.NewTicker(c.resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.changed:
			c.log.InfoContext(ctx, "trust bundle changed: updating every namespace")
		case <-t.C:
		}
		enqueueAll()
	}
}

// worker reconciles namespaces from the queue until it shuts down.
func (c *BundleController) worker(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], r *reconciler) {
	for {
		ns, shutdown := queue.Get()
		if shutdown {
			return
		}
		err := r.reconcile(ctx, ns)
		switch {
		case err == nil:
			queue.Forget(ns)
		case ctx.Err() != nil:
			queue.Forget(ns)
		default:
			c.log.WarnContext(ctx, "reconcile; will retry", slog.String("namespace", ns),
				slog.Int("retries", queue.NumRequeues(ns)), slog.Any("error", err))
			queue.AddRateLimited(ns)
		}
		queue.Done(ns)
	}
}

func objectMeta(obj any) (metav1.Object, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(metav1.Object)
	return m, ok
}

// reconciler makes one namespace's ConfigMap match the bundle.
type reconciler struct {
	client     kubernetes.Interface
	namespaces corelisters.NamespaceLister
	configMaps corelisters.ConfigMapLister
	bundle     func() []byte
	selector   labels.Selector
	writes     *atomic.Uint64
	log        *slog.Logger
}

// reconcile makes the istio-ca-root-cert ConfigMap in namespace name hold
// exactly the bundle, under the istio.io/config label, creating it when it
// is missing. It skips namespaces that are gone, not selected or being
// deleted, and writes nothing when the ConfigMap already matches: running
// it twice is the same as running it once. Labels and annotations of
// others are kept; other data keys are removed.
func (r *reconciler) reconcile(ctx context.Context, name string) error {
	ns, err := r.namespaces.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if ns.DeletionTimestamp != nil || ns.Status.Phase == corev1.NamespaceTerminating || !r.selector.Matches(labels.Set(ns.Labels)) {
		return nil
	}
	bundle := r.bundle()
	if len(bundle) == 0 {
		return errors.New("trust bundle is empty")
	}
	want := map[string]string{RootCertKey: string(bundle)}
	cm, err := r.configMaps.ConfigMaps(name).Get(RootCertConfigMap)
	if apierrors.IsNotFound(err) {
		_, err := r.client.CoreV1().ConfigMaps(name).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: name, Labels: map[string]string{ConfigLabel: "true"}},
			Data:       want,
		}, metav1.CreateOptions{FieldManager: FieldManager})
		if err != nil {
			// AlreadyExists: the cache is behind; the retry sees it.
			return fmt.Errorf("create configmap %s/%s: %w", name, RootCertConfigMap, err)
		}
		r.wrote(ctx, name, "created")
		return nil
	}
	if err != nil {
		return err
	}
	if matches(cm, bundle) {
		return nil
	}
	cm = cm.DeepCopy()
	cm.Data, cm.BinaryData = want, nil
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	cm.Labels[ConfigLabel] = "true"
	// The cached resourceVersion makes this a compare-and-swap: a conflict
	// means the cache is behind, and the retry starts from the new state.
	if _, err := r.client.CoreV1().ConfigMaps(name).Update(ctx, cm, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("update configmap %s/%s: %w", name, RootCertConfigMap, err)
	}
	r.wrote(ctx, name, "updated")
	return nil
}

func (r *reconciler) wrote(ctx context.Context, ns, how string) {
	r.writes.Add(1)
	r.log.InfoContext(ctx, "trust bundle ConfigMap "+how, slog.String("namespace", ns))
}

// matches reports whether cm holds exactly the bundle and the label.
func matches(cm *corev1.ConfigMap, bundle []byte) bool {
	return len(cm.Data) == 1 && len(cm.BinaryData) == 0 &&
		bytes.Equal([]byte(cm.Data[RootCertKey]), bundle) && cm.Labels[ConfigLabel] == "true"
}
