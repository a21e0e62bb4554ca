package e2e

import (
	"bufio"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/kube"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// TestIstioPrograms runs Istio's own programs against "ca serve" and the
// real kube-apiserver, in both intermediate modes: pilot-agent as 20
// sidecars, an ingress gateway and a VM, and pilot-discovery as istiod
// with its CA off, each a process in its own pod directory. It checks what
// an operator would: the certificates the agents write and renew, their
// metrics, istiod's serving certificate and XDS, through a root rotation
// and an intermediate revocation with the programs alive. One API server
// serves both meshes, one after the other (both use istio-system).
func TestIstioPrograms(t *testing.T) {
	cluster := startIstioCluster(t)
	for _, mode := range []string{"memory", "vault"} {
		t.Run(mode, func(t *testing.T) {
			began := time.Now()
			m := startMesh(t, cluster, mode)
			for _, st := range []struct {
				name string
				run  func(*testing.T)
			}{
				{"platform none", m.testPlatformNone},
				{"sidecars", m.testSidecars},
				{"gateway", m.testGateway},
				{"vm", m.testVM},
				{"istiod", m.testIstiod},
				{"root rotation", m.testRootRotation},
				{"intermediate revocation", m.testRevocation},
			} {
				stBegan := time.Now()
				t.Run(st.name, st.run)
				t.Logf("%s: %s took %v", mode, st.name, time.Since(stBegan).Round(time.Millisecond))
			}
			t.Logf("%s mode took %v", mode, time.Since(began).Round(time.Millisecond))
		})
	}
}

// testPlatformNone: every agent runs with CLOUD_PLATFORM=none, so it never
// asks a cloud metadata server (an address off this machine) what platform
// it is on: the variable is in each process's environment, no log line
// reports a platform detected (or a detection that timed out), and the node
// metadata the agent writes for XDS carries no platform metadata.
func (m *istioMesh) testPlatformNone(t *testing.T) {
	for _, a := range m.agents() {
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", a.pid()))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(strings.Split(string(environ), "\x00"), "CLOUD_PLATFORM=none") {
			t.Errorf("%s runs without CLOUD_PLATFORM=none", a.name)
		}
		for _, s := range []string{platformLogTag, "platform detection"} {
			if l := logLines(a.Logs(), s); len(l) > 0 {
				t.Errorf("%s's log shows a platform: %q", a.name, l)
			}
		}
		node, err := a.xds.node()
		if err != nil {
			t.Fatal(err)
		}
		if p := node.GetMetadata().GetFields()["PLATFORM_METADATA"]; p != nil {
			t.Errorf("%s's node metadata has platform metadata: %v", a.name, p)
		}
	}
}

// testSidecars: the 20 sidecars, each with a pod-bound token reviewed by
// the API server, get certificates for their identities and renew them at
// least twice, each chain verifying against the root-cert.pem written with
// it; none of their CSRs failed, and the log records each issuance as
// authenticated by TokenReview with the pod the token is bound to.
func (m *istioMesh) testSidecars(t *testing.T) {
	waitRenewals(t, m.sidecars, meshRenewals, 2*time.Minute)
	m.checkAgents(t, m.sidecars)
	for _, a := range m.sidecars {
		entries := m.logQuery(t, "--spiffe-id", a.identity(), "--kind", "issuance")
		if len(entries) < meshRenewals+1 {
			t.Errorf("%s: %d issuances in the log", a.name, len(entries))
		}
		for _, e := range entries {
			if e.AuthMethod != string(ca.AuthTokenReview) || e.PodName != a.pod || e.GrantedTTL != agentSecretTTL.String() {
				t.Errorf("%s: log entry %+v, want TokenReview for pod %s, %v granted", a.name, e, a.pod, agentSecretTTL)
			}
		}
	}
}

