package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// What pilot-agent is given, as the injector and the chart give it, with
// the test's short lifetimes.
const (
	// agentSecretTTL is the lifetime each agent asks for (SECRET_TTL).
	// transitca back-dates NotBefore by half of so short a lifetime, so a
	// certificate lives 15s after it is issued and the agent, renewing at
	// half of that, renews every 7.5s.
	agentSecretTTL = 30 * time.Second
	// vmProvisionTTL is the lifetime of the VM's bootstrap certificate. A
	// renewal on a client certificate ends no later than the certificate
	// presented, so a VM renews on its certificates alone only until the
	// one it was provisioned with ends (transitca back-dates NotBefore by
	// 5 minutes, so this one ends 15 minutes after it is issued): long
	// enough for the mesh's tests, in its own tier ("vm").
	vmProvisionTTL = 20 * time.Minute
	// sidecarCertDir is where the sidecars and the gateway write their
	// certificates (OUTPUT_CERTS). Not ./etc/certs: the agent would read
	// files there as mounted certificates instead of asking the CA.
	sidecarCertDir = "var/lib/istio/certs"
	// vmCertDir is where a VM keeps its provisioned certificate and where
	// the agent renews it (PROV_CERT and OUTPUT_CERTS), as Istio's VM
	// guide sets them.
	vmCertDir = "etc/certs"
	// clusterID is the mesh's one cluster, as the chart names it.
	clusterID = "Kubernetes"
)

// The pod filesystem's well-known paths, relative to its root.
const (
	tokenPath      = "var/run/secrets/tokens/istio-token"
	rootCertDir    = "var/run/secrets/istio"               // istio-ca-root-cert
	istiodTLSDir   = "var/run/secrets/istiod/tls"          // istiod-tls
	istiodCADir    = "var/run/secrets/istiod/ca"           // istio-ca-root-cert
	meshConfigDir  = "etc/istio/config"                    // ConfigMap istio
	xdsSocket      = "etc/istio/proxy/XDS"                 // the agent's XDS proxy
	grpcBootstrap  = "etc/istio/proxy/grpc-bootstrap.json" // written by the agent
	listenerToAsk  = "kubernetes.default.svc.cluster.local:443"
	platformLogTag = "platform detected is"
)

// agentSpec is one pilot-agent: a sidecar of a pod, a gateway (pilot-agent
// proxy router), or a VM renewing with its certificate alone.
type agentSpec struct {
	pod, ns, sa string
	router      bool
	vm          bool
}

func (s agentSpec) identity() string { return spiffeID(s.ns, s.sa) }

// istioAgent is a running pilot-agent with Envoy disabled (as for
// proxyless gRPC), the CA at CA_ADDR, and istiod as its discovery address.
// Its certificates, metrics and XDS stream are watched from the moment it
// starts.
type istioAgent struct {
	*program
	agentSpec
	statusPort int
	// certDir is OUTPUT_CERTS, absolute.
	certDir string
	xds     *xdsStandIn
	watch   *agentWatch
}

// agentEnv is pilot-agent's environment.
func agentEnv(s agentSpec, caAddr, istiodAddr string, statusPort int) []string {
	proxyConfig, _ := json.Marshal(map[string]any{
		// localhost: the agent then checks istiod's certificate for
		// istiod.istio-system.svc, as in a pod.
		"discoveryAddress": istiodAddr,
		"statusPort":       statusPort,
	})
	env := []string{
		// No probing of cloud metadata servers: the platform is none.
		"CLOUD_PLATFORM=none",
		"DISABLE_ENVOY=true",
		// An address, not localhost: with localhost the agent would check
		// the CA's certificate for istiod's name.
		"CA_ADDR=" + caAddr,
		"POD_NAME=" + s.pod,
		"POD_NAMESPACE=" + s.ns,
		"SERVICE_ACCOUNT=" + s.sa,
		"INSTANCE_IP=127.0.0.1",
		"ISTIO_META_CLUSTER_ID=" + clusterID,
		"SECRET_TTL=" + agentSecretTTL.String(),
		// Renew at exactly half the remaining lifetime, so the test knows
		// when.
		"SECRET_GRACE_PERIOD_RATIO_JITTER=0",
		"PROXY_CONFIG=" + string(proxyConfig),
	}
	if s.vm {
		env = append(env, "PROV_CERT=./"+vmCertDir, "OUTPUT_CERTS=./"+vmCertDir)
	} else {
		env = append(env, "OUTPUT_CERTS=./"+sidecarCertDir)
	}
	return env
}

