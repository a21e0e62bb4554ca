package driver

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"google.golang.org/grpc"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/test/bench/internal/peers"
	"github.com/transitca/transitca/test/bench/loadgen"
)

// system is one thing under test.
type system struct {
	id    string
	label string
	// what the server side is, for the report
	note string
	// start starts its server, if it has one of its own.
	start func(ctx context.Context) error
	// check makes one request and checks the answer is right.
	check func(ctx context.Context) error
	// procs are the server processes whose cost is measured.
	procs func() []loadgen.Proc
	// workers overrides the closed-loop concurrency (the crypto bound runs
	// one goroutine per core).
	workers int
	// newOp returns the request op over workers connections, and a
	// function that closes them.
	newOp func(workers int, items []item) (loadgen.Op, func(), error)
	// target is set for systems that speak Istio's gRPC protocol.
	target *loadgen.Target
	// pprof is the address serving the server's Go profiles, if it has
	// one.
	pprof string
}

// System ids.
const (
	sysCrypto       = "crypto"
	sysIstioECDSA   = "istio-ecdsa"
	sysIstioRSA     = "istio-rsa"
	sysPKI          = "vault-pki"
	sysPKINoStore   = "vault-pki-nostore"
	sysTransit      = "vault-transit"
	sysTransitcaMem = "transitca-memory"
	sysTransitcaVlt = "transitca-vault"
	// candidateSuffix marks the systems run from Config.CandidateCA.
	candidateSuffix = "-candidate"
)

func (e *env) loadgenProc() loadgen.Proc { return loadgen.Proc{Name: "loadgen", PID: os.Getpid()} }

func (e *env) vaultProc() loadgen.Proc { return loadgen.Proc{Name: "vault", PID: e.vault.PID} }

// catalog lists every system in report order.
func (e *env) catalog() []*system {
	systems := []*system{
		e.cryptoSystem(),
		e.istioSystem(sysIstioECDSA, peers.IstioPluggedECDSA, "Istio CA server, plugged ECDSA P-256 CA",
			"istio.io/istio/security/pkg/server/ca over an IstioCA with NewPluggedCertIstioCAOptions (P-256 root and intermediate), istiod's gRPC server options, TLS"),
		e.istioSystem(sysIstioRSA, peers.IstioSelfSignedRSA, "Istio CA server, self-signed RSA-2048 CA (istiod default)",
			"the same with istiod's default self-signed RSA-2048 CA"),
		e.pkiSystem(sysPKI, peers.PKIRole, "Vault PKI pki/sign (EC P-256 issuer)", "pki/sign/:role over HTTP, certificates stored"),
		e.pkiSystem(sysPKINoStore, peers.PKIRoleNoStore, "Vault PKI pki/sign, no_store", "the same with no_store=true"),
		e.transitSystem(),
		e.transitcaSystem(sysTransitcaMem, e.cfg.CABinary, "memory", "transitca, in-memory intermediate",
			"ca serve, intermediate key in memory, issuance log durable (fsync, group commit)"),
		e.transitcaSystem(sysTransitcaVlt, e.cfg.CABinary, "vault", "transitca, in-Vault intermediate",
			"ca serve, every leaf signed by Vault Transit, issuance log durable"),
	}
	if e.cfg.CandidateCA != "" {
		systems = append(systems,
			e.transitcaSystem(sysTransitcaMem+candidateSuffix, e.cfg.CandidateCA, "memory", "candidate build, in-memory intermediate",
				"the same from "+e.cfg.CandidateCA),
			e.transitcaSystem(sysTransitcaVlt+candidateSuffix, e.cfg.CandidateCA, "vault", "candidate build, in-Vault intermediate",
				"the same from "+e.cfg.CandidateCA))
	}
	return systems
}

// transitcaIDs are the transitca systems, current and candidate.
func (e *env) transitcaIDs() []string {
	ids := []string{sysTransitcaMem, sysTransitcaVlt}
	if e.cfg.CandidateCA != "" {
		ids = append(ids, sysTransitcaMem+candidateSuffix, sysTransitcaVlt+candidateSuffix)
	}
	return ids
}

// latencySystems are the systems the open-loop and storm scenarios run
// against: transitca and, for comparison, Istio's CA server.
func (e *env) latencySystems() []string {
	return append(e.transitcaIDs(), sysIstioECDSA)
}

