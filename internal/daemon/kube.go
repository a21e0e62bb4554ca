package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	"github.com/transitca/transitca/internal/kube"
	"github.com/transitca/transitca/internal/mesh"
)

// Metrics of the Kubernetes side.
const (
	// MetricKubernetesLeader is 1 while this replica holds the Lease and
	// does the cluster writes, else 0.
	MetricKubernetesLeader = "transitca_kubernetes_leader"
	// MetricTrustBundleWrites counts the istio-ca-root-cert ConfigMaps
	// this replica created or updated.
	MetricTrustBundleWrites = "transitca_kubernetes_trust_bundle_writes_total"
)

// kubeSide is the daemon's Kubernetes work: nil when the Kubernetes
// features are off.
type kubeSide struct {
	client   *kube.Client
	election kube.Election
	// bundle writes the istio-ca-root-cert ConfigMaps; nil when
	// kubernetes.trust_bundle.enabled is false.
	bundle *kube.BundleController
	// istiod writes the istiod-tls Secret; nil when
	// kubernetes.istiod.enabled is false.
	istiod *kube.IstiodCert
	// runners are the leader-only writers: only the replica holding the
	// Lease runs them, every replica serves certificates. A new writer
	// (for instance istiod's serving Secret) is appended in openKube.
	runners []kube.Runner
}

// connectKube makes the Kubernetes client when the Kubernetes features are
// on (kubernetes.enabled, or a kubeconfig, or running in a pod). The
// TokenReview authenticator and the cluster writers share it.
func (d *Daemon) connectKube() error {
	if !d.cfg.KubernetesEnabled(kube.InCluster()) {
		return nil
	}
	// client-go logs through klog; send it to the daemon's logger.
	klog.SetSlogLogger(d.log)
	client, err := kube.NewClient(d.cfg.Kubernetes.Kubeconfig, "transitca/"+d.opts.Version)
	if err != nil {
		return fmt.Errorf("kubernetes: %w", err)
	}
	d.kubeAPI = client
	return nil
}

// openKube connects to the Kubernetes API when the Kubernetes features are
// on (kubernetes.enabled, or a kubeconfig, or running in a pod) and builds
// the leader-only writers. Nothing talks to the API server until Run.
func (d *Daemon) openKube(_ context.Context) error {
	cfg := d.cfg.Kubernetes
	client := d.kubeAPI
	if client == nil {
		return nil
	}
	k := &kubeSide{client: client}
	if cfg.TrustBundle.Enabled {
		sel, err := labels.Parse(cfg.TrustBundle.NamespaceSelector)
		if err != nil {
			return fmt.Errorf("kubernetes.trust_bundle.namespace_selector: %w", err)
		}
		k.bundle, err = kube.NewBundleController(kube.BundleOptions{
			Client: client.Clientset, Bundle: func() []byte { return rootsPEM(d.authority.Roots()) },
			NamespaceSelector: sel, Resync: cfg.TrustBundle.Resync.Std(), Logger: d.log,
		})
		if err != nil {
			return fmt.Errorf("kubernetes: %w", err)
		}
		k.runners = append(k.runners, k.bundle)
		d.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: MetricTrustBundleWrites,
			Help: "istio-ca-root-cert ConfigMaps this replica created or updated."},
			func() float64 { return float64(k.bundle.Writes()) }))
	}
	istiod, err := d.istiodRunner(client.Clientset)
	if err != nil {
		return fmt.Errorf("kubernetes: %w", err)
	}
	if istiod != nil {
		k.istiod = istiod
		k.runners = append(k.runners, kube.RunnerFunc(istiod.Run))
	}
	if mp := cfg.MeshPolicy; mp.Enabled {
		ic, err := istioclient.NewForConfig(client.Config)
		if err != nil {
			return fmt.Errorf("kubernetes: %w", err)
		}
		pm, err := mesh.NewPolicyMetrics(mesh.PolicyMetricsOptions{
			Kube: client.Clientset, Istio: ic, Options: mesh.Options{RootNamespace: mp.RootNamespace, Domain: mp.Domain},
			Interval: mp.Resync.Std(), Registerer: d.reg, Logger: d.log,
		})
		if err != nil {
			return fmt.Errorf("kubernetes: %w", err)
		}
		k.runners = append(k.runners, pm)
	}
	leading := prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricKubernetesLeader,
		Help: "1 while this replica holds the leader Lease and writes to the cluster."})
	d.reg.MustRegister(leading)
	le := cfg.LeaderElection
	ns := le.Namespace
	if ns == "" {
		ns = client.Namespace
	}
	k.election = kube.Election{
		Client: client.Clientset, Namespace: ns, LeaseName: le.LeaseName, Identity: kube.NewIdentity(),
		LeaseDuration: le.LeaseDuration.Std(), RenewDeadline: le.RenewDeadline.Std(), RetryPeriod: le.RetryPeriod.Std(),
		Logger: d.log,
		OnLeading: func(on bool) {
			if on {
				leading.Set(1)
			} else {
				leading.Set(0)
			}
		},
	}
	d.kube = k
	return nil
}

// runKube campaigns for the Lease and runs the leader-only writers while
// this replica holds it, until ctx ends.
func (d *Daemon) runKube(ctx context.Context) {
	k := d.kube
	if k == nil || len(k.runners) == 0 {
		return
	}
	d.log.InfoContext(ctx, "kubernetes: campaigning for the writer lease",
		slog.String("api_server", k.client.Host()), slog.Bool("trust_bundle", k.bundle != nil),
		slog.String("lease", k.election.Namespace+"/"+k.election.LeaseName), slog.String("identity", k.election.Identity))
	for {
		err := kube.Elect(ctx, k.election, k.runners...)
		if err == nil || ctx.Err() != nil {
			return
		}
		d.log.ErrorContext(ctx, "kubernetes: leader election", slog.Any("error", err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(k.election.RetryPeriod):
		}
	}
}

// bundleChanged tells the cluster writers that the trust bundle or the
// issuing intermediate changed: the ConfigMaps and istiod-tls follow at
// once.
func (d *Daemon) bundleChanged() {
	if d.kube == nil {
		return
	}
	if d.kube.bundle != nil {
		d.kube.bundle.BundleChanged()
	}
	if d.kube.istiod != nil {
		d.kube.istiod.HierarchyChanged()
	}
}
