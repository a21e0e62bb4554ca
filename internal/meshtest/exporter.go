package meshtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The labels of Istio's standard metrics, in the order of Istio's
// "Istio Standard Metrics" reference: every series a proxy exports for
// istio_requests_total and its distributions carries all of them; the TCP
// families carry all but response_code and grpc_response_status.
var (
	requestLabels = []string{
		"reporter",
		"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
		"source_canonical_service", "source_canonical_revision", "source_cluster",
		"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
		"destination_service", "destination_service_name", "destination_service_namespace",
		"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
		"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
	}
	tcpLabels = func() []string {
		var out []string
		for _, l := range requestLabels {
			if l != "response_code" && l != "grpc_response_status" {
				out = append(out, l)
			}
		}
		return out
	}()
)

// TrustDomain and Cluster are what the exporter's identities and
// *_cluster labels say, Istio's defaults.
const (
	TrustDomain = "cluster.local"
	Cluster     = "Kubernetes"
)

// Workload is a workload of the test mesh, as its telemetry names it.
type Workload struct {
	Namespace      string
	Name           string // Istio's workload name (destination_workload)
	ServiceAccount string
	App, Version   string
	// Service is the short name of its Kubernetes Service.
	Service string
}

// Principal is the workload's SPIFFE ID.
func (w Workload) Principal() string {
	return "spiffe://" + TrustDomain + "/ns/" + w.Namespace + "/sa/" + w.ServiceAccount
}

// Host is its Service's host name.
func (w Workload) Host() string { return w.Service + "." + w.Namespace + ".svc." + TrustDomain }

// NoProxy is a client without a proxy: a destination knows nothing of it.
var NoProxy = Workload{}

// Proxy is one scrape target: a sidecar's merged metrics endpoint
// (/stats/prometheus on port 15020 of the pod), or a node's ztunnel.
type Proxy struct {
	// Namespace and Pod are the labels the usual Kubernetes pod scrape
	// configuration attaches to the target's series.
	Namespace, Pod string
	Path           string

	reg                   *prometheus.Registry
	requests              *prometheus.CounterVec
	duration, reqB, respB *prometheus.HistogramVec
	opened, closed        *prometheus.CounterVec
	sent, received        *prometheus.CounterVec
	certMu                sync.Mutex
	certExpiry            time.Time
	certRegistered        bool
	failedCSR             *prometheus.CounterVec
}

// Exporter serves, for each Proxy, Istio's standard metric families as
// Envoy's stats plugin (sidecars) and ztunnel (ambient) export them, so
// that a real Prometheus scrapes what it would scrape from a mesh. Tests
// drive it with Request, Refused and Connection, and the exporter counts
// what each proxy involved would count.
type Exporter struct {
	// URL is http://127.0.0.1:<port>.
	URL string

	mu       sync.Mutex
	proxies  map[string]*Proxy // by path
	down     map[string]bool
	srv      *http.Server
	location map[string]*Proxy // workload namespace/name → the proxy reporting for it
}

// NewExporter starts an exporter on a loopback port; it stops when the
// test ends.
func NewExporter(tb testing.TB) *Exporter {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	e := &Exporter{URL: "http://" + ln.Addr().String(), proxies: map[string]*Proxy{}, down: map[string]bool{}, location: map[string]*Proxy{}}
	e.srv = &http.Server{Handler: http.HandlerFunc(e.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = e.srv.Serve(ln) }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = e.srv.Shutdown(ctx)
	})
	return e
}

func (e *Exporter) serve(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	p, down := e.proxies[r.URL.Path], e.down[r.URL.Path]
	e.mu.Unlock()
	if p == nil || down {
		http.NotFound(w, r)
		return
	}
	promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

func (e *Exporter) newProxy(namespace, pod string) *Proxy {
	p := &Proxy{Namespace: namespace, Pod: pod, Path: "/" + namespace + "/" + pod + "/stats/prometheus", reg: prometheus.NewRegistry()}
	buckets := []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	sizes := prometheus.ExponentialBuckets(1, 10, 8)
	p.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "Requests handled by the proxy."}, requestLabels)
	p.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds", Help: "Request durations.", Buckets: buckets}, requestLabels)
	p.reqB = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_bytes", Help: "Request body sizes.", Buckets: sizes}, requestLabels)
	p.respB = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_response_bytes", Help: "Response body sizes.", Buckets: sizes}, requestLabels)
	p.opened = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total", Help: "TCP connections opened."}, tcpLabels)
	p.closed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total", Help: "TCP connections closed."}, tcpLabels)
	p.sent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total", Help: "Bytes sent in responses over TCP."}, tcpLabels)
	p.received = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total", Help: "Bytes received in requests over TCP."}, tcpLabels)
	p.reg.MustRegister(p.requests, p.duration, p.reqB, p.respB, p.opened, p.closed, p.sent, p.received)
	return p
}

