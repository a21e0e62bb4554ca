package ca

import (
	"crypto/x509"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names. Units are in the names.
const (
	MetricRequests            = "transitca_requests_total"
	MetricIssuances           = "transitca_issuances_total"
	MetricRejections          = "transitca_rejections_total"
	MetricDenialsAggregated   = "transitca_denials_aggregated_total"
	MetricIssuanceDuration    = "transitca_issuance_duration_seconds"
	MetricVaultDuration       = "transitca_vault_request_duration_seconds"
	MetricCertExpiry          = "transitca_certificate_expiry_seconds"
	MetricCertNotAfter        = "transitca_certificate_not_after_timestamp_seconds"
	MetricDrillLast           = "transitca_drill_last_timestamp_seconds"
	MetricDrillSuccess        = "transitca_drill_last_success"
	MetricTokenReviewCache    = "transitca_tokenreview_cache_total"
	MetricTokenReviewRequests = "transitca_tokenreview_requests_total"
	MetricAdminRefused        = "transitca_admin_refused_total"
	MetricRequestsQueued      = "transitca_requests_queued"
)

// Results of a TokenReview cache lookup.
const (
	cacheHit    = "hit"    // no review sent
	cacheMiss   = "miss"   // a review sent
	cacheShared = "shared" // no review sent: joined one in flight
)

// Results of a TokenReview sent.
const (
	reviewAuthenticated = "authenticated" // accepted
	reviewRefused       = "refused"       // the API or this CA refused the token
	reviewError         = "error"         // no answer, or an API error
)

// Metrics are the service's Prometheus metrics.
type Metrics struct {
	requests   *prometheus.CounterVec
	issuances  *prometheus.CounterVec
	rejections *prometheus.CounterVec
	// denialsAggregated counts denials recorded as part of an aggregated
	// entry rather than one entry each.
	denialsAggregated *prometheus.CounterVec
	latency           *prometheus.HistogramVec
	vault             *prometheus.HistogramVec
	drillLast         prometheus.Gauge
	drillSuccess      prometheus.Gauge
	// tokenReviewCache counts TokenReview cache lookups by result.
	tokenReviewCache *prometheus.CounterVec
	// tokenReviews counts the TokenReviews sent, by result.
	tokenReviews *prometheus.CounterVec
	// adminRefused counts the admin calls refused, by reason.
	adminRefused *prometheus.CounterVec
	// queued is the number of CreateCertificate calls waiting for a
	// place among limits.max_in_flight.
	queued prometheus.Gauge
}

// NewMetrics registers the service's metrics with reg. certs names the CA's
// own certificates whose remaining lifetime is exported (root, intermediate,
// serving), each read at scrape time.
func NewMetrics(reg prometheus.Registerer, certs map[string]func() *x509.Certificate) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRequests,
			Help: "CreateCertificate requests by tier (empty before the tier is known) and outcome (issued, denied, error).",
		}, []string{"tier", "outcome"}),
		issuances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricIssuances,
			Help: "Certificates issued, by tier and intermediate mode.",
		}, []string{"tier", "mode"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRejections,
			Help: "Requests refused, by reason.",
		}, []string{"reason"}),
		denialsAggregated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricDenialsAggregated,
			Help: "Denials beyond the per-peer rate, counted into an aggregated log entry instead of one entry each, by reason.",
		}, []string{"reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    MetricIssuanceDuration,
			Help:    "Time to handle a CreateCertificate request, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"outcome"}),
		vault: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    MetricVaultDuration,
			Help:    "Vault call latency, by operation and outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"op", "outcome"}),
		drillLast: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricDrillLast,
			Help: "When the last rotation drill started (Unix seconds); 0 before the first.",
		}),
		drillSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricDrillSuccess,
			Help: "1 if the last rotation drill passed every step, 0 if a step failed or no drill ran.",
		}),
		tokenReviewCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricTokenReviewCache,
			Help: "Lookups of the Kubernetes TokenReview cache, by result (hit: no review sent; miss: a review sent; shared: no review sent, the answer of one in flight for the same token awaited).",
		}, []string{"result"}),
		tokenReviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricTokenReviewRequests,
			Help: "Kubernetes TokenReviews sent, by result (authenticated, refused, error: no answer or an API error).",
		}, []string{"result"}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricRequestsQueued,
			Help: "CreateCertificate requests waiting for a place among limits.max_in_flight (at most limits.max_queued).",
		}),
	}
	m.adminRefused = newAdminRefused()
	for _, r := range adminRefusedReasons {
		m.adminRefused.WithLabelValues(r)
	}
	// Export zeros before the first lookup and review.
	for _, r := range []string{cacheHit, cacheMiss, cacheShared} {
		m.tokenReviewCache.WithLabelValues(r)
	}
	for _, r := range []string{reviewAuthenticated, reviewRefused, reviewError} {
		m.tokenReviews.WithLabelValues(r)
	}
	reg.MustRegister(m.requests, m.issuances, m.rejections, m.denialsAggregated, m.latency, m.vault, m.drillLast, m.drillSuccess,
		m.tokenReviewCache, m.tokenReviews, m.adminRefused, m.queued)
	for name, get := range certs {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        MetricCertExpiry,
			Help:        "Seconds until the CA's own certificate expires (negative once expired).",
			ConstLabels: prometheus.Labels{"cert": name},
		}, func() float64 {
			if c := get(); c != nil {
				return time.Until(c.NotAfter).Seconds()
			}
			return 0
		}))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        MetricCertNotAfter,
			Help:        "NotAfter of the CA's own certificate, as a Unix timestamp.",
			ConstLabels: prometheus.Labels{"cert": name},
		}, func() float64 {
			if c := get(); c != nil {
				return float64(c.NotAfter.Unix())
			}
			return 0
		}))
	}
	return m
}

// ObserveVault records one Vault call; it fits issuer.Transit.SetObserver.
func (m *Metrics) ObserveVault(op string, took time.Duration, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.vault.WithLabelValues(op, outcome).Observe(took.Seconds())
}

// observeTokenReviewCache counts one TokenReview cache lookup. A nil
// Metrics counts nothing.
func (m *Metrics) observeTokenReviewCache(result string) {
	if m == nil {
		return
	}
	m.tokenReviewCache.WithLabelValues(result).Inc()
}

// observeTokenReview counts one TokenReview sent. A nil Metrics counts
// nothing.
func (m *Metrics) observeTokenReview(result string) {
	if m == nil {
		return
	}
	m.tokenReviews.WithLabelValues(result).Inc()
}

// observeDrill exports the last drill's start time and result.
func (m *Metrics) observeDrill(started time.Time, passed bool) {
	m.drillLast.Set(float64(started.UnixNano()) / 1e9)
	if passed {
		m.drillSuccess.Set(1)
	} else {
		m.drillSuccess.Set(0)
	}
}
