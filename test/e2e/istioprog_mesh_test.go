package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/transitca/transitca/internal/kube"
	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/internal/vaulttest"
)

// The mesh the Istio program tests run: how many of each.
const (
	meshSidecars = 20
	// renewals every sidecar and the gateway must make; the VM one more.
	meshRenewals = 2
	vmRenewals   = 3
)

// istioMesh is one mesh of Istio's programs against "ca serve": transitca
// reviewing tokens with the API server and writing istio-ca-root-cert and
// istiod-tls under its shipped RBAC; istiod (pilot-discovery) serving XDS
// with istiod-tls under the RBAC of its chart; 20 sidecars of pods with
// pod-bound tokens, an ingress gateway in istio-system, and a VM that
// renews with its certificate alone, each a pilot-agent connected to istiod
// through its XDS proxy.
type istioMesh struct {
	cluster *istioCluster
	mode    string
	// env is the workloads' namespace.
	env  *kubetest.Env
	ca   *caServer
	op   *operator
	vols *volumeSync

	istiod   *istiodProc
	sidecars []*istioAgent
	gateway  *istioAgent
	vm       *istioAgent
	// vmToken provisions the VM: a token of its service account (bound to
	// no pod), used once by "ca request" as a VM's bootstrap would be.
	vmToken string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// began is when the agents were started.
	began time.Time
}

func (m *istioMesh) agents() []*istioAgent {
	return append(append([]*istioAgent(nil), m.sidecars...), m.gateway, m.vm)
}

