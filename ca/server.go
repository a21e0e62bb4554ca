package ca

import (
	"crypto/tls"
	"net/http"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	pb "istio.io/api/security/v1alpha1"
)

// MaxRequestBytes bounds a gRPC request message beyond the CSR itself
// (validity_duration and the metadata Struct). The message limit is
// csr.max_bytes plus this; a larger message is refused by the gRPC
// transport (ResourceExhausted) before the service runs.
const MaxRequestBytes = 16 << 10

// MaxAdminMessageBytes is the receive limit an admin API client sets
// (gRPC's default, 4 MiB, is less than a page of the log can be): the
// largest message the admin API sends in answer to what a client can ask.
// A QueryLog page holds at most AdminPageBytes of entry records, which
// with the encoding's overhead (about 130 bytes an entry, at most 10,000
// entries a page) is well within it; a Backup chunk is 1 MiB; one entry
// with its leaf data is at most twice the largest record, under 1 MiB.
const MaxAdminMessageBytes = 16 << 20

// AdminPageBytes bounds the entry records of one QueryLog page
// (store.Query.MaxBytes): a page ends early rather than outgrow
// MaxAdminMessageBytes, and its page token continues from there.
const AdminPageBytes = 8 << 20

// MaxHeaderListBytes bounds a request's metadata as a whole (HTTP/2
// SETTINGS_MAX_HEADER_LIST_SIZE, counted as HPACK does: name, value and 32
// bytes per field). istio-agent sends about 1.5 KiB (a projected token,
// clusterid and gRPC's own headers). A request beyond it is refused by the
// gRPC transport before the service runs, so it is neither answered with a
// reason nor recorded in the issuance log; the server advertises the limit,
// so well-behaved clients refuse to send such a request in the first place.
const MaxHeaderListBytes = 16 << 10

// MaxStreamsPerConnection bounds the requests one connection may have
// open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); istio-agent
// sends one at a time.
const MaxStreamsPerConnection = 16

// RequestTimeout bounds a certificate request from the arrival of its
// headers, the reading of its message included: a client that trickles
// its request does not hold a place among ServiceOptions.MaxInFlight for
// longer.
const RequestTimeout = 30 * time.Second

// Connection limits, the same on the certificate service and the admin API:
// a connection must finish its TLS handshake and HTTP/2 preface within
// HandshakeTimeout, and one with no stream open for IdleTimeout is closed.
const (
	HandshakeTimeout = 10 * time.Second
	// IdleTimeout: agents renew every few hours, so an idle connection is
	// closed after two minutes and memory follows the connections in use
	// rather than the size of the fleet; agents reconnect on demand.
	IdleTimeout = 2 * time.Minute
)

// connectionLimits are the server options that bound what a connection
// that does nothing may hold.
func connectionLimits() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ConnectionTimeout(HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: IdleTimeout}),
	}
}

// NewGRPCServer returns a gRPC server over TLS that serves the certificate
// service, the standard health service (reporting SERVING) and gRPC server
// metrics registered with reg.
func NewGRPCServer(tlsCfg *tls.Config, svc *Service, reg prometheus.Registerer) (*grpc.Server, *health.Server) {
	srvMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets(prometheus.ExponentialBuckets(0.0005, 2, 14)),
	))
	reg.MustRegister(srvMetrics)
	// Connections made with a client certificate end before it expires.
	certConns := NewClientCertConns(credentials.NewTLS(tlsCfg))
	opts := []grpc.ServerOption{
		grpc.Creds(certConns),
		grpc.ChainUnaryInterceptor(certConns.UnaryServerInterceptor(), srvMetrics.UnaryServerInterceptor()),
		// Agents send one request at a time: more streams on one
		// connection are a flood.
		grpc.MaxConcurrentStreams(MaxStreamsPerConnection),
		grpc.ChainStreamInterceptor(certConns.StreamServerInterceptor(), srvMetrics.StreamServerInterceptor()),
		grpc.MaxRecvMsgSize(svc.csr.maxBytes() + MaxRequestBytes),
		grpc.MaxHeaderListSize(MaxHeaderListBytes),
		// Agents keep their connection open between renewals: keep what an
		// idle connection holds small. The read buffer is the connection's
		// own; a request fits in it. The write buffer is shared between
		// connections and held only while a connection writes, so it keeps
		// grpc's default size, in which an answer (headers, message,
		// trailers) goes out in one TLS write.
		grpc.ReadBufferSize(4 << 10),
	}
	refused := svc.metrics.rejections.WithLabelValues("overload_in_flight")
	opts = append(opts, grpc.InTapHandle(svc.admission.tap(refused.Inc)))
	s := grpc.NewServer(append(opts, connectionLimits()...)...)
	pb.RegisterIstioCertificateServiceServer(s, svc)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(pb.IstioCertificateService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	srvMetrics.InitializeMetrics(s)
	return s, hs
}

// MetricsHandler serves /metrics from gather and a /healthz that answers
// 200 while ready() reports true (with ready's detail, if any, on a second
// line: a degraded daemon), and 503 with ready's reason otherwise.
func MetricsHandler(gather prometheus.Gatherer, ready func() (bool, string)) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gather, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := ready()
		if ok {
			if why != "" {
				why += "\n"
			}
			_, _ = w.Write([]byte("ok\n" + why))
			return
		}
		http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
	})
	return mux
}
