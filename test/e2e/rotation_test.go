package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher/plugin"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	"istio.io/istio/security/pkg/pki/util"

	"github.com/transitca/transitca/internal/vaulttest"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// adminID is the admin identity the rotation tests configure.
const adminID = "spiffe://cluster.local/ns/security/sa/auditor"

// operator runs "ca admin" against a daemon the way an operator does: with
// a client certificate for the admin identity obtained from the CA itself
// ("ca request"), fetched again by refresh.
type operator struct {
	s         *caServer
	adminAddr string
	dir       string
	// tokenFile, when set, is the admin's token for "ca request" (one the
	// daemon reviews with the Kubernetes API); else one from s.Minter.
	tokenFile string
}

// startRotationCA starts a CA with an admin listener for adminID.
func startRotationCA(t *testing.T, o caOptions) (*caServer, *operator) {
	t.Helper()
	adminAddr := freeAddr(t)
	o.Extra = fmt.Sprintf("admin:\n  listen: %s\n  identities: [%s]\n", adminAddr, adminID) + o.Extra
	s := startCAWith(t, vaulttest.New(t), o)
	op := &operator{s: s, adminAddr: adminAddr, dir: t.TempDir()}
	op.refresh(t)
	return s, op
}

// refresh gets a new admin certificate, trusting the root file as it is
// now.
func (op *operator) refresh(t *testing.T) {
	t.Helper()
	if op.tokenFile != "" {
		requestCertWithToken(t, op.s, op.tokenFile, op.dir)
		return
	}
	requestCert(t, op.s, "security", "auditor", op.dir)
}

// requestCert runs "ca request" for ns/sa and leaves key.pem and
// cert-chain.pem in dir.
func requestCert(t *testing.T, s *caServer, ns, sa, dir string) {
	t.Helper()
	requestCertWithToken(t, s, s.tokenFile(t, ns, sa), dir)
}

// requestCertWithToken runs "ca request" with the token in tokenFile and
// leaves key.pem, cert-chain.pem and root-cert.pem in dir.
func requestCertWithToken(t *testing.T, s *caServer, tokenFile, dir string) {
	t.Helper()
	out, err := runCA(t, s, "request", "--addr", s.Addr, "--server-name", "localhost", "--token-file", tokenFile,
		"--root-cert", s.RootFile, "--out", dir)
	if err != nil {
		t.Fatalf("ca request with %s: %v\n%s", tokenFile, err, out)
	}
}

// admin runs "ca admin args..." with the operator's certificate and
// returns its standard output.
func (op *operator) admin(t *testing.T, args ...string) (string, error) {
	t.Helper()
	args = append(append([]string{"admin"}, args...), "--addr", op.adminAddr, "--server-name", "localhost",
		"--cert", filepath.Join(op.dir, "cert-chain.pem"), "--key", filepath.Join(op.dir, "key.pem"), "--root-cert", op.s.RootFile)
	return runCAStdout(t, op.s, args...)
}

// adminJSON runs "ca admin args... -o json" and decodes the answer into m.
func (op *operator) adminJSON(t *testing.T, m proto.Message, args ...string) {
	t.Helper()
	out, err := op.admin(t, append(args, "-o", "json")...)
	if err != nil {
		t.Fatalf("ca admin %s: %v\ndaemon log:\n%s", strings.Join(args, " "), err, tail(op.s.Logs(), 4000))
	}
	if err := protojson.Unmarshal([]byte(out), m); err != nil {
		t.Fatalf("ca admin %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (op *operator) status(t *testing.T) *adminv1.StatusResponse {
	t.Helper()
	st := &adminv1.StatusResponse{}
	op.adminJSON(t, st, "status")
	return st
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// fingerprint is the hex SHA-256 of a certificate, as the admin API
// prints it.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func parseRootPEM(t *testing.T, text string) *x509.Certificate {
	t.Helper()
	certs := parsePEMChain(t, []string{text})
	if len(certs) != 1 {
		t.Fatalf("%d certificates in a root's PEM", len(certs))
	}
	return certs[0]
}

// answer is one CSRSign answer: the chain and the bundle that came with
// it, and when the request started and ended.
type answer struct {
	worker     int
	start, end time.Time
	leaf       *x509.Certificate
	inter      *x509.Certificate
	bundle     []*x509.Certificate
	bundlePEM  string
}

// verify checks the chain as a relying party holding bundle would.
func (a *answer) verify(bundle []*x509.Certificate) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range bundle {
		roots.AddCert(r)
	}
	inter.AddCert(a.inter)
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := a.leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			return err
		}
	}
	return nil
}