// checkAgents checks what every certificate an agent wrote says, and that
// its CSR counters show no failure.
func (m *istioMesh) checkAgents(t *testing.T, agents []*istioAgent) {
	t.Helper()
	for _, a := range agents {
		a.watch.scrapeMetrics(t.Context()) // the counters as of now
		certs := a.watch.issued()
		for _, c := range certs {
			if err := checkChain(a, c); err != nil {
				t.Error(err)
			}
			want := agentSecretTTL
			if c.provisioned {
				want = vmProvisionTTL
			}
			if life := c.leaf.NotAfter.Sub(c.leaf.NotBefore); life != want {
				t.Errorf("%s: certificate lifetime %v, asked %v", a.name, life, want)
			}
		}
		for i := 1; i < len(certs); i++ {
			// Renewed before the previous one expired.
			if !certs[i].seen.Before(certs[i-1].leaf.NotAfter) {
				t.Errorf("%s: certificate %d seen at %s, the previous one expired at %s", a.name, i, certs[i].seen.Format(time.RFC3339Nano), certs[i-1].leaf.NotAfter.Format(time.RFC3339))
			}
		}
		c, written := a.watch.totals(), len(a.watch.written())
		if c.csr < float64(written) || c.csrFailed != 0 {
			t.Errorf("%s: istio_agent_num_outgoing_requests{csr} %v, istio_agent_num_failed_outgoing_requests{csr} %v, %d certificates written",
				a.name, c.csr, c.csrFailed, written)
		}
		if l := logLines(a.Logs(), "failed to sign"); len(l) > 0 {
			t.Errorf("%s logs failed CSRs: %q", a.name, l)
		}
	}
}

// testGateway: the ingress gateway (pilot-agent proxy router, in
// istio-system) gets and renews certificates for its identity, from the
// privileged tier.
func (m *istioMesh) testGateway(t *testing.T) {
	gw := []*istioAgent{m.gateway}
	waitRenewals(t, gw, meshRenewals, 2*time.Minute)
	m.checkAgents(t, gw)
	if !strings.Contains(m.gateway.Logs(), "type=router") {
		t.Errorf("the gateway agent does not run as a router:\n%s", tail(m.gateway.Logs(), 2000))
	}
	for _, e := range m.logQuery(t, "--spiffe-id", m.gateway.identity(), "--kind", "issuance") {
		if e.Tier != "privileged" || e.AuthMethod != string(ca.AuthTokenReview) {
			t.Errorf("gateway log entry %+v, want the privileged tier by TokenReview", e)
		}
	}
}

// testVM: the VM's agent, started with a provisioned certificate
// (PROV_CERT) and no token, renews on its certificate alone (the
// provisioned one, then its own at least three times) with zero failed
// CSRs: each renewal is authenticated by the client certificate it holds,
// and the log has no denial for it. No certificate it got ends later than
// the one it was provisioned with: a renewal never extends.
func (m *istioMesh) testVM(t *testing.T) {
	vm := []*istioAgent{m.vm}
	waitRenewals(t, vm, vmRenewals, 2*time.Minute)
	m.checkAgents(t, vm)
	if _, err := os.Stat(filepath.Join(m.vm.dir, tokenPath)); err == nil {
		t.Fatal("the VM has a token")
	}
	certs := m.vm.watch.issued()
	if !certs[0].provisioned {
		t.Fatalf("the VM's first certificate, serial %x, is not the one it was provisioned with", certs[0].leaf.SerialNumber)
	}
	for _, c := range certs[1:] {
		if c.leaf.NotAfter.After(certs[0].leaf.NotAfter) {
			t.Errorf("the VM's certificate %x ends at %s, after the one it was provisioned with (%s)",
				c.leaf.SerialNumber, c.leaf.NotAfter.Format(time.RFC3339), certs[0].leaf.NotAfter.Format(time.RFC3339))
		}
	}
	issued := m.logQuery(t, "--spiffe-id", m.vm.identity(), "--kind", "issuance")
	var byCert int
	for _, e := range issued {
		if e.AuthMethod == string(ca.AuthClientCert) {
			byCert++
		}
	}
	if byCert < vmRenewals+1 {
		t.Errorf("%d of the VM's %d issuances authenticated by its certificate, want at least %d", byCert, len(issued), vmRenewals+1)
	}
	if denials := m.logQuery(t, "--spiffe-id", m.vm.identity(), "--kind", "denial"); len(denials) > 0 {
		t.Errorf("the VM's requests were refused %d times: %+v", len(denials), denials)
	}
}

