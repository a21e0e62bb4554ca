package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"
)

// issued is what a load client saw: the leaf it received, or the error.
type issued struct {
	leaf *x509.Certificate
	err  error
}

// runLoad starts n clients that request certificates for spiffeID with
// tok from s, one after the other, each on its own connection, until ctx
// ends; every outcome goes to record (called concurrently). The returned
// function waits for the clients to stop.
func runLoad(ctx context.Context, t *testing.T, s *caServer, n int, tok, spiffeID string, record func(issued)) (wait func()) {
	t.Helper()
	pool := rootPool(t, readFile(t, s.RootFile))
	id, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
			if err != nil {
				record(issued{err: err})
				return
			}
			defer conn.Close()
			client := pb.NewIstioCertificateServiceClient(conn)
			for ctx.Err() == nil {
				key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
				rctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok), 10*time.Second)
				resp, err := client.CreateCertificate(rctx, &pb.IstioCertificateRequest{
					Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
				})
				cancel()
				if err != nil {
					record(issued{err: err})
					time.Sleep(10 * time.Millisecond)
					continue
				}
				block, _ := pem.Decode([]byte(resp.CertChain[0]))
				if block == nil {
					record(issued{err: errNoPEM})
					continue
				}
				leaf, err := x509.ParseCertificate(block.Bytes)
				record(issued{leaf: leaf, err: err})
			}
		}()
	}
	return wg.Wait
}

type e2eError string

func (e e2eError) Error() string { return string(e) }

const errNoPEM = e2eError("the answer's leaf is not PEM")
