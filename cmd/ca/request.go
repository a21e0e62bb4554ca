package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.step.sm/crypto/pemutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/atomicfile"
	"github.com/transitca/transitca/internal/spiffeid"
	"github.com/transitca/transitca/issuer"
)

func runRequest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca request", stderr)
	addr := fs.String("addr", "127.0.0.1:15012", "transitca gRPC address")
	token := fs.String("token", "", "service-account token")
	tokenFile := fs.String("token-file", "", "file holding the service-account token")
	rootCert := fs.String("root-cert", "", "PEM root bundle that verifies the CA's serving certificate (required)")
	serverName := fs.String("server-name", "", "name to verify in the CA's serving certificate (default: the host of --addr)")
	out := fs.String("out", ".", "directory to write key.pem, cert-chain.pem and root-cert.pem to")
	identity := fs.String("identity", "", "SPIFFE ID to ask for (default: from the token's claims and --trust-domain)")
	trustDomain := fs.String("trust-domain", "cluster.local", "trust domain, when the identity is derived from the token")
	keyType := fs.String("key-type", "ecdsa", "key to generate: ecdsa (P-256) or rsa (2048)")
	ttl := fs.Duration("ttl", 24*time.Hour, "requested lifetime (the CA may shorten it)")
	cluster := fs.String("cluster-id", ca.DefaultCluster, "clusterid header")
	timeout := fs.Duration("timeout", 30*time.Second, "request timeout")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ca request --root-cert FILE (--token T | --token-file F) [flags]")
		fmt.Fprintln(stderr, "\nAsks for a workload certificate as istio-agent does: a fresh key, a CSR for the")
		fmt.Fprintln(stderr, "workload's SPIFFE ID, and the service-account token as bearer credentials.")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	tok := *token
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return err
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" {
		return errors.New("a token is required (--token or --token-file)")
	}
	if *rootCert == "" {
		return errors.New("--root-cert is required: the CA's root bundle (for a dev CA, <data-dir>/root-cert.pem)")
	}
	id := *identity
	if id == "" {
		ns, sa, err := tokenServiceAccount(tok)
		if err != nil {
			return fmt.Errorf("derive the identity from the token (or pass --identity): %w", err)
		}
		id = spiffeid.Workload(*trustDomain, ns, sa)
	}
	key, csrPEM, err := newCSR(id, *keyType)
	if err != nil {
		return err
	}
	roots, err := os.ReadFile(*rootCert)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		return fmt.Errorf("%s holds no PEM certificates", *rootCert)
	}
	name := *serverName
	if name == "" {
		host, _, err := net.SplitHostPort(*addr)
		if err != nil {
			return fmt.Errorf("--addr %q: %w", *addr, err)
		}
		name = host
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, ServerName: name, MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok, "clusterid", *cluster)
	resp, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(ttl.Seconds()),
	})
	if err != nil {
		return err
	}
	chain := resp.GetCertChain()
	if len(chain) < 2 {
		return fmt.Errorf("the CA answered a chain of %d elements; want leaf, intermediates and root bundle", len(chain))
	}
	leaf, err := pemutil.ParseCertificate([]byte(chain[0]))
	if err != nil {
		return fmt.Errorf("the leaf the CA answered: %w", err)
	}
	keyBlock, err := pemutil.Serialize(key, pemutil.WithPKCS8(true))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{"key.pem", pem.EncodeToMemory(keyBlock), 0o600},
		{"cert-chain.pem", []byte(strings.Join(chain[:len(chain)-1], "")), 0o644},
		{"root-cert.pem", []byte(chain[len(chain)-1]), 0o644},
	}
	for _, f := range files {
		if err := atomicfile.Write(filepath.Join(*out, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "issued %s serial %x, valid until %s (%s)\nwrote %s\n",
		id, leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.RFC3339), time.Until(leaf.NotAfter).Round(time.Minute),
		filepath.Join(*out, "{key.pem,cert-chain.pem,root-cert.pem}"))
	return nil
}

// newCSR makes a key and a CSR whose only SAN is the SPIFFE ID, with an
// empty subject, as istio-agent does.
func newCSR(id, keyType string) (crypto.Signer, []byte, error) {
	u, err := url.Parse(id)
	if err != nil {
		return nil, nil, fmt.Errorf("identity %q: %w", id, err)
	}
	typ, ok := map[string]issuer.KeyType{"ecdsa": issuer.KeyECDSAP256, "rsa": issuer.KeyRSA2048}[keyType]
	if !ok {
		return nil, nil, fmt.Errorf("--key-type %q: want ecdsa or rsa", keyType)
	}
	key, err := issuer.GenerateKey(typ)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, nil, err
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// tokenServiceAccount reads, without verifying (the CA verifies), the
// namespace and service account a projected service-account token names.
func tokenServiceAccount(tok string) (ns, sa string, err error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return "", "", errors.New("token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", "", fmt.Errorf("token payload: %w", err)
	}
	var claims struct {
		Kube struct {
			Namespace      string `json:"namespace"`
			ServiceAccount struct {
				Name string `json:"name"`
			} `json:"serviceaccount"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", "", fmt.Errorf("token payload: %w", err)
	}
	if claims.Kube.Namespace == "" || claims.Kube.ServiceAccount.Name == "" {
		return "", "", errors.New("token has no kubernetes.io namespace and service account claims")
	}
	return claims.Kube.Namespace, claims.Kube.ServiceAccount.Name, nil
}
