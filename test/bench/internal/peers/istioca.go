package peers

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	grpcprom "github.com/grpc-ecosystem/go-grpc-prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	istiogrpc "istio.io/istio/pilot/pkg/grpc"
	istiokeepalive "istio.io/istio/pkg/keepalive"
	"istio.io/istio/pkg/security"
	pkica "istio.io/istio/security/pkg/pki/ca"
	caserver "istio.io/istio/security/pkg/server/ca"

	"github.com/transitca/transitca/ca"
)

// Istio CA modes.
const (
	// IstioPluggedECDSA is istiod's CA with plugged-in ("cacerts") ECDSA
	// P-256 root and intermediate.
	IstioPluggedECDSA = "ecdsa"
	// IstioSelfSignedRSA is istiod's default: a self-signed RSA-2048 CA.
	IstioSelfSignedRSA = "rsa"
)

// IstiodSAN is the name on the Istio CA server's serving certificate, as
// on istiod's.
const IstiodSAN = "istiod.istio-system.svc"

// IstioCAConfig configures an Istio CA server.
type IstioCAConfig struct {
	Dir      string // working directory: CA files, root-cert.pem
	Addr     string // listen address
	Mode     string // IstioPluggedECDSA or IstioSelfSignedRSA
	JWKSFile string // keys that verify service-account tokens
	Issuer   string // the tokens' issuer
	// PprofAddr, when set, serves Go's profiles under /debug/pprof/ there.
	PprofAddr string
}

// RootFile is where the server writes its root bundle once it listens.
func (c IstioCAConfig) RootFile() string { return filepath.Join(c.Dir, "root-cert.pem") }

// Args are the command-line flags of the istio-ca-server subcommand.
func (c IstioCAConfig) Args() []string {
	args := []string{"-dir", c.Dir, "-addr", c.Addr, "-mode", c.Mode, "-jwks", c.JWKSFile, "-issuer", c.Issuer}
	if c.PprofAddr != "" {
		args = append(args, "-pprof", c.PprofAddr)
	}
	return args
}

// ServeIstioCA runs Istio's own CA gRPC server
// (istio.io/istio/security/pkg/server/ca) over an IstioCA
// (istio.io/istio/security/pkg/pki/ca) until ctx ends: what istiod serves
// when the mesh has no external CA. The serving certificate is issued by
// the same CA for istiod's name, and the gRPC server is built with istiod's
// options: istiod's keepalive and stream limits, the Prometheus
// interceptor, TLS 1.2+ that asks for (but does not require) a client
// certificate. Tokens are checked by transitca's own JWT authenticator
// against the same JWKS, so that both servers do the same authentication
// work; istiod would instead call the Kubernetes TokenReview API, which
// costs more.
func ServeIstioCA(ctx context.Context, c IstioCAConfig) error {
	opts, err := istioCAOptions(c)
	if err != nil {
		return err
	}
	istioCA, err := pkica.NewIstioCA(opts)
	if err != nil {
		return fmt.Errorf("istio ca: %w", err)
	}
	authn, err := newIstioJWT(c.JWKSFile, c.Issuer)
	if err != nil {
		return err
	}
	srv, err := caserver.New(istioCA, 24*time.Hour, []security.Authenticator{authn}, nil)
	if err != nil {
		return fmt.Errorf("istio ca server: %w", err)
	}
	certPEM, keyPEM, err := istioCA.GenKeyCert([]string{IstiodSAN}, 24*time.Hour, false)
	if err != nil {
		return fmt.Errorf("istio ca serving certificate: %w", err)
	}
	serving, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("istio ca serving certificate: %w", err)
	}
	roots := x509.NewCertPool()
	rootPEM := istioCA.GetCAKeyCertBundle().GetRootCertPem()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return errors.New("istio ca: no root certificate")
	}
	tlsCfg := &tls.Config{
		Certificates: []tls.Certificate{serving},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    roots,
		MinVersion:   tls.VersionTLS12,
	}
	grpcprom.EnableHandlingTimeHistogram()
	gopts := istiogrpc.ServerOptions(istiokeepalive.DefaultOption(), func(int64) {}, grpcprom.UnaryServerInterceptor)
	gopts = append(gopts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	gs := grpc.NewServer(gopts...)
	srv.Register(gs)
	lis, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.RootFile(), rootPEM, 0o644); err != nil {
		lis.Close()
		return err
	}
	if c.PprofAddr != "" {
		stop, err := ServePprof(c.PprofAddr)
		if err != nil {
			lis.Close()
			return err
		}
		defer stop()
	}
	go func() { <-ctx.Done(); gs.Stop() }()
	return gs.Serve(lis)
}

