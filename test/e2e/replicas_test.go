package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher/plugin"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	"istio.io/istio/security/pkg/pki/util"

	"github.com/transitca/transitca/internal/vaulttest"
)

// replicaSet is several "ca serve" processes that share one Vault, each
// with its own issuance log shard (--shard transitca-<i>), behind a front
// that spreads connections over the replicas that accept them, as a
// Kubernetes Service does over its ready endpoints.
type replicaSet struct {
	replicas []*caServer
	admin    []string // each replica's admin API address
	front    *frontProxy
	opDir    string // the operator's admin certificate
}

// startReplicas starts n replicas in intermediate mode (memory or vault)
// on one fresh Vault corner; they follow each other's rotation steps
// within a second.
func startReplicas(t *testing.T, n int, mode string) *replicaSet {
	t.Helper()
	return startReplicasWith(t, n, caOptions{Mode: mode})
}

// startReplicasWith is startReplicas with o's Mode, Auth and Extra (after
// the replicas' own admin, rotation and log settings).
func startReplicasWith(t *testing.T, n int, o caOptions) *replicaSet {
	t.Helper()
	env := vaulttest.New(t)
	minter, jwks := newMinter(t, t.TempDir())
	rs := &replicaSet{opDir: t.TempDir()}
	var backends []string
	for i := range n {
		adminAddr := freeAddr(t)
		extra := fmt.Sprintf(`admin:
  listen: %s
  identities: [%s]
rotation:
  state_poll_interval: 1s
log:
  checkpoint_every: 64
  checkpoint_interval: 1s
`, adminAddr, adminID)
		s := startCAWith(t, env, caOptions{Mode: o.Mode, Auth: o.Auth, Extra: extra + o.Extra, Minter: minter, JWKSFile: jwks,
			ServeArgs: []string{"--shard", fmt.Sprintf("transitca-%d", i)}})
		rs.replicas = append(rs.replicas, s)
		rs.admin = append(rs.admin, adminAddr)
		backends = append(backends, s.Addr)
	}
	for _, s := range rs.replicas[1:] {
		if readFile(t, s.RootFile) != readFile(t, rs.replicas[0].RootFile) {
			t.Fatal("replicas publish different root bundles")
		}
	}
	rs.front = startFront(t, backends)
	requestCert(t, rs.replicas[0], "security", "auditor", rs.opDir)
	return rs
}

// op is the operator running "ca admin" against replica i.
func (rs *replicaSet) op(i int) *operator {
	return &operator{s: rs.replicas[i], adminAddr: rs.admin[i], dir: rs.opDir}
}

// logArgs are the flags of "ca log" that read every replica's shard.
func (rs *replicaSet) logArgs() []string {
	var args []string
	for _, a := range rs.admin {
		args = append(args, "--addr", a)
	}
	return append(args, "--server-name", "localhost", "--cert", filepath.Join(rs.opDir, "cert-chain.pem"),
		"--key", filepath.Join(rs.opDir, "key.pem"), "--root-cert", rs.replicas[0].RootFile)
}

// frontProxy relays each TCP connection to the next replica, round robin,
// skipping those that refuse connections.
type frontProxy struct {
	ln       net.Listener
	backends []string
	next     atomic.Uint64
	conns    []atomic.Int64 // connections relayed per backend
	open     []atomic.Int64 // connections open now per backend
}

func startFront(t *testing.T, backends []string) *frontProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &frontProxy{ln: ln, backends: backends, conns: make([]atomic.Int64, len(backends)), open: make([]atomic.Int64, len(backends))}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.relay(c)
		}
	}()
	return p
}

func (p *frontProxy) Addr() string { return p.ln.Addr().String() }

func (p *frontProxy) relay(c net.Conn) {
	defer c.Close()
	start := int(p.next.Add(1))
	for i := range p.backends {
		n := (start + i) % len(p.backends)
		bc, err := net.DialTimeout("tcp", p.backends[n], time.Second)
		if err != nil {
			continue
		}
		defer bc.Close()
		p.conns[n].Add(1)
		p.open[n].Add(1)
		defer p.open[n].Add(-1)
		done := make(chan struct{}, 2)
		go func() { _, _ = io.Copy(bc, c); done <- struct{}{} }()
		go func() { _, _ = io.Copy(c, bc); done <- struct{}{} }()
		<-done
		return
	}
}

// retriedCodes are the codes istio-agent retries (CARetryOptions in
// istio.io/istio/pkg/security); a request that fails with one of them is
// asked again, by the agent's retries and then by Envoy's SDS.
var retriedCodes = []string{"Canceled", "DeadlineExceeded", "ResourceExhausted", "Aborted", "Internal", "Unavailable"}