// Sidecar adds the sidecar proxy of one pod of w; its telemetry is
// reported for w.
func (e *Exporter) Sidecar(w Workload, pod string) *Proxy {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.newProxy(w.Namespace, pod)
	e.proxies[p.Path] = p
	e.location[w.Namespace+"/"+w.Name] = p
	return p
}

// Ztunnel adds a node's ztunnel, in istio-system, which reports for the
// ambient workloads ws on its node.
func (e *Exporter) Ztunnel(node string, ws ...Workload) *Proxy {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.newProxy("istio-system", "ztunnel-"+node)
	e.proxies[p.Path] = p
	for _, w := range ws {
		e.location[w.Namespace+"/"+w.Name] = p
	}
	return p
}

// SetCertificate makes the sidecar's istio-agent report a workload
// certificate that expires at t (istio_agent_cert_expiry_seconds, the
// time left, negative once expired). Before the first call the agent has
// no certificate and exports no such series.
func (p *Proxy) SetCertificate(t time.Time) {
	p.certMu.Lock()
	defer p.certMu.Unlock()
	p.certExpiry = t
	if p.certRegistered {
		return
	}
	p.certRegistered = true
	p.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "istio_agent_cert_expiry_seconds",
		Help:        "The time remaining, in seconds, before the certificate chain will expire. A negative value indicates the cert is expired.",
		ConstLabels: prometheus.Labels{"resource_name": "default"},
	}, func() float64 {
		p.certMu.Lock()
		defer p.certMu.Unlock()
		return time.Until(p.certExpiry).Seconds()
	}))
}

// FailCSR makes the sidecar's istio-agent count n certificate requests
// that failed (istio_agent_num_failed_outgoing_requests{request_type="csr"};
// Istio exports its counters without a _total suffix).
func (p *Proxy) FailCSR(n int) {
	p.certMu.Lock()
	defer p.certMu.Unlock()
	if p.failedCSR == nil {
		p.failedCSR = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_agent_num_failed_outgoing_requests",
			Help: "Number of failed outgoing requests (e.g. to a token exchange server, CA, etc.)"}, []string{"request_type"})
		p.reg.MustRegister(p.failedCSR)
	}
	p.failedCSR.WithLabelValues("csr").Add(float64(n))
}

// SetDown makes the proxy's scrapes fail (404) or work again.
func (e *Exporter) SetDown(p *Proxy, down bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.down[p.Path] = down
}