// agentClient is istio-agent's CA client as istioClient builds it, for use
// from load goroutines: NewCitadelClient reads the root file when it
// connects, as the agent does.
func agentClient(s *caServer, tokenFile string) (*citadel.CitadelClient, error) {
	return citadel.NewCitadelClient(&security.Options{
		CAEndpoint:    s.Addr,
		CAEndpointSAN: "localhost",
		ClusterID:     "Kubernetes",
		CredFetcher:   plugin.CreateTokenPlugin(tokenFile),
	}, &citadel.TLSOptions{RootCert: s.RootFile})
}

// dialCA makes one TLS connection to the CA trusting the root file as it
// is at this moment, as an agent that starts now would. Istio's client
// retries a failed handshake (CARetryInterceptor) and so would hide a
// moment when the root file and the serving certificate disagree; this
// does not.
func dialCA(s *caServer) error {
	b, err := os.ReadFile(s.RootFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return fmt.Errorf("no certificate in %s", s.RootFile)
	}
	conn, err := tls.Dial("tcp", s.Addr, &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return err
	}
	return conn.Close()
}

// load is a closed loop of agents: each worker, with its own service
// account, makes a new TLS connection trusting the root file as it is now,
// sends a CSR with Istio's client, checks the chain against the bundle
// that came with it, and starts again.
type load struct {
	s        *caServer
	mu       sync.Mutex
	answers  []*answer
	failures []string
	done     []atomic.Int64 // completed requests per worker
	failed   atomic.Int64
	wg       sync.WaitGroup
}

func startLoad(t *testing.T, ctx context.Context, s *caServer, workers, maxPerWorker int) *load {
	t.Helper()
	l := &load{s: s, done: make([]atomic.Int64, workers)}
	for w := range workers {
		ns, sa := "load", fmt.Sprintf("svc-%d", w)
		tok := s.tokenFile(t, ns, sa)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			// Odd workers keep one client, and its connection, for the
			// whole run, as a running agent does; even ones connect for
			// every request, as agents that start during the rotation do.
			var held *citadel.CitadelClient
			if w%2 == 1 {
				c, err := agentClient(s, tok)
				if err != nil {
					l.fail(fmt.Sprintf("worker %d: %v", w, err))
					return
				}
				defer c.Close()
				held = c
			}
			for range maxPerWorker {
				if ctx.Err() != nil {
					return
				}
				a, err := l.once(w, ns, sa, tok, held)
				if err != nil {
					l.fail(fmt.Sprintf("worker %d (%s/%s) at %s: %v", w, ns, sa, time.Now().Format("15:04:05.000"), err))
					continue
				}
				l.mu.Lock()
				l.answers = append(l.answers, a)
				l.mu.Unlock()
				l.done[w].Add(1)
			}
		}()
	}
	return l
}

func (l *load) fail(msg string) {
	l.failed.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures = append(l.failures, msg)
}

func (l *load) once(w int, ns, sa, tok string, held *citadel.CitadelClient) (*answer, error) {
	a := &answer{worker: w, start: time.Now()}
	if err := dialCA(l.s); err != nil {
		return nil, fmt.Errorf("connect trusting the root file: %w", err)
	}
	csr, _, err := util.GenCSR(util.CertOptions{Host: spiffeID(ns, sa), ECSigAlg: util.EcdsaSigAlg})
	if err != nil {
		return nil, err
	}
	c := held
	if c == nil {
		if c, err = agentClient(l.s, tok); err != nil {
			return nil, err
		}
		defer c.Close()
	}
	chain, err := c.CSRSign(csr, 3600)
	if err != nil {
		return nil, fmt.Errorf("CSRSign: %w", err)
	}
	a.end = time.Now()
	if len(chain) != 3 {
		return nil, fmt.Errorf("chain of %d elements, want leaf, intermediate, bundle", len(chain))
	}
	certs, err := parseChainElems(chain[:2])
	if err != nil {
		return nil, err
	}
	if a.bundle, err = parseChainElems(chain[2:]); err != nil {
		return nil, err
	}
	a.leaf, a.inter, a.bundlePEM = certs[0], certs[1], chain[2]
	if err := a.verify(a.bundle); err != nil {
		return nil, fmt.Errorf("chain does not verify against the bundle that came with it: %w", err)
	}
	return a, nil
}

