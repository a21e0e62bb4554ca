package mesh

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
)

// The metrics of the namespace-wide policy the daemon exports, so that
// alerts can join Istio's telemetry with it (label mesh_namespace: the
// scrape's own namespace label is the daemon's).
const (
	// MetricMTLSMode is 1 for each namespace's namespace-wide mode and
	// dataplane (none: outside the mesh).
	MetricMTLSMode = "transitca_mesh_mtls_mode"
	// MetricDisabledTLS counts the DestinationRule settings that disable
	// mTLS to a host of each namespace.
	MetricDisabledTLS = "transitca_mesh_mtls_disabled_destination_rules"
	// MetricPolicyRead is when the policy was last read.
	MetricPolicyRead = "transitca_mesh_policy_last_read_timestamp_seconds"
)

// PolicyMetricsOptions configure a PolicyMetrics.
type PolicyMetricsOptions struct {
	Kube  kubernetes.Interface
	Istio istioclient.Interface
	Options
	// Interval is how often the policy is read; default a minute.
	Interval   time.Duration
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// PolicyMetrics reads the namespace-wide mTLS policy of every namespace
// every Interval and exports it. It is a Runner: the metrics exist while
// Run runs (on the leader), and are removed when it returns, so that a
// follower exports none.
type PolicyMetrics struct {
	o        PolicyMetricsOptions
	mode     *prometheus.GaugeVec
	disabled *prometheus.GaugeVec
	read     prometheus.Gauge
	// exported are the label values set by the last update, so that the
	// next removes only what is gone (a scrape never sees a namespace
	// missing in between).
	exported map[[3]string]bool
}

// NewPolicyMetrics registers the metrics; nothing is read until Run.
func NewPolicyMetrics(o PolicyMetricsOptions) (*PolicyMetrics, error) {
	if o.Kube == nil || o.Istio == nil || o.Registerer == nil {
		return nil, errors.New("mesh policy metrics: clients and registerer must be set")
	}
	if o.Interval <= 0 {
		o.Interval = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Options = o.withDefaults()
	m := &PolicyMetrics{
		o: o,
		mode: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricMTLSMode,
			Help: "1 for each namespace's namespace-wide PeerAuthentication mode as istiod resolves it (mode), and how it is in the mesh (dataplane: sidecar, ambient or none)."},
			[]string{"mesh_namespace", "mode", "dataplane"}),
		disabled: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricDisabledTLS,
			Help: "DestinationRule settings with tls.mode DISABLE for a host of each namespace: clients that follow them send plaintext."},
			[]string{"mesh_namespace"}),
		read: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricPolicyRead,
			Help: "When the mesh's mTLS policy was last read from the cluster (Unix seconds)."}),
	}
	for _, c := range []prometheus.Collector{m.mode, m.disabled, m.read} {
		if err := o.Registerer.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Run reads and exports the policy until ctx ends.
func (m *PolicyMetrics) Run(ctx context.Context) {
	log := m.o.Logger.With(slog.String("controller", "mesh-policy"))
	defer func() {
		m.mode.Reset()
		m.disabled.Reset()
		m.read.Set(0)
		m.exported = nil
	}()
	t := time.NewTicker(m.o.Interval)
	defer t.Stop()
	var lastErr string
	for {
		if err := m.update(ctx); err != nil && ctx.Err() == nil {
			// Said once until it changes: a cluster without Istio's CRDs
			// would otherwise log every minute.
			if err.Error() != lastErr {
				log.WarnContext(ctx, "reading the mesh's mTLS policy", slog.Any("error", err))
			}
			lastErr = err.Error()
		} else if err == nil {
			if lastErr != "" {
				log.InfoContext(ctx, "reading the mesh's mTLS policy works again")
			}
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *PolicyMetrics) update(ctx context.Context) error {
	objs, err := read(ctx, m.o.Kube, m.o.Istio, "", false)
	if err != nil {
		return err
	}
	p := Resolve(objs, m.o.Options)
	now := map[[3]string]bool{}
	for _, n := range p.Namespaces {
		now[[3]string{n.Namespace, string(n.Mode), n.Dataplane}] = true
		m.mode.WithLabelValues(n.Namespace, string(n.Mode), n.Dataplane).Set(1)
		m.disabled.WithLabelValues(n.Namespace).Set(float64(len(n.DisabledTLS)))
	}
	for k := range m.exported {
		if now[k] {
			continue
		}
		m.mode.DeleteLabelValues(k[0], k[1], k[2])
		if !slices.ContainsFunc(p.Namespaces, func(n *NamespacePolicy) bool { return n.Namespace == k[0] }) {
			m.disabled.DeleteLabelValues(k[0])
		}
	}
	m.exported = now
	m.read.SetToCurrentTime()
	return nil
}