// issuedCert is one certificate found in an agent's OUTPUT_CERTS, as first
// seen.
type issuedCert struct {
	seen   time.Time
	leaf   *x509.Certificate
	chain  []*x509.Certificate // leaf first, then the intermediate
	bundle []*x509.Certificate // root-cert.pem at that moment
	// provisioned is set for a VM's bootstrap certificate, put there
	// before the agent started; the others the agent wrote.
	provisioned bool
}

// agentWatch follows an agent from outside, as an operator would: the
// files in OUTPUT_CERTS every 200ms, and its metrics
// (/stats/prometheus on the status port) every second.
type agentWatch struct {
	a      *istioAgent
	mu     sync.Mutex
	certs  []issuedCert
	bundle []*x509.Certificate // last root-cert.pem read
	// minExpiry is the least istio_agent_cert_expiry_seconds scraped, of
	// expiries scrapes.
	minExpiry float64
	expiries  int
	scrapes   int
	// counters holds, per process (pid), the last values of the agent's
	// counters.
	counters  map[int]agentCounters
	scrapeErr error
	// provisioned are the serials of the bootstrap certificates given to
	// a VM.
	provisioned map[string]bool
}

type agentCounters struct {
	csr, csrFailed             float64
	istiodFailures, istiodErrs float64
}

func (w *agentWatch) run(ctx context.Context) {
	certTick, metricsTick := time.NewTicker(200*time.Millisecond), time.NewTicker(time.Second)
	defer certTick.Stop()
	defer metricsTick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-certTick.C:
			w.readCerts()
		case <-metricsTick.C:
			w.scrapeMetrics(ctx)
		}
	}
}

func (w *agentWatch) readCerts() {
	chain, err := readPEMFile(filepath.Join(w.a.certDir, "cert-chain.pem"))
	if err != nil || len(chain) < 2 {
		return // not written yet, or being written
	}
	bundle, err := readPEMFile(filepath.Join(w.a.certDir, "root-cert.pem"))
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bundle = bundle
	if n := len(w.certs); n > 0 && w.certs[n-1].leaf.Equal(chain[0]) {
		return
	}
	w.certs = append(w.certs, issuedCert{seen: time.Now(), leaf: chain[0], chain: chain, bundle: bundle,
		provisioned: w.provisioned[chain[0].SerialNumber.String()]})
}

// markProvisioned notes a VM's bootstrap certificate.
func (w *agentWatch) markProvisioned(serial string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.provisioned[serial] = true
}

func (w *agentWatch) scrapeMetrics(ctx context.Context) {
	pid := w.a.pid()
	if !w.a.running() {
		return
	}
	s, err := scrape(ctx, fmt.Sprintf("http://127.0.0.1:%d/stats/prometheus", w.a.statusPort))
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.scrapeErr = err
		return
	}
	w.scrapes++
	if v, ok := metric(s, "istio_agent_cert_expiry_seconds", `resource_name="default"`); ok {
		if w.expiries == 0 || v < w.minExpiry {
			w.minExpiry = v
		}
		w.expiries++
	}
	var c agentCounters
	c.csr, _ = metric(s, "istio_agent_num_outgoing_requests", `request_type="csr"`)
	c.csrFailed, _ = metric(s, "istio_agent_num_failed_outgoing_requests", `request_type="csr"`)
	c.istiodFailures, _ = metric(s, "istio_agent_istiod_connection_failures")
	c.istiodErrs, _ = metric(s, "istio_agent_istiod_connection_terminations", `type="error"`)
	w.counters[pid] = c
}

// issued returns the certificates seen so far.
func (w *agentWatch) issued() []issuedCert {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]issuedCert(nil), w.certs...)
}

// written returns the certificates the agent wrote itself.
func (w *agentWatch) written() []issuedCert {
	var out []issuedCert
	for _, c := range w.issued() {
		if !c.provisioned {
			out = append(out, c)
		}
	}
	return out
}

// totals sums the counters of every process the agent ran as.
func (w *agentWatch) totals() agentCounters {
	w.mu.Lock()
	defer w.mu.Unlock()
	var t agentCounters
	for _, c := range w.counters {
		t.csr += c.csr
		t.csrFailed += c.csrFailed
		t.istiodFailures += c.istiodFailures
		t.istiodErrs += c.istiodErrs
	}
	return t
}