// testIstiod: istiod serves XDS with the certificate transitca wrote into
// istiod-tls; every agent reaches it through its XDS proxy (sidecars and
// the gateway with their tokens, the VM with its certificate) and gets
// answers; when transitca re-issues istiod-tls (here after the Secret was
// deleted), istiod serves the new certificate without a restart and the
// XDS streams stay up.
func (m *istioMesh) testIstiod(t *testing.T) {
	secretLeaf := func() (*x509.Certificate, []*x509.Certificate, error) {
		sec, err := m.cluster.client.CoreV1().Secrets(istiodNamespace).Get(t.Context(), kube.IstiodSecretName, metav1.GetOptions{})
		if err != nil {
			return nil, nil, err
		}
		chain, err := parseChainElems([]string{string(sec.Data[kube.TLSCertKey])})
		if err != nil {
			return nil, nil, err
		}
		bundle, err := parseChainElems([]string{string(sec.Data[kube.CACertKey])})
		return chain[0], bundle, err
	}
	servesSecret := func() (*x509.Certificate, error) {
		want, bundle, err := secretLeaf()
		if err != nil {
			return nil, err
		}
		chain, err := m.istiod.servingChain()
		if err != nil {
			return nil, err
		}
		if !chain[0].Equal(want) {
			return nil, fmt.Errorf("istiod serves serial %x, istiod-tls holds %x", chain[0].SerialNumber, want.SerialNumber)
		}
		roots, inter := x509.NewCertPool(), x509.NewCertPool()
		for _, r := range bundle {
			roots.AddCert(r)
		}
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "istiod.istio-system.svc"}); err != nil {
			return nil, fmt.Errorf("istiod's certificate does not verify for istiod.istio-system.svc against ca.crt: %w", err)
		}
		return chain[0], nil
	}
	first, err := servesSecret()
	if err != nil {
		t.Fatal(err)
	}

	// Every agent's XDS stream reaches istiod and gets answers.
	if err := eventually(time.Minute, 250*time.Millisecond, func() error {
		for _, a := range m.agents() {
			if _, n := a.xds.report(); n == 0 {
				return fmt.Errorf("%s: no XDS answer through the agent", a.name)
			}
		}
		n, err := m.istiod.xdsConnections(t.Context())
		if err != nil {
			return err
		}
		if n < float64(len(m.agents())) {
			return fmt.Errorf("istiod counts %v XDS connections, want %d", n, len(m.agents()))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// istiod authenticated each stream as the agent's identity: the
	// sidecars and the gateway by their token (they present no
	// certificate), the VM by its certificate (it has no token).
	for _, a := range m.agents() {
		if l := logLines(m.istiod.Logs(), "Authenticated XDS: "); !slices.ContainsFunc(l, func(l string) bool {
			return strings.Contains(l, "with identity ["+a.identity()+"]")
		}) {
			t.Errorf("istiod did not authenticate an XDS stream as %s", a.identity())
		}
		if l := logLines(m.istiod.Logs(), "new connection for node:"+a.pod+"."+a.ns+"-"); len(l) == 0 {
			t.Errorf("istiod did not log %s's XDS connection", a.name)
		}
	}
	for _, s := range []string{"Unauthenticated XDS", "Unauthorized XDS"} {
		if l := logLines(m.istiod.Logs(), s); len(l) > 0 {
			t.Errorf("istiod logs %q", l)
		}
	}
	for _, a := range m.agents() {
		if c := a.watch.totals(); c.istiodFailures != 0 || c.istiodErrs != 0 {
			t.Errorf("%s: istiod connection failures %v, terminations by error %v", a.name, c.istiodFailures, c.istiodErrs)
		}
	}

	// Re-issued: the Secret is gone, transitca writes a new certificate,
	// istiod (the same process) serves it.
	pid := m.istiod.pid()
	sessionsBefore := map[string]int{}
	for _, a := range m.agents() {
		s, _ := a.xds.report()
		sessionsBefore[a.name] = len(s)
	}
	if err := m.cluster.client.CoreV1().Secrets(istiodNamespace).Delete(t.Context(), kube.IstiodSecretName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	var second *x509.Certificate
	if err := eventually(time.Minute, 200*time.Millisecond, func() error {
		var err error
		second, err = servesSecret()
		if err == nil && second.Equal(first) {
			return fmt.Errorf("istiod still serves serial %x", first.SerialNumber)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("istiod served the re-issued certificate %v after the Secret was deleted", time.Since(deleted).Round(time.Millisecond))
	if m.istiod.pid() != pid || !m.istiod.running() {
		t.Fatal("istiod restarted")
	}
	if n, err := m.vols.written("secret", istiodNamespace, kube.IstiodSecretName); n < 2 || err != nil {
		t.Errorf("istiod-tls was written into istiod's directory %d times (first error: %v), want the first and the re-issued one", n, err)
	}
	for _, a := range m.agents() {
		if s, _ := a.xds.report(); len(s) != sessionsBefore[a.name] {
			t.Errorf("%s's XDS stream broke when istiod's certificate changed: %+v", a.name, s[len(s)-1])
		}
	}
}

// checkXDSRecovered fails the test when an agent's XDS stream that ended
// with an error after since was followed by one that got no answer.
// Streams that ended after until, when given, are not judged.
func checkXDSRecovered(t *testing.T, agents []*istioAgent, since time.Time, until ...time.Time) {
	t.Helper()
	for _, a := range agents {
		sessions, _ := a.xds.report()
		for i, s := range sessions {
			if s.end.Before(since) || s.err == nil || len(until) > 0 && s.end.After(until[0]) {
				continue
			}
			if i+1 < len(sessions) && sessions[i+1].responses == 0 {
				t.Errorf("%s: XDS stream ended (%v) and the next one got no answer (%v)", a.name, s.err, sessions[i+1].err)
			}
		}
	}
}

// testRootRotation: "ca admin root prepare", "activate --force" and
// "retire --force" while the agents renew and stay connected to istiod.
// After prepare, every agent's bundle holds both roots; after activate,
// every agent's chain is under the new root; after retire, every agent's
// bundle is the new root alone and its chain verifies against it, and
// istiod's ca.crt and certificate follow. No agent's certificate ever
// expired (istio_agent_cert_expiry_seconds stayed above 0), no CSR failed
// unless the next attempt succeeded, and every XDS stream that broke was
// re-established at the next attempt.
func (m *istioMesh) testRootRotation(t *testing.T) {
	began := time.Now()
	agents := m.agents()
	st := &adminv1.StatusResponse{}
	m.op.refresh(t)
	m.op.adminJSON(t, st, "status")
	oldRoot := parseRootPEM(t, st.GetRoots()[0].GetPem())

	prep := &adminv1.PrepareRootResponse{}
	m.op.refresh(t)
	m.op.adminJSON(t, prep, "root", "prepare", "--reason", "e2e: rotation with Istio's programs")
	newRoot := parseRootPEM(t, prep.GetPrepared().GetPem())
	both := certsOf([]*x509.Certificate{oldRoot, newRoot})
	m.waitAgents(t, "bundle of both roots after prepare", func(a *istioAgent, c issuedCert) error {
		if !slices.Equal(certsOf(c.bundle), both) {
			return fmt.Errorf("bundle of %d roots", len(c.bundle))
		}
		return nil
	})

	m.istiodFollows(t, "prepare", both, oldRoot)

	act := &adminv1.ActivateRootResponse{}
	m.op.refresh(t)
	m.op.adminJSON(t, act, "root", "activate", "--force", "--reason", "e2e: the agents renew every few seconds")
	m.istiodFollows(t, "activate", both, newRoot)
	m.waitAgents(t, "chain under the new root after activate", func(a *istioAgent, c issuedCert) error {
		if err := c.chain[1].CheckSignatureFrom(newRoot); err != nil {
			return err
		}
		return checkChain(a, c)
	})

	ret := &adminv1.RetireRootResponse{}
	m.op.refresh(t)
	m.op.adminJSON(t, ret, "root", "retire", "--force", "--reason", "e2e: every agent renewed under the new root")
	// The VM's connection was made with its bootstrap certificate, under
	// the retired root: its next renewal is refused, it connects again with
	// its current certificate, and a renewal on that one ends when it does.
	// The operator provisions the VM again, with a token, and restarts its
	// agent; its log counts from then.
	vmStop := time.Now()
	if how := m.vm.stop(20 * time.Second); strings.HasPrefix(how, "killed") {
		t.Errorf("%s: %s", m.vm.name, how)
	}
	if err := m.provisionVM(t, m.vm); err != nil {
		t.Fatal(err)
	}
	vmLogFrom := len(m.vm.Logs())
	if err := m.vm.start(); err != nil {
		t.Fatal(err)
	}
	only := certsOf([]*x509.Certificate{newRoot})
	m.waitAgents(t, "bundle of the new root alone after retire", func(a *istioAgent, c issuedCert) error {
		if !slices.Equal(certsOf(c.bundle), only) {
			return fmt.Errorf("bundle of %d roots", len(c.bundle))
		}
		return checkChain(a, c)
	})
	m.istiodFollows(t, "retire", only, newRoot)
	t.Logf("rotation done %v after prepare", time.Since(began).Round(time.Millisecond))

	for _, a := range agents {
		a.watch.mu.Lock()
		minExpiry, expiries := a.watch.minExpiry, a.watch.expiries
		a.watch.mu.Unlock()
		if expiries == 0 || !(minExpiry > 0) {
			t.Errorf("%s: istio_agent_cert_expiry_seconds fell to %v (%d samples)", a.name, minExpiry, expiries)
		}
		certs := a.watch.issued()
		for i := 1; i < len(certs); i++ {
			if !certs[i].seen.Before(certs[i-1].leaf.NotAfter) {
				t.Errorf("%s: went without a valid certificate from %s to %s", a.name, certs[i-1].leaf.NotAfter.Format(time.RFC3339), certs[i].seen.Format(time.RFC3339Nano))
			}
		}
		logs := a.Logs()
		if a == m.vm {
			logs = logs[vmLogFrom:]
		}
		checkCSRRecovered(t, a.name, logs)
	}
	// The VM's XDS streams from its stop on are not judged: istiod
	// refuses its new certificate, under the root prepared after istiod
	// started ("unknown certificate authority"); see README, "Tested with
	// Istio's own programs".
	var others []*istioAgent
	for _, a := range agents {
		if a != m.vm {
			others = append(others, a)
		}
	}
	checkXDSRecovered(t, others, began)
	checkXDSRecovered(t, []*istioAgent{m.vm}, began, vmStop)
	for _, a := range agents {
		if sessions, _ := a.xds.report(); len(sessions) > 0 {
			t.Logf("%s: %d XDS streams ended during the test; last: %v", a.name, len(sessions), sessions[len(sessions)-1].err)
		}
	}
}

// istiodFollows waits until istiod has what transitca writes after a
// rotation step, as fast as the ConfigMaps follow: its mounted ca.crt of
// istiod-tls and root-cert.pem of istio-ca-root-cert hold the bundle, and
// the certificate it serves chains to root.
func (m *istioMesh) istiodFollows(t *testing.T, step string, bundle []string, root *x509.Certificate) {
	t.Helper()
	began := time.Now()
	if err := eventually(10*time.Second, 100*time.Millisecond, func() error {
		for _, f := range []string{filepath.Join(istiodTLSDir, kube.CACertKey), filepath.Join(istiodCADir, kube.RootCertKey)} {
			certs, err := readPEMFile(filepath.Join(m.istiod.dir, f))
			if err != nil {
				return err
			}
			if !slices.Equal(certsOf(certs), bundle) {
				return fmt.Errorf("istiod's %s holds %d roots, not the bundle", f, len(certs))
			}
		}
		chain, err := m.istiod.servingChain()
		if err != nil {
			return err
		}
		if len(chain) < 2 || chain[1].CheckSignatureFrom(root) != nil {
			return fmt.Errorf("istiod serves serial %x, not under the root it should", chain[0].SerialNumber)
		}
		return nil
	}); err != nil {
		t.Errorf("after %s: %v", step, err)
		return
	}
	t.Logf("istiod follows %s after %v", step, time.Since(began).Round(time.Millisecond))
}

// checkCSRRecovered fails the test when an agent's log shows a CSR that
// failed and was not followed by a certificate at the next attempt.
func checkCSRRecovered(t *testing.T, name, logs string) {
	t.Helper()
	failed := false
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.Contains(l, "citadelclient\tfailed to sign CSR"):
			if failed {
				t.Errorf("%s: two CSRs in a row failed: %s", name, l)
			}
			failed = true
		case strings.Contains(l, "generated new workload certificate"):
			failed = false
		}
	}
	if failed {
		t.Errorf("%s: its last CSR failed", name)
	}
}

// waitAgents waits until every agent's current certificate passes check.
func (m *istioMesh) waitAgents(t *testing.T, what string, check func(*istioAgent, issuedCert) error) {
	t.Helper()
	began := time.Now()
	if err := eventually(time.Minute, 200*time.Millisecond, func() error {
		for _, a := range m.agents() {
			c, ok := a.watch.current()
			if !ok {
				return fmt.Errorf("%s has no certificate", a.name)
			}
			if err := check(a, c); err != nil {
				return fmt.Errorf("%s: %w", a.name, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	t.Logf("every agent has a %s, %v after the step", what, time.Since(began).Round(time.Millisecond))
}

// testRevocation: "ca admin revoke-intermediate", then "ca admin affected"
// with a new admin certificate, lists every agent's current certificate.
// The VM, whose certificate the revoked intermediate signed and can no
// longer renew, is provisioned anew and renews under the new one; the
// operator restarts half of the listed sidecars and the gateway as the
// operations guide says, which then hold a certificate under the new
// intermediate within seconds; the others hold one on their own schedule,
// before the certificate they held expired (at most half the tier's
// max_ttl later).
func (m *istioMesh) testRevocation(t *testing.T) {
	st := &adminv1.StatusResponse{}
	m.op.refresh(t)
	m.op.adminJSON(t, st, "status")
	revoked := st.GetIntermediate().GetFingerprint()
	// When the command can no longer list because the operator's own
	// certificate was under the revoked intermediate, it says so, and the
	// operator lists with a new certificate, as docs/operations.md says.
	m.op.refresh(t)
	out, err := m.op.admin(t, "revoke-intermediate", "--fingerprint", revoked, "--reason", "e2e: revocation with Istio's programs")
	revokedAt := time.Now()
	if err != nil {
		if !strings.Contains(err.Error(), "the revoked intermediate signed your admin certificate") || out != "" {
			t.Fatalf("ca admin revoke-intermediate: %v\nstdout: %q", err, out)
		}
		out = m.admin(t, "affected", "--fingerprint", revoked)
	}
	listed := map[string]bool{}
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		var l affectedLine
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("revoke-intermediate output %q: %v", line, err)
		}
		listed[l.SPIFFEID] = true
	}
	for _, a := range m.agents() {
		if !listed[a.identity()] {
			t.Errorf("revoke-intermediate does not list %s", a.identity())
		}
	}

	underNew := func(a *istioAgent) error {
		c, ok := a.watch.current()
		if !ok {
			return errNotYet
		}
		if fingerprint(c.chain[1]) == revoked {
			return fmt.Errorf("%s still holds serial %x under the revoked intermediate", a.name, c.leaf.SerialNumber)
		}
		return checkChain(a, c)
	}
	// The VM's certificate no longer renews (the revoked intermediate
	// signed it): the operator provisions it anew, with a token, and
	// restarts its agent. Then the operator restarts half of the sidecars
	// and the gateway (a container restart: same pod, same token).
	restartAt := time.Now()
	if how := m.vm.stop(20 * time.Second); strings.HasPrefix(how, "killed") {
		t.Errorf("%s: %s", m.vm.name, how)
	}
	if err := m.provisionVM(t, m.vm); err != nil {
		t.Fatal(err)
	}
	vmLogFrom := len(m.vm.Logs())
	if err := m.vm.start(); err != nil {
		t.Fatal(err)
	}
	restarted := []*istioAgent{m.vm, m.gateway}
	var scheduled []*istioAgent
	for i, a := range m.sidecars {
		if i%2 == 0 {
			restarted = append(restarted, a)
		} else {
			scheduled = append(scheduled, a)
		}
	}
	for _, a := range restarted[1:] {
		if how := a.stop(20 * time.Second); strings.HasPrefix(how, "killed") {
			t.Errorf("%s: %s", a.name, how)
		}
		if err := a.start(); err != nil {
			t.Fatal(err)
		}
	}
	if err := eventually(time.Minute, 200*time.Millisecond, func() error {
		for _, a := range restarted {
			if err := underNew(a); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	t.Logf("%d restarted agents hold certificates under the new intermediate %v after the restarts began", len(restarted), time.Since(restartAt).Round(time.Millisecond))

	for _, a := range scheduled {
		// The last certificate it got under the revoked intermediate (one
		// issued as the revocation was taking effect included).
		var deadline time.Time
		for _, c := range a.watch.issued() {
			if fingerprint(c.chain[1]) == revoked && c.leaf.NotAfter.After(deadline) {
				deadline = c.leaf.NotAfter
			}
		}
		if err := eventually(time.Until(deadline), 200*time.Millisecond, func() error { return underNew(a) }); err != nil {
			t.Errorf("%s: not renewed under the new intermediate before its certificate expired at %s: %v", a.name, deadline.Format(time.RFC3339), err)
		}
	}
	t.Logf("every agent holds a certificate under the new intermediate %v after the revocation", time.Since(revokedAt).Round(time.Millisecond))
	// Between the revocation and its new bootstrap certificate, the VM's
	// renewals were refused, as they should be: its log counts from its
	// restart.
	for _, a := range m.agents() {
		logs := a.Logs()
		if a == m.vm {
			logs = logs[vmLogFrom:]
		}
		checkCSRRecovered(t, a.name, logs)
	}
}