// istioCAOptions builds the IstioCA the way istiod does for each mode.
func istioCAOptions(c IstioCAConfig) (*pkica.IstioCAOptions, error) {
	const (
		defaultCertTTL = 24 * time.Hour
		maxCertTTL     = 90 * 24 * time.Hour
		rsaKeySize     = 2048
	)
	switch c.Mode {
	case IstioPluggedECDSA:
		bundle, err := writePluggedECDSA(c.Dir)
		if err != nil {
			return nil, err
		}
		return pkica.NewPluggedCertIstioCAOptions(bundle, defaultCertTTL, maxCertTTL, rsaKeySize)
	case IstioSelfSignedRSA:
		// istiod's self-signed CA (NewSelfSignedIstioCAOptions) keeps its
		// key in a Kubernetes secret; with none, it generates exactly this
		// RSA-2048 self-signed root. The debug variant generates the same
		// without the Kubernetes client.
		return pkica.NewSelfSignedDebugIstioCAOptions("", 10*365*24*time.Hour, defaultCertTTL, maxCertTTL, "cluster.local", rsaKeySize)
	}
	return nil, fmt.Errorf("istio ca mode %q: want %q or %q", c.Mode, IstioPluggedECDSA, IstioSelfSignedRSA)
}

// writePluggedECDSA writes what an operator puts in istiod's "cacerts"
// secret: an ECDSA P-256 root, an intermediate signed by it that istiod
// signs with, and the chain.
func writePluggedECDSA(dir string) (pkica.SigningCAFileBundle, error) {
	b := pkica.SigningCAFileBundle{
		RootCertFile:    filepath.Join(dir, "plugged-root-cert.pem"),
		CertChainFiles:  []string{filepath.Join(dir, "cert-chain.pem")},
		SigningCertFile: filepath.Join(dir, "ca-cert.pem"),
		SigningKeyFile:  filepath.Join(dir, "ca-key.pem"),
	}
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return b, err
	}
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"cluster.local"}, CommonName: "Root CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return b, err
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return b, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return b, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{Organization: []string{"cluster.local"}, CommonName: "Intermediate CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, root, caKey.Public(), rootKey)
	if err != nil {
		return b, err
	}
	caKeyDER, err := x509.MarshalECPrivateKey(caKey)
	if err != nil {
		return b, err
	}
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	files := map[string][]byte{
		b.RootCertFile:      rootPEM,
		b.CertChainFiles[0]: append(append([]byte{}, caPEM...), rootPEM...),
		b.SigningCertFile:   caPEM,
		b.SigningKeyFile:    pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: caKeyDER}),
	}
	for name, data := range files {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return b, err
		}
	}
	return b, nil
}

// istioJWT adapts transitca's JWT authenticator to Istio's
// security.Authenticator: the same token checks, the same SPIFFE identity.
type istioJWT struct{ a *ca.JWTAuthenticator }

func newIstioJWT(jwksFile, issuer string) (*istioJWT, error) {
	data, err := os.ReadFile(jwksFile)
	if err != nil {
		return nil, err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("jwks %s: %w", jwksFile, err)
	}
	a, err := ca.NewJWTAuthenticator(ca.JWTOptions{Issuer: issuer, KeySet: &set, TrustDomain: "cluster.local"})
	if err != nil {
		return nil, err
	}
	return &istioJWT{a: a}, nil
}

func (j *istioJWT) AuthenticatorType() string { return "KubeJWTAuthenticator" }

func (j *istioJWT) Authenticate(actx security.AuthContext) (*security.Caller, error) {
	ctx := actx.GrpcContext
	if ctx == nil {
		return nil, errors.New("not a gRPC request")
	}
	cred, err := ca.CredentialsFromContext(ctx)
	if err != nil {
		return nil, err
	}
	cred.PeerChains = nil // tokens only, as for transitca's agents
	caller, err := j.a.Authenticate(ctx, cred)
	if err != nil {
		return nil, err
	}
	return &security.Caller{
		AuthSource: security.AuthSourceIDToken,
		Identities: []string{caller.SPIFFEID},
		KubernetesInfo: security.KubernetesInfo{
			PodNamespace:      caller.Namespace,
			PodServiceAccount: caller.ServiceAccount,
		},
	}, nil
}
