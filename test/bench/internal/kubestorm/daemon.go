package kubestorm

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	pb "istio.io/api/security/v1alpha1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/test/bench/internal/peers"
	"github.com/transitca/transitca/test/bench/loadgen"
)

// trustDomain is the daemon's SPIFFE trust domain.
const trustDomain = "cluster.local"

// daemon is a running "ca serve".
type daemon struct {
	proc        *peers.Transitca
	target      loadgen.Target
	metricsAddr string
}

// startDaemon starts "ca serve" in memory mode with auth's token check
// (Kubeconfig: TokenReview; JWKSFile and Issuer: offline), on mounts of its own on the run's Vault dev server (the root
// key's home; the intermediate key stays in memory), which it starts
// first if need be.
func (r *run) startDaemon(ctx context.Context, round int, bin string, auth peers.TransitcaConfig) (*daemon, error) {
	check := "TokenReview"
	if auth.Kubeconfig == "" {
		check = "JWKS"
	}
	r.logf("starting ca serve (memory mode, %s)", check)
	if r.vault == nil {
		v, err := peers.StartVault()
		if err != nil {
			return nil, err
		}
		r.cleanup = append(r.cleanup, v.Stop)
		r.vault = v
	}
	v := r.vault
	t, err := peers.StartTransitcaOn(ctx, v, fmt.Sprintf("r%d", round), peers.TransitcaConfig{
		Binary: bin, Dir: filepath.Join(r.dir, fmt.Sprintf("transitca-r%d", round)), Mode: "memory",
		Kubeconfig: auth.Kubeconfig, JWKSFile: auth.JWKSFile, Issuer: auth.Issuer, MaxInFlight: r.opts.MaxInFlight,
	})
	if err != nil {
		return nil, err
	}
	r.cleanup = append(r.cleanup, t.Stop)
	return &daemon{
		proc: t, metricsAddr: t.MetricsAddr,
		target: loadgen.Target{Addr: t.Addr, RootCertFile: t.RootFile, SAN: "localhost"},
	}, nil
}

// request is one workload's start: a new connection and one request. It
// returns the connection, to be kept open, and the leaf certificate.
func (d *daemon) request(ctx context.Context, w *workload) (io.Closer, *x509.Certificate, error) {
	conn, err := loadgen.Dial(d.target)
	if err != nil {
		return nil, nil, err
	}
	chain, err := loadgen.CreateCertificate(ctx, pb.NewIstioCertificateServiceClient(conn), "",
		loadgen.Request{CSR: w.csr, Token: w.token, TTL: 24 * time.Hour})
	if err != nil {
		return conn, nil, err
	}
	leaf, err := parseLeaf(chain[0])
	return conn, leaf, err
}

// probe makes one request before the storm, checking that the daemon
// issues through TokenReview at all.
func (d *daemon) probe(ctx context.Context, w *workload) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, leaf, err := d.request(ctx, w)
	if conn != nil {
		defer conn.Close()
	}
	if err != nil {
		return err
	}
	return checkLeaf(leaf, w)
}

func parseLeaf(text string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(text))
	if b == nil {
		return nil, errors.New("no PEM certificate in the answer")
	}
	return x509.ParseCertificate(b.Bytes)
}

// checkLeaf checks that the certificate names exactly the workload's SPIFFE
// ID.
func checkLeaf(c *x509.Certificate, w *workload) error {
	want := w.spiffeID(trustDomain)
	if len(c.URIs) != 1 || c.URIs[0].String() != want {
		return fmt.Errorf("%w: pod %s/%s got %v, want %s", ErrCertificate, w.namespace, w.pod, c.URIs, want)
	}
	return nil
}

// retoken mints a new token for the workload's pod.
func retoken(ctx context.Context, c kubernetes.Interface, w *workload) error {
	pod, err := c.CoreV1().Pods(w.namespace).Get(ctx, w.pod, metav1.GetOptions{})
	if err != nil {
		return err
	}
	w.token, err = podToken(ctx, c, pod, []string{ca.DefaultAudience}, int64(4*time.Hour/time.Second))
	return err
}

// writeJWKS writes the API server's service account token keys to path.
func writeJWKS(ctx context.Context, srv *kubetest.Server, path string) error {
	jwks, err := apiServerScraper(srv, "/openid/v1/jwks").get(ctx)
	if err != nil {
		return err
	}
	return os.WriteFile(path, jwks, 0o600)
}