var codeRE = regexp.MustCompile(`code = (\w+)`)

// replicaLoad is a closed loop of agents sending CSRs through the front
// with Istio's own client: even workers connect for every request, odd
// ones keep one client (and connection) as a running agent does.
type replicaLoad struct {
	mu        sync.Mutex
	received  map[string][]byte   // serial (hex) → leaf DER
	byID      map[string][]string // SPIFFE ID → serials
	retried   map[string]int      // failures with a code the agent retries
	fatal     []string            // failures it does not retry
	completed atomic.Int64
	wg        sync.WaitGroup
}

func startReplicaLoad(t *testing.T, ctx context.Context, rs *replicaSet, workers int) *replicaLoad {
	t.Helper()
	l := &replicaLoad{received: map[string][]byte{}, byID: map[string][]string{}, retried: map[string]int{}}
	s0 := rs.replicas[0]
	for w := range workers {
		ns, sa := "load", fmt.Sprintf("svc-%d", w)
		tok := s0.tokenFile(t, ns, sa)
		newClient := func() (*citadel.CitadelClient, error) {
			return citadel.NewCitadelClient(&security.Options{
				CAEndpoint: rs.front.Addr(), CAEndpointSAN: "localhost", ClusterID: "Kubernetes",
				CredFetcher: plugin.CreateTokenPlugin(tok),
			}, &citadel.TLSOptions{RootCert: s0.RootFile})
		}
		l.wg.Go(func() {
			var held *citadel.CitadelClient
			if w%2 == 1 {
				c, err := newClient()
				if err != nil {
					l.failed(err)
					return
				}
				defer c.Close()
				held = c
			}
			for ctx.Err() == nil {
				c := held
				if c == nil {
					var err error
					if c, err = newClient(); err != nil {
						l.failed(err)
						continue
					}
				}
				l.once(c, spiffeID(ns, sa))
				if held == nil {
					c.Close()
				}
			}
		})
	}
	return l
}

func (l *replicaLoad) once(c *citadel.CitadelClient, id string) {
	csr, _, err := util.GenCSR(util.CertOptions{Host: id, ECSigAlg: util.EcdsaSigAlg})
	if err != nil {
		l.failed(err)
		return
	}
	chain, err := c.CSRSign(csr, 3600)
	if err != nil {
		l.failed(err)
		return
	}
	a := &answer{}
	certs, err := parseChainElems(chain[:min(2, len(chain))])
	if err == nil && len(chain) == 3 && len(certs) == 2 {
		a.leaf, a.inter = certs[0], certs[1]
		if a.bundle, err = parseChainElems(chain[2:]); err == nil {
			err = a.verify(a.bundle)
		}
	} else if err == nil {
		err = fmt.Errorf("chain of %d elements", len(chain))
	}
	if err != nil {
		l.mu.Lock()
		l.fatal = append(l.fatal, "bad answer: "+err.Error())
		l.mu.Unlock()
		return
	}
	serial := a.leaf.SerialNumber.Text(16)
	l.mu.Lock()
	l.received[serial] = a.leaf.Raw
	l.byID[id] = append(l.byID[id], serial)
	l.mu.Unlock()
	l.completed.Add(1)
}

func (l *replicaLoad) failed(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := codeRE.FindStringSubmatch(err.Error()); m != nil && slices.Contains(retriedCodes, m[1]) {
		l.retried[m[1]]++
		return
	}
	l.fatal = append(l.fatal, err.Error())
}

