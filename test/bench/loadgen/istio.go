package loadgen

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	istiogrpc "istio.io/istio/pilot/pkg/grpc"
	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/pki/util"
)

// Target is a CA that speaks Istio's IstioCertificateService.
type Target struct {
	// Addr is host:port.
	Addr string
	// RootCertFile is the PEM bundle the CA's serving certificate chains
	// to (what istio-agent reads from the istio-ca-root-cert ConfigMap).
	RootCertFile string
	// SAN is the name the serving certificate must carry (CAEndpointSAN).
	SAN string
	// ClusterID is sent as the clusterid header; "Kubernetes" when empty.
	ClusterID string
}

// Dial opens one connection the way istio-agent's CA client does: Istio's
// own gRPC client options (TLS against the root bundle, keepalive, window
// and message sizes) from istio.io/istio/pilot/pkg/grpc. Like the agent it
// connects lazily, on the first request.
func Dial(t Target) (*grpc.ClientConn, error) {
	opts, err := istiogrpc.ClientOptions(nil, &istiogrpc.TLSOptions{
		RootCert:      t.RootCertFile,
		ServerAddress: t.Addr,
		SAN:           t.SAN,
	})
	if err != nil {
		return nil, fmt.Errorf("client options for %s: %w", t.Addr, err)
	}
	conn, err := grpc.NewClient(t.Addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", t.Addr, err)
	}
	return conn, nil
}

// Request is one CreateCertificate call's content.
type Request struct {
	CSR   []byte
	Token string
	// TTL is the requested validity_duration; istio-agent asks for 24h by
	// default (SECRET_TTL).
	TTL time.Duration
}

// CreateCertificate sends what istio-agent's CitadelClient.CSRSign sends —
// the CSR, validity_duration, metadata {CertSigner: ""}, the clusterid
// header and "authorization: Bearer <token>" — and checks the answer the
// way it does (more than one element). It does not retry: a failure is
// counted, not hidden.
func CreateCertificate(ctx context.Context, c pb.IstioCertificateServiceClient, clusterID string, r Request) ([]string, error) {
	if clusterID == "" {
		clusterID = "Kubernetes"
	}
	req := &pb.IstioCertificateRequest{
		Csr:              string(r.CSR),
		ValidityDuration: int64(r.TTL / time.Second),
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			security.CertSigner: {Kind: &structpb.Value_StringValue{StringValue: ""}},
		}},
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "clusterid", clusterID, "authorization", "Bearer "+r.Token)
	resp, err := c.CreateCertificate(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(resp.GetCertChain()) <= 1 {
		return nil, errors.New("invalid empty CertChain")
	}
	return resp.GetCertChain(), nil
}

// KeyType is the key a simulated workload generates.
type KeyType string

// Key types.
const (
	KeyECDSA   KeyType = "ecdsa-p256"
	KeyRSA2048 KeyType = "rsa-2048"
)

// Workload is one simulated workload's request material: its identity, a
// CSR for that identity made by Istio's util.GenCSR, and its token.
type Workload struct {
	Namespace, ServiceAccount string
	SPIFFEID                  string
	CSR                       []byte
	Token                     string
}

// GenerateCSRs makes n CSRs with Istio's util.GenCSR, each with a fresh key
// of the given type, for spiffeID(i) (i from 0 to n-1), on all cores. This is
// done before any timed run: key generation is the workload's work, not the
// CA's, and is not measured.
func GenerateCSRs(n int, key KeyType, spiffeID func(i int) string) ([][]byte, error) {
	out := make([][]byte, n)
	var (
		mu       sync.Mutex
		firstErr error
		next     int
	)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				opts := util.CertOptions{Host: spiffeID(i)}
				switch key {
				case KeyRSA2048:
					opts.RSAKeySize = 2048
				default:
					opts.ECSigAlg = util.EcdsaSigAlg
				}
				csr, _, err := util.GenCSR(opts)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("GenCSR for %s: %w", spiffeID(i), err)
					}
					mu.Unlock()
					return
				}
				out[i] = csr
			}
		})
	}
	wg.Wait()
	return out, firstErr
}