func (e *env) cryptoSystem() *system {
	var cb *peers.CryptoBound
	return &system{
		id: sysCrypto, label: "crypto bound (in process, all cores)",
		note:    "parse CSR, check its signature, sign a P-256 leaf (x509.CreateCertificate); no network, no auth, no log; one goroutine per core",
		workers: runtime.GOMAXPROCS(0),
		start: func(context.Context) error {
			var err error
			cb, err = peers.NewCryptoBound()
			return err
		},
		check: func(context.Context) error {
			der, err := cb.Issue(e.ecdsa[0].CSR)
			if err != nil {
				return err
			}
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return err
			}
			return checkLeafID(c, e.ecdsa[0].ID)
		},
		procs: func() []loadgen.Proc { return []loadgen.Proc{{Name: "server", PID: os.Getpid()}} },
		newOp: func(_ int, items []item) (loadgen.Op, func(), error) {
			return func(_ context.Context, _, i int) error {
				_, err := cb.Issue(items[i%len(items)].CSR)
				return err
			}, func() {}, nil
		},
	}
}

func (e *env) istioSystem(id, mode, label, note string) *system {
	s := &system{id: id, label: label, note: note}
	var proc *peers.Process
	s.start = func(context.Context) error {
		p, t, pprof, err := e.startIstioCA(mode)
		if err != nil {
			return err
		}
		proc, s.target, s.pprof = p, &t, pprof
		return nil
	}
	s.procs = func() []loadgen.Proc { return []loadgen.Proc{{Name: "server", PID: proc.PID()}} }
	s.check = func(ctx context.Context) error { return checkGRPC(ctx, *s.target, e.ecdsa[0]) }
	s.newOp = func(workers int, items []item) (loadgen.Op, func(), error) { return grpcOp(*s.target, workers, items) }
	return s
}

func (e *env) transitcaSystem(id, binary, mode, label, note string) *system {
	s := &system{id: id, label: label, note: note}
	var d *peers.Transitca
	s.start = func(ctx context.Context) error {
		var err error
		d, err = e.startTransitca(ctx, id, binary, mode)
		if err != nil {
			return err
		}
		s.target = &loadgen.Target{Addr: d.Addr, RootCertFile: d.RootFile, SAN: "localhost"}
		s.pprof = d.MetricsAddr
		return nil
	}
	s.procs = func() []loadgen.Proc {
		return []loadgen.Proc{{Name: "server", PID: d.PID()}, e.vaultProc()}
	}
	s.check = func(ctx context.Context) error { return checkGRPC(ctx, *s.target, e.ecdsa[0]) }
	s.newOp = func(workers int, items []item) (loadgen.Op, func(), error) { return grpcOp(*s.target, workers, items) }
	return s
}

func (e *env) pkiSystem(id, role, label, note string) *system {
	return &system{
		id: id, label: label, note: note,
		procs: func() []loadgen.Proc { return []loadgen.Proc{{Name: "server", PID: e.vault.PID}} },
		check: func(ctx context.Context) error {
			c := peers.NewVaultHTTP(e.vault.Server.Addr, e.vault.Server.RootToken, 1)
			defer c.CloseIdle()
			certPEM, err := c.PKISign(ctx, mountPKI, role, e.ecdsa[0].CSR)
			if err != nil {
				return err
			}
			certs, err := parsePEMCerts(certPEM)
			if err != nil {
				return err
			}
			return checkLeafID(certs[0], e.ecdsa[0].ID)
		},
		newOp: func(workers int, items []item) (loadgen.Op, func(), error) {
			c := peers.NewVaultHTTP(e.vault.Server.Addr, e.vault.Server.RootToken, workers)
			return func(ctx context.Context, _, i int) error {
				_, err := c.PKISign(ctx, mountPKI, role, items[i%len(items)].CSR)
				return err
			}, c.CloseIdle, nil
		},
	}
}