// waitFor waits until n more requests completed than when called.
func (l *replicaLoad) waitFor(t *testing.T, n int64) {
	t.Helper()
	want := l.completed.Load() + n
	deadline := time.Now().Add(60 * time.Second)
	for l.completed.Load() < want {
		if time.Now().After(deadline) {
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("%d requests completed, want %d; retried failures %v; others: %.2000q", l.completed.Load(), want, l.retried, l.fatal)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readExport decodes "ca log export" or "ca log query --json" output.
func readExport(t *testing.T, out string) []exported {
	t.Helper()
	var es []exported
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if !strings.HasPrefix(sc.Text(), "{") {
			continue
		}
		var e exported
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		es = append(es, e)
	}
	return es
}

// TestReplicasUnderLoadWithAKill runs three replicas in Vault mode behind a
// front, Istio's client spread over them under load; one is SIGKILLed and
// restarted. No request fails with a code istio-agent does not retry;
// every certificate received is in exactly one shard; "ca log verify" over
// all shards passes; a query for one identity returns its certificates
// from every shard, in time order.
func TestReplicasUnderLoadWithAKill(t *testing.T) {
	const workers = 8
	rs := startReplicas(t, 3, "vault")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	l := startReplicaLoad(t, ctx, rs, workers)
	l.waitFor(t, 200)

	victim := rs.replicas[1]
	openAtKill := rs.front.open[1].Load()
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-victim.done
	killedAt := l.completed.Load()
	if openAtKill == 0 {
		t.Fatal("no client was connected to the replica when it was killed")
	}
	l.waitFor(t, 150) // served by the two others
	victim.start(t)
	l.waitFor(t, 200)
	conns := rs.front.conns[1].Load()
	l.waitFor(t, 100)
	if rs.front.conns[1].Load() == conns {
		t.Fatal("the restarted replica got no connection")
	}
	cancel()
	l.wg.Wait()
	took := time.Since(start)

	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("%d certificates received in %v (killed after %d, %d connections open to it), connections per replica %d/%d/%d; failures the agent retries: %v; others: %d",
		len(l.received), took.Round(time.Millisecond), killedAt, openAtKill, rs.front.conns[0].Load(), rs.front.conns[1].Load(), rs.front.conns[2].Load(), l.retried, len(l.fatal))
	if len(l.fatal) > 0 {
		t.Fatalf("%d requests failed in a way istio-agent does not retry, first: %.2000q", len(l.fatal), l.fatal[:min(5, len(l.fatal))])
	}
	if !strings.Contains(victim.Logs(), "transitca serving") || !strings.Contains(victim.Logs(), "log_origin=transitca/cluster.local/transitca-1") {
		t.Fatalf("the restarted replica did not serve its own shard:\n%s", tail(victim.Logs(), 3000))
	}

	// Every certificate received is in exactly one shard, as received.
	out, err := runCAStdout(t, victim, append([]string{"log", "export", "--kind", "issuance"}, rs.logArgs()...)...)
	if err != nil {
		t.Fatal(err)
	}
	inShards := map[string][]string{} // serial → shards
	perShard := map[string]int{}
	for _, e := range readExport(t, out) {
		if der, ok := l.received[e.Serial]; ok {
			if e.CertificateDER != base64.StdEncoding.EncodeToString(der) {
				t.Fatalf("the log's certificate %s in %s differs from the one received", e.Serial, e.Shard)
			}
			perShard[e.Shard]++
		}
		inShards[e.Serial] = append(inShards[e.Serial], e.Shard)
	}
	for serial := range l.received {
		if got := inShards[serial]; len(got) != 1 {
			t.Fatalf("certificate %s received by a client is in %d shards %v, want exactly one", serial, len(got), got)
		}
	}
	if len(perShard) != 3 {
		t.Fatalf("received certificates by shard: %v, want all three shards", perShard)
	}
	t.Logf("received certificates by shard: %v", perShard)

	// Every shard verifies, with the one verifier key.
	vkey := filepath.Join(rs.replicas[0].DataDir, "log-verifier.vkey")
	for _, s := range rs.replicas[1:] {
		if readFile(t, filepath.Join(s.DataDir, "log-verifier.vkey")) != readFile(t, vkey) {
			t.Fatal("replicas have different checkpoint verifier keys")
		}
	}
	out, err = runCAStdout(t, victim, append([]string{"log", "verify", "--verifier-key", vkey}, rs.logArgs()...)...)
	if err != nil || !strings.Contains(out, "all 3 logs verified") {
		t.Fatalf("ca log verify over the shards: %v\n%s", err, out)
	}

	// One identity's certificates come from every shard, in time order.
	id := spiffeID("load", "svc-0")
	out, err = runCAStdout(t, victim, append([]string{"log", "query", "--json", "--limit", "10000", "--spiffe-id", id}, rs.logArgs()...)...)
	if err != nil {
		t.Fatal(err)
	}
	es := readExport(t, out)
	shards, got := map[string]bool{}, map[string]bool{}
	var prev time.Time
	for _, e := range es {
		ts, err := time.Parse(time.RFC3339Nano, e.Time)
		if err != nil {
			t.Fatal(err)
		}
		if ts.Before(prev) {
			t.Fatalf("query for %s: entry at %s after one at %s", id, e.Time, prev)
		}
		prev = ts
		shards[e.Shard] = true
		got[e.Serial] = true
	}
	for _, serial := range l.byID[id] {
		if !got[serial] {
			t.Fatalf("query for %s lacks certificate %s", id, serial)
		}
	}
	if len(shards) != 3 {
		t.Fatalf("query for %s: entries from %d shards, want 3", id, len(shards))
	}
	t.Logf("query for %s: %d entries from %d shards, %d received", id, len(es), len(shards), len(l.byID[id]))
}