func parseChainElems(elems []string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, e := range elems {
		rest := []byte(e)
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
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no certificate in %q", elems)
	}
	return out, nil
}

// settle waits until every worker has completed n more requests than when
// it was called, so that each step runs under load and the load runs
// after it.
func (l *load) settle(t *testing.T, n int64) {
	t.Helper()
	base := make([]int64, len(l.done))
	for i := range l.done {
		base[i] = l.done[i].Load()
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := range l.done {
		for l.done[i].Load() < base[i]+n {
			if time.Now().After(deadline) {
				t.Fatalf("worker %d completed %d requests in 30s, want %d; %d failures so far:\n%s",
					i, l.done[i].Load()-base[i], n, l.failed.Load(), strings.Join(l.firstFailures(10), "\n"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (l *load) firstFailures(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failures[:min(n, len(l.failures))]
}

func (l *load) between(from, to time.Time) []*answer {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*answer
	for _, a := range l.answers {
		if a.start.After(from) && a.end.Before(to) {
			out = append(out, a)
		}
	}
	return out
}

// TestRotationUnderLoad runs a drill and a whole root rotation (prepare,
// forced activate, forced retire) through "ca admin" while Istio's client
// keeps a closed-loop load from many service accounts. No request fails;
// every chain verifies against the bundle that came with it; a chain
// received before prepare verifies against the bundle received after
// activate; new connections that trust the root file as it is when they
// connect always verify the serving certificate, also after retire.
func TestRotationUnderLoad(t *testing.T) {
	const (
		workers      = 8
		maxPerWorker = 2000
		perStep      = 10 // requests each worker completes around every step
	)
	for _, mode := range []string{"memory", "vault"} {
		t.Run(mode, func(t *testing.T) {
			s, op := startRotationCA(t, caOptions{Mode: mode})
			before := op.status(t)
			if len(before.GetRoots()) != 1 {
				t.Fatalf("a new CA has %d roots", len(before.GetRoots()))
			}
			oldRoot := parseRootPEM(t, before.GetRoots()[0].GetPem())

			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			begin := time.Now()
			l := startLoad(t, ctx, s, workers, maxPerWorker)
			defer func() { cancel(); l.wg.Wait() }()
			l.settle(t, perStep)

			// A drill rotates the intermediate under load.
			drill := &adminv1.DrillReport{}
			op.adminJSON(t, drill, "drill")
			if !drill.GetPassed() {
				t.Fatalf("drill failed: %v", drill)
			}
			l.settle(t, perStep)

			prepareStart := time.Now()
			prep := &adminv1.PrepareRootResponse{}
			op.adminJSON(t, prep, "root", "prepare", "--reason", "e2e rotation under load")
			newRoot := parseRootPEM(t, prep.GetPrepared().GetPem())
			prepareDone := time.Now()
			l.settle(t, perStep)

			activateStart := time.Now()
			act := &adminv1.ActivateRootResponse{}
			op.adminJSON(t, act, "root", "activate", "--force", "--reason", "e2e: no time for the overlap")
			activateDone := time.Now()
			if act.GetActive().GetKeyVersion() != prep.GetPrepared().GetKeyVersion() {
				t.Fatalf("activated root v%d, prepared v%d", act.GetActive().GetKeyVersion(), prep.GetPrepared().GetKeyVersion())
			}
			l.settle(t, perStep)

			retireStart := time.Now()
			ret := &adminv1.RetireRootResponse{}
			op.adminJSON(t, ret, "root", "retire", "--force", "--reason", "e2e: old leaves are in the test only")
			retireDone := time.Now()
			if ret.GetRetired().GetKeyVersion() != before.GetRoots()[0].GetKeyVersion() || ret.GetLiveCertificates() == 0 {
				t.Fatalf("retire: %v", ret)
			}
			l.settle(t, perStep)
			cancel()
			l.wg.Wait()
			elapsed := time.Since(begin)

			// No request failed.
			total := len(l.between(time.Time{}, time.Now().Add(time.Hour)))
			if n := l.failed.Load(); n > 0 {
				t.Fatalf("%d of %d requests failed; first ones:\n%s\ndaemon log:\n%s", n, int64(total)+n,
					strings.Join(l.firstFailures(10), "\n"), tail(s.Logs(), 6000))
			}

			// Before prepare: the old root alone.
			beforePrepare := l.between(time.Time{}, prepareStart)
			for _, a := range beforePrepare {
				if len(a.bundle) != 1 || !a.bundle[0].Equal(oldRoot) {
					t.Fatalf("before prepare, worker %d got a bundle of %d roots", a.worker, len(a.bundle))
				}
			}
			// Between prepare and activate: both roots, issuance under the old one.
			for _, a := range l.between(prepareDone, activateStart) {
				if len(a.bundle) != 2 || a.inter.CheckSignatureFrom(oldRoot) != nil {
					t.Fatalf("between prepare and activate: bundle of %d roots, intermediate under the old root: %v",
						len(a.bundle), a.inter.CheckSignatureFrom(oldRoot))
				}
			}
			// After activate: issuance under the new root, and every chain
			// received before prepare verifies against every bundle received
			// between activate and retire.
			afterActivate := l.between(activateDone, retireStart)
			bundles := map[string][]*x509.Certificate{}
			for _, a := range afterActivate {
				if a.inter.CheckSignatureFrom(newRoot) != nil {
					t.Fatalf("after activate, worker %d got an intermediate not under the new root", a.worker)
				}
				bundles[a.bundlePEM] = a.bundle
			}
			if len(beforePrepare) == 0 || len(afterActivate) == 0 || len(bundles) == 0 {
				t.Fatalf("%d answers before prepare, %d after activate", len(beforePrepare), len(afterActivate))
			}
			for _, b := range bundles {
				for _, a := range beforePrepare {
					if err := a.verify(b); err != nil {
						t.Fatalf("a chain received before prepare (worker %d at %s) does not verify against a bundle received after activate: %v",
							a.worker, a.end.Format("15:04:05.000"), err)
					}
				}
			}
			// After retire: the new root alone, in the answers and in the
			// root file, and old chains are no longer trusted by it.
			afterRetire := l.between(retireDone, time.Now())
			for _, a := range afterRetire {
				if len(a.bundle) != 1 || !a.bundle[0].Equal(newRoot) {
					t.Fatalf("after retire, worker %d got a bundle of %d roots", a.worker, len(a.bundle))
				}
			}
			if len(afterRetire) == 0 {
				t.Fatal("no answer after retire")
			}
			file := parsePEMChain(t, []string{readFile(t, s.RootFile)})
			if len(file) != 1 || !file[0].Equal(newRoot) {
				t.Fatalf("root-cert.pem after retire holds %d roots, or not the new one", len(file))
			}
			if err := beforePrepare[0].verify(file); err == nil {
				t.Fatal("a chain under the retired root still verifies against the root file")
			}

			// The admin certificate chained to the retired root: refused,
			// until the operator gets a new one.
			if out, err := op.admin(t, "status"); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
				t.Fatalf("admin certificate under the retired root: %v\n%s", err, out)
			}
			op.refresh(t)
			st := op.status(t)
			if len(st.GetRoots()) != 1 || st.GetRoots()[0].GetFingerprint() != fingerprint(newRoot) ||
				st.GetRoots()[0].GetRole() != adminv1.RootRole_ROOT_ROLE_ACTIVE || st.GetIntermediate().GetRootKeyVersion() != act.GetActive().GetKeyVersion() {
				t.Fatalf("status after the rotation: %v", st)
			}
			t.Logf("%s mode: %d requests completed, %d failed, in %v (%.0f/s) with %d workers; %d before prepare, %d between activate and retire (%d distinct bundles), %d after retire",
				mode, total, l.failed.Load(), elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), workers,
				len(beforePrepare), len(afterActivate), len(bundles), len(afterRetire))
		})
	}
}

// retireRefusal is what RetireRoot says while certificates under the old
// root live.
var retireRefusal = regexp.MustCompile(`(\d+) unexpired certificates chain only to root version (\d+); the last expires at (\S+);`)

// TestRotationRetireWaitsForLiveCertificates rotates without any force,
// with short lifetimes: activate is refused until rotation.min_overlap
// has passed; retire is refused while a certificate issued under the old
// root is unexpired, names when the last one expires, and succeeds
// without force after that.
func TestRotationRetireWaitsForLiveCertificates(t *testing.T) {
	// 20s leaves live 10s after issuance (issuer.Validity back-dates by
	// half the TTL); the serving certificate of 1m lives 30s.
	const extra = `tiers:
  short: {max_ttl: 20s, default_ttl: 20s}
default_tier: short
rotation:
  min_overlap: 5s
`
	for _, mode := range []string{"memory", "vault"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			s, op := startRotationCA(t, caOptions{Mode: mode, Extra: extra, ServingCertTTL: time.Minute})
			old := requestLeaf(t, s, "shop", "web")
			if life := old.leaf.NotAfter.Sub(old.leaf.NotBefore); life != 20*time.Second {
				t.Fatalf("leaf lifetime %v, want the 20s tier", life)
			}

			op.refresh(t)
			prep := &adminv1.PrepareRootResponse{}
			op.adminJSON(t, prep, "root", "prepare", "--reason", "e2e")
			allowed := prep.GetActivateAllowedAt().AsTime()
			op.refresh(t)
			if out, err := op.admin(t, "root", "activate"); err == nil || !strings.Contains(err.Error(), "FailedPrecondition") || !strings.Contains(err.Error(), "left") {
				t.Fatalf("activate before the overlap: %v\n%s", err, out)
			}
			time.Sleep(time.Until(allowed) + 500*time.Millisecond)
			op.refresh(t)
			act := &adminv1.ActivateRootResponse{}
			op.adminJSON(t, act, "root", "activate")
			newRoot := parseRootPEM(t, prep.GetPrepared().GetPem())
			fresh := requestLeaf(t, s, "shop", "web")
			if fresh.inter.CheckSignatureFrom(newRoot) != nil {
				t.Fatal("after activate, the intermediate is not under the new root")
			}

			op.refresh(t)
			_, err := op.admin(t, "root", "retire")
			m := retireRefusal.FindStringSubmatch(fmt.Sprint(err))
			if err == nil || !strings.Contains(err.Error(), "FailedPrecondition") || m == nil {
				t.Fatalf("retire while certificates under the old root live: %v", err)
			}
			last, perr := time.Parse(time.RFC3339, m[3])
			if perr != nil {
				t.Fatal(perr)
			}
			if m[2] != "1" || last.Before(old.leaf.NotAfter.Truncate(time.Second)) {
				t.Fatalf("refusal names root %s and last expiry %s; the leaf issued before prepare expires at %s", m[2], last, old.leaf.NotAfter)
			}
			t.Logf("retire refused: %s unexpired certificates under root 1, the last until %s", m[1], last.Format(time.RFC3339))
			if wait := time.Until(last); wait > 2*time.Minute {
				t.Fatalf("the last certificate under the old root expires in %v: longer than the test's lifetimes", wait)
			}

			// Once the last one has expired, retire needs no force.
			time.Sleep(time.Until(last) + 1500*time.Millisecond)
			op.refresh(t)
			ret := &adminv1.RetireRootResponse{}
			op.adminJSON(t, ret, "root", "retire")
			if ret.GetRetired().GetKeyVersion() != 1 || ret.GetLiveCertificates() != 0 {
				t.Fatalf("retire after expiry: %v", ret)
			}
			file := parsePEMChain(t, []string{readFile(t, s.RootFile)})
			if len(file) != 1 || !file[0].Equal(newRoot) {
				t.Fatalf("root-cert.pem after retire holds %d roots, or not the new one", len(file))
			}
			after := requestLeaf(t, s, "shop", "web")
			if len(after.bundle) != 1 || after.verify(file) != nil {
				t.Fatalf("after retire: bundle of %d roots; verifies against the root file: %v", len(after.bundle), after.verify(file))
			}
			// The log records a retire that was not forced.
			out, err := runCA(t, s, "log", "query", "--kind", "admin", "--json", "--limit", "1000", "--addr", op.adminAddr, "--server-name", "localhost",
				"--cert", filepath.Join(op.dir, "cert-chain.pem"), "--key", filepath.Join(op.dir, "key.pem"), "--root-cert", s.RootFile)
			if err != nil || !regexp.MustCompile(`root-retired.*version=1 [^"]*live_certificates=0 compromised=false`).MatchString(out) {
				t.Fatalf("log has no unforced root-retired entry: %v\n%s", err, out)
			}
		})
	}
}

// requestLeaf gets one certificate for ns/sa with Istio's client.
func requestLeaf(t *testing.T, s *caServer, ns, sa string) *answer {
	t.Helper()
	csr, _, err := util.GenCSR(util.CertOptions{Host: spiffeID(ns, sa), ECSigAlg: util.EcdsaSigAlg})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := istioClient(t, s, s.tokenFile(t, ns, sa)).CSRSign(csr, 3600)
	if err != nil {
		t.Fatalf("CSRSign for %s/%s: %v", ns, sa, err)
	}
	a := &answer{end: time.Now(), bundlePEM: chain[len(chain)-1]}
	certs := parsePEMChain(t, chain[:len(chain)-1])
	a.leaf, a.inter = certs[0], certs[1]
	a.bundle = parsePEMChain(t, chain[len(chain)-1:])
	if err := a.verify(a.bundle); err != nil {
		t.Fatalf("chain does not verify against its bundle: %v", err)
	}
	return a
}

// TestRotationSurvivesSIGKILLBetweenPrepareAndActivate kills the daemon
// after prepare: the restarted daemon still has the prepared root (same
// version, same fingerprint, in the bundle and the root file), and
// activate continues the rotation.
func TestRotationSurvivesSIGKILLBetweenPrepareAndActivate(t *testing.T) {
	for _, mode := range []string{"memory", "vault"} {
		t.Run(mode, func(t *testing.T) {
			s, op := startRotationCA(t, caOptions{Mode: mode})
			before := requestLeaf(t, s, "shop", "web")
			prep := &adminv1.PrepareRootResponse{}
			op.adminJSON(t, prep, "root", "prepare", "--reason", "e2e crash")
			prepared := prep.GetPrepared()

			if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-s.done
			s.start(t)

			st := op.status(t)
			var found *adminv1.Root
			for _, r := range st.GetRoots() {
				if r.GetKeyVersion() == prepared.GetKeyVersion() {
					found = r
				}
			}
			if found == nil || found.GetRole() != adminv1.RootRole_ROOT_ROLE_PREPARED || found.GetFingerprint() != prepared.GetFingerprint() ||
				len(st.GetRoots()) != 2 || st.GetPreparedAt() == nil || st.GetIntermediate().GetRootKeyVersion() != 1 {
				t.Fatalf("status after SIGKILL: prepared root v%d %s; got %v", prepared.GetKeyVersion(), prepared.GetFingerprint(), st)
			}
			var inFile []string
			for _, c := range parsePEMChain(t, []string{readFile(t, s.RootFile)}) {
				inFile = append(inFile, fingerprint(c))
			}
			if len(inFile) != 2 || !strings.Contains(strings.Join(inFile, ","), prepared.GetFingerprint()) {
				t.Fatalf("root-cert.pem after restart holds %v, want the prepared %s too", inFile, prepared.GetFingerprint())
			}
			// Prepare again is a no-op that names the same root: the
			// restart did not start a second rotation.
			again := &adminv1.PrepareRootResponse{}
			op.adminJSON(t, again, "root", "prepare", "--reason", "e2e crash, again")
			if again.GetPrepared().GetKeyVersion() != prepared.GetKeyVersion() || again.GetPrepared().GetFingerprint() != prepared.GetFingerprint() {
				t.Fatalf("prepare after restart made root v%d %s, want the prepared v%d %s", again.GetPrepared().GetKeyVersion(),
					again.GetPrepared().GetFingerprint(), prepared.GetKeyVersion(), prepared.GetFingerprint())
			}
			mid := requestLeaf(t, s, "shop", "web")
			if len(mid.bundle) != 2 || mid.inter.CheckSignatureFrom(before.bundle[0]) != nil {
				t.Fatalf("after restart: bundle of %d roots, issuance under the old root: %v", len(mid.bundle), mid.inter.CheckSignatureFrom(before.bundle[0]))
			}

			act := &adminv1.ActivateRootResponse{}
			op.adminJSON(t, act, "root", "activate", "--force", "--reason", "e2e crash")
			if act.GetActive().GetKeyVersion() != prepared.GetKeyVersion() || act.GetActive().GetFingerprint() != prepared.GetFingerprint() {
				t.Fatalf("activated %v, prepared %v", act.GetActive(), prepared)
			}
			after := requestLeaf(t, s, "shop", "web")
			newRoot := parseRootPEM(t, prepared.GetPem())
			if after.inter.CheckSignatureFrom(newRoot) != nil {
				t.Fatal("after activate, issuance is not under the prepared root")
			}
			if err := before.verify(after.bundle); err != nil {
				t.Fatalf("a chain from before the crash does not verify against the bundle after activate: %v", err)
			}
		})
	}
}

// foreignAdminCert is a client certificate carrying the admin SPIFFE ID,
// from a throwaway CA the daemon never heard of.
func foreignAdminCert(t *testing.T) tls.Certificate {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id, _ := url.Parse(adminID)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		URIs: []*url.URL{id}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leafDER, rootDER}, PrivateKey: key}
}

// adminCalls calls every method of the admin API once.
func adminCalls(c adminv1.AdminServiceClient) map[string]func(ctx context.Context) error {
	stream := func(recv func() error, err error) error {
		if err != nil {
			return err
		}
		return recv()
	}
	return map[string]func(ctx context.Context) error{
		"QueryLog": func(ctx context.Context) error { _, err := c.QueryLog(ctx, &adminv1.QueryLogRequest{}); return err },
		"GetEntry": func(ctx context.Context) error { _, err := c.GetEntry(ctx, &adminv1.GetEntryRequest{}); return err },
		"GetCheckpoint": func(ctx context.Context) error {
			_, err := c.GetCheckpoint(ctx, &adminv1.GetCheckpointRequest{})
			return err
		},
		"GetInclusionProof": func(ctx context.Context) error {
			_, err := c.GetInclusionProof(ctx, &adminv1.GetInclusionProofRequest{})
			return err
		},
		"GetConsistencyProof": func(ctx context.Context) error {
			_, err := c.GetConsistencyProof(ctx, &adminv1.GetConsistencyProofRequest{})
			return err
		},
		"VerifyLog": func(ctx context.Context) error { _, err := c.VerifyLog(ctx, &adminv1.VerifyLogRequest{}); return err },
		"Backup": func(ctx context.Context) error {
			s, err := c.Backup(ctx, &adminv1.BackupRequest{})
			return stream(func() error { _, err := s.Recv(); return err }, err)
		},
		"Status": func(ctx context.Context) error { _, err := c.Status(ctx, &adminv1.StatusRequest{}); return err },
		"RotateIntermediate": func(ctx context.Context) error {
			_, err := c.RotateIntermediate(ctx, &adminv1.RotateIntermediateRequest{})
			return err
		},
		"PrepareRoot": func(ctx context.Context) error {
			_, err := c.PrepareRoot(ctx, &adminv1.PrepareRootRequest{})
			return err
		},
		"ActivateRoot": func(ctx context.Context) error {
			_, err := c.ActivateRoot(ctx, &adminv1.ActivateRootRequest{Force: true, Reason: "intruder"})
			return err
		},
		"RetireRoot": func(ctx context.Context) error {
			_, err := c.RetireRoot(ctx, &adminv1.RetireRootRequest{Force: true, Reason: "intruder", Compromised: true})
			return err
		},
		"RevokeIntermediate": func(ctx context.Context) error {
			s, err := c.RevokeIntermediate(ctx, &adminv1.RevokeIntermediateRequest{Reason: "intruder"})
			return stream(func() error { _, err := s.Recv(); return err }, err)
		},
		"Drill": func(ctx context.Context) error { _, err := c.Drill(ctx, &adminv1.DrillRequest{}); return err },
	}
}

// TestRotationAdminRefusesNonAdmins calls every admin method with a
// workload certificate the CA issued and with a certificate for the admin
// SPIFFE ID from a foreign root: all are refused, nothing changes, and
// every refusal is in the log, as a denial (the burst of individually
// recorded denials is raised so that each is an entry of its own).
func TestRotationAdminRefusesNonAdmins(t *testing.T) {
	s, op := startRotationCA(t, caOptions{Mode: "vault", Extra: "limits:\n  denial_burst: 100\n"})
	before := op.status(t)

	wl := t.TempDir()
	requestCert(t, s, "shop", "web", wl)
	workload, err := tls.LoadX509KeyPair(filepath.Join(wl, "cert-chain.pem"), filepath.Join(wl, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	callers := []struct {
		name  string
		cert  tls.Certificate
		code  codes.Code
		msg   string
		actor string
	}{
		{"workload certificate", workload, codes.PermissionDenied, "is not an admin identity", spiffeID("shop", "web") + " cert serial=" + workload.Leaf.SerialNumber.Text(16) + " issuer="},
		{"foreign root", foreignAdminCert(t), codes.Unauthenticated, "", "unauthenticated cert serial=2 issuer="},
	}
	methods := adminCalls(nil) // the method names only
	for _, c := range callers {
		t.Run(c.name, func(t *testing.T) {
			conn, err := grpc.NewClient(op.adminAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
				RootCAs: rootPool(t, readFile(t, s.RootFile)), ServerName: "localhost", Certificates: []tls.Certificate{c.cert},
			})))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			for name, call := range adminCalls(adminv1.NewAdminServiceClient(conn)) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := call(ctx)
				cancel()
				if status.Code(err) != c.code || !strings.Contains(status.Convert(err).Message(), c.msg) {
					t.Errorf("%s: got %v, want %s", name, err, c.code)
				}
			}
		})
	}
	// The CLI says the same to the workload.
	out, err := runCAStdout(t, s, "admin", "root", "prepare", "--addr", op.adminAddr, "--server-name", "localhost",
		"--cert", filepath.Join(wl, "cert-chain.pem"), "--key", filepath.Join(wl, "key.pem"), "--root-cert", s.RootFile)
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("ca admin root prepare with a workload certificate: %v\n%s", err, out)
	}

	// Nothing changed.
	after := op.status(t)
	if len(after.GetRoots()) != 1 || after.GetRoots()[0].GetFingerprint() != before.GetRoots()[0].GetFingerprint() ||
		after.GetIntermediate().GetFingerprint() != before.GetIntermediate().GetFingerprint() ||
		after.GetPreparedAt() != nil || len(after.GetCompromisedIntermediates()) != 0 || after.GetLastDrill() != nil {
		t.Fatalf("refused calls changed the CA:\nbefore %v\nafter  %v", before, after)
	}

	// Every refusal is in the log, read from the file once the daemon stopped.
	s.stop()
	entries := exportLog(t, s, filepath.Join(s.DataDir, "issuance.db"))
	for _, c := range callers {
		seen := map[string]int{}
		for _, e := range entries {
			who := e.SPIFFEID // the caller the denial names, if it was authenticated
			if who == "" {
				who = "unauthenticated"
			}
			if e.Kind != "denial" || !strings.HasPrefix(c.actor, who+" ") || e.Code != c.code.String() ||
				!strings.Contains(e.Detail, "class=admin_") {
				continue
			}
			if m := regexp.MustCompile(`^admin call (\w+) refused: `).FindStringSubmatch(e.Reason); m != nil {
				seen[m[1]]++
			}
		}
		for name := range methods {
			want := 1
			if c.name == "workload certificate" && name == "PrepareRoot" {
				want = 2 // and the CLI's
			}
			if seen[name] != want {
				t.Errorf("%s: the log holds %d refused %s calls, want %d", c.name, seen[name], name, want)
			}
		}
		if len(seen) != len(methods) {
			t.Errorf("%s: refused methods in the log %v, want the %d admin methods", c.name, seen, len(methods))
		}
	}
	for _, e := range entries {
		switch e.Action {
		case "root-prepared", "root-activated", "root-retired", "intermediate-rotated", "intermediate-revoked", "drill":
			t.Errorf("a refused caller got a %s entry: %+v", e.Action, e)
		}
	}
}