func (e *env) transitSystem() *system {
	return &system{
		id: sysTransit, label: "Vault Transit sign, ecdsa-p256 prehashed (raw)",
		note:  "transit/sign/:key/sha2-256 over HTTP, the request transitca's in-Vault mode makes per leaf; no certificate is built",
		procs: func() []loadgen.Proc { return []loadgen.Proc{{Name: "server", PID: e.vault.PID}} },
		check: func(ctx context.Context) error {
			c := peers.NewVaultHTTP(e.vault.Server.Addr, e.vault.Server.RootToken, 1)
			defer c.CloseIdle()
			sig, err := c.TransitSign(ctx, mountTransitRaw, transitRawKey, 1, e.ecdsa[0].Digest)
			if err != nil {
				return err
			}
			pub, err := e.transitPublicKey(ctx)
			if err != nil {
				return err
			}
			_, raw, err := issuer.ParseTransitSignature(sig)
			if err != nil {
				return err
			}
			if !ecdsa.VerifyASN1(pub, e.ecdsa[0].Digest, raw) {
				return errors.New("transit signature does not verify")
			}
			return nil
		},
		newOp: func(workers int, items []item) (loadgen.Op, func(), error) {
			c := peers.NewVaultHTTP(e.vault.Server.Addr, e.vault.Server.RootToken, workers)
			return func(ctx context.Context, _, i int) error {
				_, err := c.TransitSign(ctx, mountTransitRaw, transitRawKey, 1, items[i%len(items)].Digest)
				return err
			}, c.CloseIdle, nil
		},
	}
}

func (e *env) transitPublicKey(ctx context.Context) (*ecdsa.PublicKey, error) {
	sec, err := e.vault.Client.Logical().ReadWithContext(ctx, mountTransitRaw+"/keys/"+transitRawKey)
	if err != nil {
		return nil, err
	}
	keys, _ := sec.Data["keys"].(map[string]any)
	v1, _ := keys["1"].(map[string]any)
	text, _ := v1["public_key"].(string)
	block, _ := pem.Decode([]byte(text))
	if block == nil {
		return nil, errors.New("transit key has no public key")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("transit key is %T", pub)
	}
	return ec, nil
}

// grpcOp opens one connection per simulated agent; request i of worker w
// goes over connection w with item i.
func grpcOp(t loadgen.Target, workers int, items []item) (loadgen.Op, func(), error) {
	conns := make([]*grpc.ClientConn, workers)
	clients := make([]pb.IstioCertificateServiceClient, workers)
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	for w := range conns {
		c, err := loadgen.Dial(t)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		conns[w], clients[w] = c, pb.NewIstioCertificateServiceClient(c)
	}
	return func(ctx context.Context, w, i int) error {
		it := items[i%len(items)]
		_, err := loadgen.CreateCertificate(ctx, clients[w], t.ClusterID, loadgen.Request{CSR: it.CSR, Token: it.Token, TTL: 24 * time.Hour})
		return err
	}, closeAll, nil
}

// stormOp is one restarted workload: a new connection (TCP, TLS handshake)
// and one request, with its own token and a fresh key's CSR. The
// connection stays open, as istio-agent keeps it.
func stormOp(t loadgen.Target, items []item) loadgen.StormOp {
	return func(ctx context.Context, i int) (io.Closer, error) {
		conn, err := loadgen.Dial(t)
		if err != nil {
			return nil, err
		}
		it := items[i]
		_, err = loadgen.CreateCertificate(ctx, pb.NewIstioCertificateServiceClient(conn), t.ClusterID,
			loadgen.Request{CSR: it.CSR, Token: it.Token, TTL: 24 * time.Hour})
		return conn, err
	}
}

// checkGRPC makes one request and checks the chain as istio-agent would
// use it: the leaf verifies up to the root bundle (the last element) and
// carries exactly the caller's SPIFFE ID.
func checkGRPC(ctx context.Context, t loadgen.Target, it item) error {
	conn, err := loadgen.Dial(t)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	chain, err := loadgen.CreateCertificate(ctx, pb.NewIstioCertificateServiceClient(conn), t.ClusterID,
		loadgen.Request{CSR: it.CSR, Token: it.Token, TTL: 24 * time.Hour})
	if err != nil {
		return err
	}
	var certs []*x509.Certificate
	for _, el := range chain[:len(chain)-1] {
		cs, err := parsePEMCerts(el)
		if err != nil {
			return err
		}
		certs = append(certs, cs...)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(chain[len(chain)-1])) {
		return errors.New("no root bundle in the answer")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("leaf does not verify against the root bundle: %w", err)
	}
	return checkLeafID(certs[0], it.ID)
}

func checkLeafID(c *x509.Certificate, id string) error {
	if len(c.URIs) != 1 || c.URIs[0].String() != id {
		return fmt.Errorf("leaf names %v, want %s", c.URIs, id)
	}
	if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok {
		return fmt.Errorf("leaf key is %T, want the CSR's ECDSA key", c.PublicKey)
	}
	return nil
}

func parsePEMCerts(text string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(strings.TrimSpace(text))
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in answer")
	}
	return out, nil
}