// Proxies returns every proxy, sorted by path.
func (e *Exporter) Proxies() []*Proxy {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*Proxy
	for _, p := range e.proxies {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

func (e *Exporter) proxyOf(w Workload) *Proxy {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.location[w.Namespace+"/"+w.Name]
}

// labels builds a series' labels as a proxy of the given reporter sets
// them. A destination knows its client's workload from Istio's metadata
// exchange (over mTLS, or HTTP headers in plaintext from a sidecar), and
// its principal only over mTLS; a client without a proxy is unknown.
func labels(reporter string, src, dst Workload, mtls bool, protocol string) prometheus.Labels {
	or := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	l := prometheus.Labels{
		"reporter":                       reporter,
		"source_workload":                or(src.Name),
		"source_workload_namespace":      or(src.Namespace),
		"source_principal":               "unknown",
		"source_app":                     or(src.App),
		"source_version":                 or(src.Version),
		"source_canonical_service":       or(src.App),
		"source_canonical_revision":      or(src.Version),
		"source_cluster":                 "unknown",
		"destination_workload":           dst.Name,
		"destination_workload_namespace": dst.Namespace,
		"destination_principal":          "unknown",
		"destination_app":                or(dst.App),
		"destination_version":            or(dst.Version),
		"destination_service":            dst.Host(),
		"destination_service_name":       dst.Service,
		"destination_service_namespace":  dst.Namespace,
		"destination_canonical_service":  or(dst.App),
		"destination_canonical_revision": or(dst.Version),
		"destination_cluster":            Cluster,
		"request_protocol":               protocol,
		"response_flags":                 "-",
		"connection_security_policy":     "none",
	}
	if src.Name != "" {
		l["source_cluster"] = Cluster
	}
	if mtls {
		l["source_principal"], l["destination_principal"] = src.Principal(), dst.Principal()
		l["connection_security_policy"] = "mutual_tls"
	}
	if reporter == "source" {
		// A client cannot tell what its destination enforces.
		l["connection_security_policy"] = "unknown"
		l["source_principal"] = src.Principal()
	}
	return l
}

// Request records n HTTP requests from src to dst answered with code, over
// mTLS or in plaintext: the destination's proxy counts them with
// reporter="destination", and the source's, if it has one, with
// reporter="source".
func (e *Exporter) Request(src, dst Workload, mtls bool, n int, code int) error {
	dp := e.proxyOf(dst)
	if dp == nil {
		return fmt.Errorf("no proxy reports for %s/%s", dst.Namespace, dst.Name)
	}
	observe := func(p *Proxy, l prometheus.Labels) {
		l["response_code"], l["grpc_response_status"] = fmt.Sprint(code), ""
		p.requests.With(l).Add(float64(n))
		for range n {
			p.duration.With(l).Observe(12)
			p.reqB.With(l).Observe(0)
			p.respB.With(l).Observe(512)
		}
	}
	observe(dp, labels("destination", src, dst, mtls, "http"))
	if sp := e.proxyOf(src); sp != nil && src.Name != "" {
		observe(sp, labels("source", src, dst, mtls, "http"))
	}
	return nil
}

// Refused records n requests src sent in plaintext to a destination that
// accepts only mTLS: its proxy closes the connection, so only the source
// counts them (503, response flag UC, upstream connection termination).
func (e *Exporter) Refused(src, dst Workload, n int) error {
	sp := e.proxyOf(src)
	if sp == nil {
		return errors.New("a refused request is only seen by the source's proxy, and it has none")
	}
	l := labels("source", src, dst, false, "http")
	l["response_code"], l["grpc_response_status"], l["response_flags"] = "503", "", "UC"
	sp.requests.With(l).Add(float64(n))
	return nil
}

// Connection records n TCP connections from src to dst, over mTLS or in
// plaintext, each carrying sent and received bytes, as the destination's
// proxy (sidecar or ztunnel) and the source's count them.
func (e *Exporter) Connection(src, dst Workload, mtls bool, n int) error {
	dp := e.proxyOf(dst)
	if dp == nil {
		return fmt.Errorf("no proxy reports for %s/%s", dst.Namespace, dst.Name)
	}
	count := func(p *Proxy, l prometheus.Labels) {
		p.opened.With(l).Add(float64(n))
		p.closed.With(l).Add(float64(n))
		p.sent.With(l).Add(float64(1024 * n))
		p.received.With(l).Add(float64(256 * n))
	}
	count(dp, labels("destination", src, dst, mtls, "tcp"))
	if sp := e.proxyOf(src); sp != nil && src.Name != "" {
		count(sp, labels("source", src, dst, mtls, "tcp"))
	}
	return nil
}

// ScrapeConfig is the scrape_configs entry of a Prometheus that scrapes
// every proxy of the exporter, each target labeled with its namespace and
// pod as the usual Kubernetes pod scrape configuration labels them.
func (e *Exporter) ScrapeConfig(job string, interval time.Duration) string {
	var b strings.Builder
	host := strings.TrimPrefix(e.URL, "http://")
	fmt.Fprintf(&b, "  - job_name: %s\n    scrape_interval: %s\n    scrape_timeout: %s\n    static_configs:\n", job, interval, interval)
	for _, p := range e.Proxies() {
		fmt.Fprintf(&b, "      - targets: [%q]\n        labels: {namespace: %q, pod: %q, __metrics_path__: %q}\n", host, p.Namespace, p.Pod, p.Path)
	}
	return b.String()
}