// current returns the last certificate seen and the root-cert.pem read
// with it.
func (w *agentWatch) current() (issuedCert, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.certs) == 0 {
		return issuedCert{}, false
	}
	return w.certs[len(w.certs)-1], true
}

// xdsStandIn stands where Envoy (or a proxyless gRPC client) would: it
// connects to the agent's XDS proxy socket with the node the agent wrote
// into its gRPC bootstrap, asks for the listener of the API server's
// Service, acknowledges what comes, and reconnects after a broken stream
// as Envoy does. The agent proxies the stream to istiod over TLS with its
// own credentials (its token; a VM its certificate).
type xdsStandIn struct {
	dir string

	mu        sync.Mutex
	sessions  []xdsSession
	responses int
}

// xdsSession is one stream through the agent.
type xdsSession struct {
	start, firstResponse, end time.Time
	responses                 int
	err                       error
}

func (x *xdsStandIn) node() (*corev3.Node, error) {
	b, err := os.ReadFile(filepath.Join(x.dir, grpcBootstrap))
	if err != nil {
		return nil, err
	}
	var bs struct {
		Node struct {
			ID       string          `json:"id"`
			Metadata json.RawMessage `json:"metadata"`
		} `json:"node"`
	}
	if err := json.Unmarshal(b, &bs); err != nil {
		return nil, err
	}
	md := &structpb.Struct{}
	if err := protojson.Unmarshal(bs.Node.Metadata, md); err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	if bs.Node.ID == "" {
		return nil, errors.New("no node id in the gRPC bootstrap")
	}
	return &corev3.Node{Id: bs.Node.ID, Metadata: md}, nil
}

func (x *xdsStandIn) run(ctx context.Context) {
	for ctx.Err() == nil {
		s := x.session(ctx)
		x.mu.Lock()
		x.sessions = append(x.sessions, s)
		x.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond): // Envoy's first backoff
		}
	}
}

func (x *xdsStandIn) session(ctx context.Context) (s xdsSession) {
	s.start = time.Now()
	defer func() { s.end = time.Now() }()
	node, err := x.node()
	if err != nil {
		s.err = err
		return s
	}
	conn, err := grpc.NewClient("unix://"+filepath.Join(x.dir, xdsSocket), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.err = err
		return s
	}
	defer conn.Close()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		s.err = err
		return s
	}
	const listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: listenerType, ResourceNames: []string{listenerToAsk}}); err != nil {
		s.err = err
		return s
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() == nil {
				s.err = err
			}
			return s
		}
		if s.responses == 0 {
			s.firstResponse = time.Now()
		}
		s.responses++
		x.mu.Lock()
		x.responses++
		x.mu.Unlock()
		if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(),
			ResponseNonce: resp.GetNonce(), ResourceNames: []string{listenerToAsk}}); err != nil {
			s.err = err
			return s
		}
	}
}

// report returns the finished sessions and whether one is open with a
// response.
func (x *xdsStandIn) report() (ended []xdsSession, responses int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]xdsSession(nil), x.sessions...), x.responses
}

// istiodProc is a running pilot-discovery: istiod with its CA off, its
// listeners on loopback, serving with the istiod-tls files transitca wrote.
type istiodProc struct {
	*program
	secureAddr, grpcAddr, httpAddr, httpsAddr, monitoringAddr string
}

// ready reports whether istiod answers /ready on its HTTP port.
func (i *istiodProc) ready(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+i.httpAddr+"/ready", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("istiod /ready: %s", resp.Status)
	}
	return nil
}

// servingChain is the certificate chain istiod presents on its secure XDS
// port, as an agent sees it in the handshake.
func (i *istiodProc) servingChain() ([]*x509.Certificate, error) {
	conn, err := tls.Dial("tcp", i.secureAddr, &tls.Config{
		InsecureSkipVerify: true, //nolint:gosec // the chain is returned for the test to check
		ServerName:         "istiod.istio-system.svc", NextProtos: []string{"h2"},
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates, nil
}

// xdsConnections is istiod's count of connected XDS clients
// (pilot_xds, summed over versions).
func (i *istiodProc) xdsConnections(ctx context.Context) (float64, error) {
	s, err := scrape(ctx, "http://"+i.monitoringAddr+"/metrics")
	if err != nil {
		return 0, err
	}
	v, _ := metric(s, "pilot_xds")
	return v, nil
}

func itoa(n int) string { return strconv.Itoa(n) }

// logLines returns the lines of a program's log that contain s.
func logLines(log, s string) []string {
	var out []string
	for l := range strings.SplitSeq(log, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}