// startMesh starts transitca in the given intermediate mode, then istiod
// once transitca has written what it mounts, then the agents at once.
func startMesh(t *testing.T, c *istioCluster, mode string) *istioMesh {
	t.Helper()
	m := &istioMesh{cluster: c, mode: mode, env: kubetest.NewOn(t, c.srv)}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.vols = newVolumeSync(t, c.client)
	m.startCA(t)

	// transitca's leader writes the Secret istiod mounts and the ConfigMap
	// in every namespace; istiod reads the Secret's files only if they are
	// there when it starts, as the chart mounts it optional.
	waitObjects := func() error {
		ctx := t.Context()
		if _, err := c.client.CoreV1().Secrets(istiodNamespace).Get(ctx, kube.IstiodSecretName, metav1.GetOptions{}); err != nil {
			return err
		}
		for _, ns := range []string{istiodNamespace, m.env.Namespace} {
			cm, err := c.client.CoreV1().ConfigMaps(ns).Get(ctx, kube.RootCertConfigMap, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if cm.Data[kube.RootCertKey] != readFile(t, m.ca.RootFile) {
				return fmt.Errorf("%s/%s is not this CA's root-cert.pem", ns, kube.RootCertConfigMap)
			}
		}
		return nil
	}
	if err := eventually(time.Minute, 100*time.Millisecond, waitObjects); err != nil {
		t.Fatalf("transitca did not write istiod-tls and istio-ca-root-cert: %v\n%s", err, tail(m.ca.Logs(), 4000))
	}
	m.startIstiod(t)

	// The workloads: pods (no kubelet runs them) with pod-bound tokens, as
	// the kubelet projects them.
	specs := make([]agentSpec, 0, meshSidecars+2)
	for i := range meshSidecars {
		specs = append(specs, agentSpec{pod: fmt.Sprintf("app-%02d-0", i), ns: m.env.Namespace, sa: fmt.Sprintf("app-%02d", i)})
	}
	gw := agentSpec{pod: "istio-ingressgateway-" + strings.ToLower(m.mode), ns: istiodNamespace, sa: "istio-ingressgateway", router: true}
	vm := agentSpec{pod: "vm-1", ns: m.env.Namespace, sa: "vm-app", vm: true}
	specs = append(specs, gw, vm)
	tokens := make([]string, len(specs))
	for i, s := range specs {
		env := m.env
		if s.ns == istiodNamespace {
			env = c.system
		}
		if _, err := c.client.CoreV1().ServiceAccounts(s.ns).Get(t.Context(), s.sa, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			env.ServiceAccount(t, s.sa)
		}
		if s.vm {
			m.vmToken = env.Token(t, s.sa, kubetest.TokenOptions{Audiences: []string{"istio-ca"}})
			continue
		}
		pod := env.Pod(t, s.pod, s.sa, "node-a")
		tokens[i] = env.Token(t, s.sa, kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: pod})
	}

	var mu sync.Mutex
	var wg sync.WaitGroup
	m.began = time.Now()
	for i, s := range specs {
		wg.Go(func() {
			a, err := m.newAgent(t, s, tokens[i])
			if err == nil {
				err = a.start()
			}
			if err != nil {
				t.Errorf("start %s: %v", s.pod, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case s.vm:
				m.vm = a
			case s.router:
				m.gateway = a
			default:
				m.sidecars = append(m.sidecars, a)
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() { m.stop(t) })
	if t.Failed() {
		t.FailNow()
	}
	for _, a := range m.agents() {
		m.wg.Go(func() { a.watch.run(m.ctx) })
	}
	// Every agent gets its first certificate, and then Envoy's stand-in
	// connects to its XDS proxy.
	if err := eventually(time.Minute, 200*time.Millisecond, func() error {
		for _, a := range m.agents() {
			if _, ok := a.watch.current(); !ok {
				return fmt.Errorf("%s has no certificate", a.name)
			}
			if _, err := os.Stat(filepath.Join(a.dir, xdsSocket)); err != nil {
				return fmt.Errorf("%s: %w", a.name, err)
			}
		}
		return nil
	}); err != nil {
		m.dumpLogs(t)
		t.Fatalf("agents did not start: %v", err)
	}
	for _, a := range m.agents() {
		m.wg.Go(func() { a.xds.run(m.ctx) })
	}
	t.Logf("%s mode: transitca, istiod and %d agents up %v after the agents started", mode, len(m.agents()), time.Since(m.began).Round(time.Millisecond))
	return m
}

// startCA initializes and starts "ca serve" for the mesh: tokens reviewed
// by the API server (auth.tokenreview), client certificates for VMs, the
// Kubernetes writers as the transitca service account under deploy/rbac,
// and an admin identity. The service tier's max_ttl is a minute; the
// agents ask for less (SECRET_TTL). The VM's service account has a tier of
// its own, whose max_ttl allows its bootstrap certificate (vmProvisionTTL).
func (m *istioMesh) startCA(t *testing.T) {
	t.Helper()
	env := vaulttest.New(t)
	dir, addr, adminAddr := t.TempDir(), freeAddr(t), freeAddr(t)
	cfg := fmt.Sprintf(`data_dir: %s
trust_domain: cluster.local
vault:
  transit_mount: %s
  kv_mount: %s
  timeout: 3s
  check_interval: 1s
ca:
  intermediate_mode: %s
server:
  listen: %s
  metrics_listen: %s
  tls:
    dns_names: [localhost]
    ip_addresses: [127.0.0.1]
admin:
  listen: %s
  identities: [%s]
auth:
  tokenreview:
    enabled: true
kubernetes:
  kubeconfig: %s
tiers:
  service: {max_ttl: 1m, default_ttl: 1m}
  vm: {max_ttl: 30m, default_ttl: 30m}
  privileged: {max_ttl: 24h, default_ttl: 24h}
default_tier: service
policy:
  - tier: privileged
    namespaces: [istio-system]
  - tier: vm
    service_accounts: [vm-app]
`, filepath.Join(dir, "data"), env.Transit, env.KV, m.mode, addr, freeAddr(t), adminAddr, adminID,
		m.cluster.system.ServiceAccountKubeconfig(t, "transitca"))
	s := &caServer{Addr: addr, DataDir: filepath.Join(dir, "data"), Config: filepath.Join(dir, "transitca.yaml"), Env: env}
	s.RootFile = filepath.Join(s.DataDir, "root-cert.pem")
	if err := os.WriteFile(s.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := s.command("init", "--config", s.Config).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	s.start(t)
	m.ca = s

	// The admin: a service account whose token transitca reviews.
	admin := &kubetest.Env{Server: m.cluster.srv, Client: m.cluster.client, Namespace: "security"}
	if _, err := m.cluster.client.CoreV1().Namespaces().Get(t.Context(), "security", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		admin.CreateNamespace(t, "security")
		admin.ServiceAccount(t, "auditor")
	}
	tok := filepath.Join(t.TempDir(), "auditor.jwt")
	if err := os.WriteFile(tok, []byte(admin.Token(t, "auditor", kubetest.TokenOptions{Audiences: []string{"istio-ca"}})), 0o600); err != nil {
		t.Fatal(err)
	}
	m.op = &operator{s: s, adminAddr: adminAddr, dir: t.TempDir(), tokenFile: tok}
}

// admin runs "ca admin args..." with a fresh admin certificate.
func (m *istioMesh) admin(t *testing.T, args ...string) string {
	t.Helper()
	m.op.refresh(t)
	out, err := m.op.admin(t, args...)
	if err != nil {
		t.Fatalf("ca admin %s: %v\n%s", strings.Join(args, " "), err, tail(m.ca.Logs(), 4000))
	}
	return out
}

// startIstiod runs pilot-discovery as the chart's Deployment does, with its
// pod's mounts: its token, istiod-tls at ./var/run/secrets/istiod/tls, the
// istio-ca-root-cert ConfigMap at ./var/run/secrets/istiod/ca, the mesh
// ConfigMap at ./etc/istio/config; every listener on loopback.
func (m *istioMesh) startIstiod(t *testing.T) {
	t.Helper()
	c := m.cluster
	dir := podDir(t, "istiod-"+m.mode)
	tok := c.system.Token(t, "istiod", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Expiration: 12 * time.Hour})
	if err := writeFileIn(dir, tokenPath, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "var/run/secrets/istio-dns"), 0o755); err != nil {
		t.Fatal(err)
	}
	m.vols.secret(istiodNamespace, kube.IstiodSecretName, filepath.Join(dir, istiodTLSDir))
	m.vols.configMap(istiodNamespace, kube.RootCertConfigMap, filepath.Join(dir, istiodCADir))
	m.vols.configMap(istiodNamespace, "istio", filepath.Join(dir, meshConfigDir))
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := c.srv.WriteKubeconfig(kubeconfig, c.system.Token(t, "istiod", kubetest.TokenOptions{Expiration: 12 * time.Hour}), istiodNamespace); err != nil {
		t.Fatal(err)
	}
	if err := eventually(30*time.Second, 50*time.Millisecond, func() error {
		for _, f := range []string{istiodTLSDir + "/tls.crt", istiodTLSDir + "/tls.key", istiodTLSDir + "/ca.crt", istiodCADir + "/root-cert.pem", meshConfigDir + "/mesh"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("istiod's volumes: %v", err)
	}

	i := &istiodProc{secureAddr: freeAddr(t), grpcAddr: freeAddr(t), httpAddr: freeAddr(t), httpsAddr: freeAddr(t), monitoringAddr: freeAddr(t)}
	var env []string
	for k, v := range c.istiodEnv {
		switch k {
		case "KUBECONFIG": // the chart's remote-cluster Secret, absent here: --kubeconfig instead
			continue
		}
		env = append(env, k+"="+v)
	}
	env = append(env, "POD_NAME=istiod-"+m.mode, "POD_NAMESPACE="+istiodNamespace, "SERVICE_ACCOUNT=istiod")
	args := append(append([]string(nil), c.istiodArgs...),
		"--kubeconfig", kubeconfig,
		"--grpcAddr", i.grpcAddr, "--secureGRPCAddr", i.secureAddr, "--httpAddr", i.httpAddr,
		"--httpsAddr", i.httpsAddr, "--monitoringAddr", i.monitoringAddr,
		"--ctrlz_address", "127.0.0.1", "--ctrlz_port", itoa(freePort(t)),
		// Which identity istiod authenticated each XDS stream as is logged
		// at debug level.
		"--log_output_level", "default:info,ads:debug")
	i.program = newProgram("istiod", dir, istioBinary(t, "pilot-discovery"), env, args...)
	began := time.Now()
	if err := i.start(); err != nil {
		t.Fatal(err)
	}
	m.istiod = i
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("istiod's log (last 8000 bytes):\n%s", tail(i.Logs(), 8000))
		}
		t.Logf("istiod: %s", i.stop(20*time.Second))
	})
	if err := eventually(2*time.Minute, 200*time.Millisecond, func() error {
		if !i.running() {
			return fmt.Errorf("istiod exited:\n%s", tail(i.Logs(), 4000))
		}
		return i.ready(t.Context())
	}); err != nil {
		t.Fatalf("istiod not ready: %v\n%s", err, tail(i.Logs(), 8000))
	}
	t.Logf("istiod ready in %v", time.Since(began).Round(time.Millisecond))
}

// newAgent prepares a pilot-agent's pod directory and process.
func (m *istioMesh) newAgent(t *testing.T, s agentSpec, token string) (*istioAgent, error) {
	dir := podDir(t, s.pod)
	a := &istioAgent{agentSpec: s, statusPort: freePort(t)}
	a.watch = &agentWatch{a: a, counters: map[int]agentCounters{}, provisioned: map[string]bool{}}
	a.xds = &xdsStandIn{dir: dir}
	if s.vm {
		a.certDir = filepath.Join(dir, vmCertDir)
		if err := m.provisionVM(t, a); err != nil {
			return nil, err
		}
	} else {
		a.certDir = filepath.Join(dir, sidecarCertDir)
		if err := os.MkdirAll(a.certDir, 0o755); err != nil {
			return nil, err
		}
		if err := writeFileIn(dir, tokenPath, []byte(token), 0o600); err != nil {
			return nil, err
		}
		// The injector mounts istio-ca-root-cert at /var/run/secrets/istio;
		// the kubelet starts the pod once the ConfigMap is there.
		m.vols.configMap(s.ns, kube.RootCertConfigMap, filepath.Join(dir, rootCertDir))
		if err := eventually(30*time.Second, 50*time.Millisecond, func() error {
			_, err := os.Stat(filepath.Join(dir, rootCertDir, kube.RootCertKey))
			return err
		}); err != nil {
			return nil, err
		}
	}
	mode := "sidecar"
	if s.router {
		mode = "router"
	}
	_, istiodPort, _ := strings.Cut(m.istiod.secureAddr, ":")
	a.program = newProgram(s.pod, dir, istioBinary(t, "pilot-agent"),
		agentEnv(s, m.ca.Addr, "localhost:"+istiodPort, a.statusPort), "proxy", mode)
	return a, nil
}

// provisionVM writes a VM's bootstrap certificate into its certificate
// directory (key.pem, cert-chain.pem, root-cert.pem): one "ca request" with
// the VM's service account token, as a VM's provisioning does once. It may
// run outside the test's goroutine.
func (m *istioMesh) provisionVM(t *testing.T, a *istioAgent) error {
	if err := os.MkdirAll(a.certDir, 0o755); err != nil {
		return err
	}
	tok := filepath.Join(t.TempDir(), "vm.jwt")
	if err := os.WriteFile(tok, []byte(m.vmToken), 0o600); err != nil {
		return err
	}
	out, err := m.ca.command("request", "--addr", m.ca.Addr, "--server-name", "localhost", "--token-file", tok,
		"--root-cert", m.ca.RootFile, "--out", a.certDir, "--ttl", vmProvisionTTL.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ca request for the VM: %w\n%s", err, out)
	}
	chain, err := readPEMFile(filepath.Join(a.certDir, "cert-chain.pem"))
	if err != nil {
		return err
	}
	a.watch.markProvisioned(chain[0].SerialNumber.String())
	return nil
}

// stop stops the agents, all at once as a node drain would, then the rest.
func (m *istioMesh) stop(t *testing.T) {
	var ps []*program
	for _, a := range m.agents() {
		if a != nil {
			ps = append(ps, a.program)
		}
	}
	if t.Failed() {
		m.dumpLogs(t)
	}
	ended := stopAll(20*time.Second, ps...)
	m.cancel()
	m.wg.Wait()
	for name, how := range ended {
		if strings.HasPrefix(how, "killed") || strings.HasPrefix(how, "exited before") {
			t.Errorf("%s: %s", name, how)
		}
	}
}

// dumpLogs prints the end of every agent's log and what was scraped.
func (m *istioMesh) dumpLogs(t *testing.T) {
	for _, a := range m.agents() {
		if a == nil {
			continue
		}
		t.Logf("%s (%s): counters %+v; log (last 3000 bytes):\n%s", a.name, a.dir, a.watch.totals(), tail(a.Logs(), 3000))
	}
	t.Logf("transitca log (last 6000 bytes):\n%s", tail(m.ca.Logs(), 6000))
}

// waitRenewals waits until each agent has written n+1 certificates (its
// first and n renewals).
func waitRenewals(t *testing.T, agents []*istioAgent, n int, limit time.Duration) {
	t.Helper()
	if err := eventually(limit, 250*time.Millisecond, func() error {
		for _, a := range agents {
			if got := len(a.watch.written()); got < n+1 {
				return fmt.Errorf("%s wrote %d certificates, want %d", a.name, got, n+1)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// checkChain checks that a certificate the agent wrote is for its identity
// and verifies, for both client and server use, against the root-cert.pem
// written with it.
func checkChain(a *istioAgent, c issuedCert) error {
	if len(c.leaf.URIs) != 1 || c.leaf.URIs[0].String() != a.identity() {
		return fmt.Errorf("%s: certificate for %v, want %s", a.name, c.leaf.URIs, a.identity())
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range c.bundle {
		roots.AddCert(r)
	}
	for _, i := range c.chain[1:] {
		inter.AddCert(i)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := c.leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{u}, CurrentTime: c.seen}); err != nil {
			return fmt.Errorf("%s: serial %x does not verify against the root-cert.pem written with it: %w", a.name, c.leaf.SerialNumber, err)
		}
	}
	return nil
}

// logEntry is a line of "ca log query --json".
type logEntry struct {
	Kind       string `json:"kind"`
	Serial     string `json:"serial"`
	SPIFFEID   string `json:"spiffe_id"`
	Tier       string `json:"tier"`
	GrantedTTL string `json:"granted_ttl"`
	AuthMethod string `json:"auth_method"`
	Subject    string `json:"caller_subject"`
	PodName    string `json:"pod_name"`
	Code       string `json:"code"`
	Reason     string `json:"reason"`
}

// logQuery asks the daemon's log, through the admin API.
func (m *istioMesh) logQuery(t *testing.T, args ...string) []logEntry {
	t.Helper()
	m.op.refresh(t)
	out, err := runCAStdout(t, m.ca, append(append([]string{"log", "query", "--json", "--limit", "1000"}, args...),
		"--addr", m.op.adminAddr, "--server-name", "localhost", "--cert", filepath.Join(m.op.dir, "cert-chain.pem"),
		"--key", filepath.Join(m.op.dir, "key.pem"), "--root-cert", m.ca.RootFile)...)
	if err != nil {
		t.Fatalf("ca log query %v: %v", args, err)
	}
	var entries []logEntry
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var e logEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		entries = append(entries, e)
	}
	return entries
}
