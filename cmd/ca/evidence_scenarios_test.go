package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/vaulttest"
)

// lockedBuffer is a bytes.Buffer a process writes while a test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// scenarioCA is a CA run as "ca serve" processes, one after another, on
// one data directory: the log an auditor is given is the one the real
// command wrote.
type scenarioCA struct {
	t       *testing.T
	dataDir string
	env     []string
	vault   *vaulttest.Env    // nil: dev mode
	minter  *ca.TokenMinter   // with Vault: signs the workloads' tokens
	jwks    string            // with Vault: the file that verifies them
	proc    *exec.Cmd         // the running ca serve, if any
	waited  chan error        // its exit
	out     *lockedBuffer     // its stderr
	addr    string            // certificate service
	admin   string            // admin API
	adminCA []string          // admin connection flags
	starts  int               // processes started
	root    string            // root bundle file
	cfgs    map[string]string // configuration files written, by extra YAML
}

// newScenarioCA prepares a CA in a new data directory, with Vault (ca init
// run first) or in dev mode.
func newScenarioCA(t *testing.T, withVault bool) *scenarioCA {
	t.Helper()
	s := &scenarioCA{t: t, dataDir: t.TempDir(), env: caOnPath(t), cfgs: map[string]string{}}
	if withVault {
		s.vault = vaulttest.New(t)
		s.env = append(s.env, "VAULT_ADDR="+s.vault.Server.Addr, "VAULT_TOKEN="+s.vault.Server.RootToken)
		t.Setenv("VAULT_ADDR", s.vault.Server.Addr)
		t.Setenv("VAULT_TOKEN", s.vault.Server.RootToken)
		s.minter, s.jwks = testMinter(t, t.TempDir())
		if out, errs, code := runCA(t, "init", "--config", s.config("")); code != 0 {
			t.Fatalf("ca init: %s%s", out, errs)
		}
	}
	s.root = filepath.Join(s.dataDir, "root-cert.pem")
	t.Cleanup(func() {
		if s.proc != nil {
			s.kill()
		}
	})
	return s
}

// config writes the configuration file of the CA with extra YAML after
// the base (loopback listeners, no Kubernetes, checkpoints only when the
// log closes or a command asks for one).
func (s *scenarioCA) config(extra string) string {
	s.t.Helper()
	if f, ok := s.cfgs[extra]; ok {
		return f
	}
	text := "data_dir: " + s.dataDir + `
server: {listen: "127.0.0.1:0", metrics_listen: ""}
kubernetes: {enabled: false}
log: {checkpoint_every: 1000000, checkpoint_interval: 24h}
`
	if s.vault == nil {
		text += "dev: true\nadmin: {listen: \"127.0.0.1:0\"}\n"
	} else {
		text += "vault: {transit_mount: " + s.vault.Transit + ", kv_mount: " + s.vault.KV + "}\n" +
			"admin: {listen: \"127.0.0.1:0\", identities: [spiffe://cluster.local/ns/transitca/sa/admin]}\n" +
			"auth: {jwt: {issuer: https://issuer.test, jwks_file: " + s.jwks + "}}\n"
	}
	f := filepath.Join(s.t.TempDir(), "transitca.yaml")
	writeFile(s.t, f, text+extra)
	s.cfgs[extra] = f
	return f
}

var (
	servingAddr = regexp.MustCompile(`msg="transitca serving" addr=(\S+)`)
	adminAddr   = regexp.MustCompile(`msg="admin API listening" addr=(\S+)`)
)

// start runs "ca serve --config" with the base configuration and extra,
// and waits until it serves.
func (s *scenarioCA) start(extra string) {
	t := s.t
	t.Helper()
	if s.proc != nil {
		t.Fatal("a ca serve is already running")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s.out = &lockedBuffer{}
	cmd := exec.Command(self, "serve", "--config", s.config(extra))
	cmd.Env, cmd.Stdout, cmd.Stderr = s.env, s.out, s.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.proc, s.starts = cmd, s.starts+1
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s.waited = exited
	deadline := time.Now().Add(2 * time.Minute)
	for {
		log := s.out.String()
		m, a := servingAddr.FindStringSubmatch(log), adminAddr.FindStringSubmatch(log)
		if m != nil && a != nil {
			s.addr, s.admin = m[1], a[1]
			break
		}
		select {
		case err := <-exited:
			s.proc = nil
			t.Fatalf("ca serve exited (%v) before serving:\n%s", err, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ca serve did not start serving in 2 minutes:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s.adminCA == nil {
		dir, _ := s.request("transitca", "admin")
		s.adminCA = []string{"--cert", filepath.Join(dir, "cert-chain.pem"), "--key", filepath.Join(dir, "key.pem"),
			"--root-cert", s.root, "--server-name", "localhost"}
	}
}

// adminFlags are the flags that reach the running daemon's admin API.
func (s *scenarioCA) adminFlags() []string {
	return append([]string{"--addr", s.admin}, s.adminCA...)
}

// stop sends SIGTERM and waits for a clean exit.
func (s *scenarioCA) stop() {
	s.t.Helper()
	_ = s.proc.Process.Signal(syscall.SIGTERM)
	if err := <-s.waited; err != nil {
		s.t.Fatalf("ca serve did not stop cleanly: %v\n%s", err, s.out.String())
	}
	s.proc = nil
}

// kill stops the daemon with SIGKILL: nothing more is written.
func (s *scenarioCA) kill() {
	_ = s.proc.Process.Kill()
	<-s.waited
	s.proc = nil
}

// request asks for a certificate as ns/sa, the way istio-agent does; it
// returns the directory the certificate was written to and ca request's
// exit code.
func (s *scenarioCA) request(ns, sa string, extra ...string) (string, int) {
	t := s.t
	t.Helper()
	var tok string
	if s.vault == nil {
		out, errs, code := runCA(t, "token", "--dev", "--data-dir", s.dataDir, "--namespace", ns, "--service-account", sa)
		if code != 0 {
			t.Fatalf("ca token: %s", errs)
		}
		tok = out
	} else {
		var err error
		if tok, err = s.minter.Mint(ns, sa, []string{"istio-ca"}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	tf := filepath.Join(t.TempDir(), "token")
	writeFile(t, tf, tok)
	out := t.TempDir()
	args := append([]string{"request", "--addr", s.addr, "--token-file", tf, "--root-cert", s.root,
		"--server-name", "localhost", "--out", out}, extra...)
	o, errs, code := runCA(t, args...)
	if code != 0 && !strings.Contains(strings.Join(extra, " "), "--identity") {
		t.Fatalf("ca request for %s/%s: %s%s", ns, sa, o, errs)
	}
	return out, code
}

// adminCmd runs "ca admin" on the running daemon.
func (s *scenarioCA) adminCmd(args ...string) string {
	s.t.Helper()
	out, errs, code := runCA(s.t, append(append([]string{"admin"}, args...), s.adminFlags()...)...)
	if code != 0 {
		s.t.Fatalf("ca admin %s: %s%s", args[0], out, errs)
	}
	return out
}

// logFile is the issuance log of the CA's data directory.
func (s *scenarioCA) logFile() string { return filepath.Join(s.dataDir, "issuance.db") }

// vkey is the verifier key file the daemon wrote.
func (s *scenarioCA) vkey() string { return filepath.Join(s.dataDir, "log-verifier.vkey") }

// copyLog copies the (stopped) CA's log file, as an auditor is handed it.
func (s *scenarioCA) copyLog() string {
	s.t.Helper()
	b, err := os.ReadFile(s.logFile())
	if err != nil {
		s.t.Fatal(err)
	}
	p := filepath.Join(s.t.TempDir(), "issuance.db")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// renderedReport is a report written as HTML, as headless Chromium shows
// it.
type renderedReport struct {
	html, dom string
	stdout    string
	stderr    string
	code      int
	json      *evidenceReport
}

// artifactDir is where the screenshots of rendered reports are kept after
// the test: $TRANSITCA_TEST_ARTIFACTS, else transitca-test-artifacts in
// the system's temporary directory.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("TRANSITCA_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "transitca-test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// renderReport runs ca report evidence with args twice, as HTML (rendered
// in headless Chromium, screenshot kept under name) and as JSON, and
// returns both with the exit code of the HTML run.
func renderReport(t *testing.T, name string, args ...string) *renderedReport {
	t.Helper()
	r := &renderedReport{html: filepath.Join(t.TempDir(), name+".html")}
	r.stdout, r.stderr, r.code = runCA(t, append(append([]string{"report", "evidence"}, args...), "--out", r.html)...)
	if _, err := os.Stat(r.html); err != nil {
		t.Fatalf("ca report evidence wrote no report (exit %d): %s%s", r.code, r.stdout, r.stderr)
	}
	jsonOut, errs, _ := runCA(t, append(append([]string{"report", "evidence"}, args...), "-o", "json")...)
	r.json = new(evidenceReport)
	if err := json.Unmarshal([]byte(jsonOut), r.json); err != nil {
		t.Fatalf("report JSON: %v\n%s%s", err, jsonOut, errs)
	}
	shot := filepath.Join(artifactDir(t), name+".png")
	r.dom = chromiumRender(t, r.html, shot)
	t.Logf("screenshot of the %s report: %s", name, shot)
	return r
}

// chromiumRender opens the HTML file in headless Chromium: it returns the
// DOM as Chromium parsed it and writes a screenshot of the first 1200×3000
// pixels to shot, checked to be a rendered page.
func chromiumRender(t *testing.T, html, shot string) string {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the evidence report's browser test needs Debian's chromium (make test-deps installs it): %v", err)
	}
	browser := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, chromium, append([]string{"--headless", "--no-sandbox", "--disable-gpu",
			"--hide-scrollbars", "--user-data-dir=" + t.TempDir()}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		for _, line := range strings.Split(stderr.String(), "\n") {
			if strings.Contains(line, "CONSOLE") || strings.Contains(line, "Failed to load resource") {
				t.Errorf("chromium reported: %s", line)
			}
		}
		return stdout.String()
	}
	dom := browser("--dump-dom", "file://"+html)
	browser("--window-size=1200,3000", "--screenshot="+shot, "file://"+html)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	colors := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 7 {
		for x := b.Min.X; x < b.Max.X; x += 7 {
			r, g, bl, a := img.At(x, y).RGBA()
			colors[[4]uint32{r, g, bl, a}] = true
		}
	}
	if len(colors) < 20 {
		t.Errorf("the screenshot has %d colours: blank, not a rendered report", len(colors))
	}
	return dom
}

// element returns the start tag and text of the element with id in dom
// ("" when there is none): the text up to the element's closing tag
// (nested elements included, tags removed).
func element(dom, id string) (tag, text string) {
	i := strings.Index(dom, ` id="`+id+`"`)
	if i < 0 {
		return "", ""
	}
	start := strings.LastIndex(dom[:i], "<")
	end := strings.Index(dom[i:], ">")
	tag = dom[start : i+end+1]
	name := strings.Fields(strings.TrimPrefix(tag, "<"))[0]
	rest := dom[i+end+1:]
	// The matching close tag, counting nested elements of the same name.
	depth, pos := 1, 0
	for depth > 0 {
		o := strings.Index(rest[pos:], "<"+name)
		c := strings.Index(rest[pos:], "</"+name+">")
		if c < 0 {
			break
		}
		if o >= 0 && o < c {
			depth++
			pos += o + 1
			continue
		}
		depth--
		pos += c
		if depth > 0 {
			pos++
		}
	}
	return tag, strings.Join(strings.Fields(tagPattern.ReplaceAllString(rest[:pos], " ")), " ")
}

var tagPattern = regexp.MustCompile(`<[^>]*>`)

// hasClass reports whether the start tag has class c.
func hasClass(tag, c string) bool {
	m := regexp.MustCompile(`class="([^"]*)"`).FindStringSubmatch(tag)
	if m == nil {
		return false
	}
	for _, f := range strings.Fields(m[1]) {
		if f == c {
			return true
		}
	}
	return false
}

// firstScreen is the report's banners and headline cards: what an auditor
// reads first.
func firstScreen(t *testing.T, dom string) string {
	t.Helper()
	i, j := strings.Index(dom, "<body"), strings.Index(dom, `<h2`)
	if i < 0 || j < 0 {
		t.Fatalf("no body or no section in the report:\n%s", dom)
	}
	return dom[i:j]
}

// Scenario 1a: a log whose newest entries are not yet under a signed
// checkpoint (the daemon was killed right after serving) is verified up
// to its checkpoint, in amber, and the report says what the entries after
// it mean; its figures stay as they are.
func TestEvidenceScenarioTailAfterCheckpoint(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	s.request("shop", "web")
	s.stop() // the final checkpoint covers these
	s.start("")
	s.request("shop", "web")
	s.request("shop", "api")
	s.kill() // no checkpoint over the second run's entries
	db := s.copyLog()
	r := renderReport(t, "tail-after-checkpoint", "--db", db, "--verifier-key", s.vkey(), "--from", from)
	if r.code != 0 {
		t.Fatalf("exit %d on an intact log: %s", r.code, r.stderr)
	}
	tag, text := element(r.dom, "log-verified")
	if !hasClass(tag, "warn") || !strings.Contains(text, "verified up to checkpoint") || !strings.Contains(text, "after it") {
		t.Errorf("verification card %s %q: want amber, verified up to the checkpoint with the entries after it counted", tag, text)
	}
	_, note := element(r.dom, "verification-note")
	if !strings.Contains(note, "not yet covered by a signed checkpoint") {
		t.Errorf("no note on what the entries after the checkpoint mean: %q", note)
	}
	if lg := r.json.Logs[0]; lg.State != logPartial || lg.AfterCheckpoint == 0 || lg.CheckpointSize == 0 {
		t.Errorf("log %+v: want state %q with entries after a checkpoint", lg, logPartial)
	}
	if tag, _ := element(r.dom, "issued-total"); hasClass(tag, "grey") {
		t.Errorf("the figures of an intact log are greyed: %s", tag)
	}
	runEvidenceCommands(t, r.json)
}

// flipInFile returns a copy of the log file in which the first byte of
// every copy of marker is changed, as tampering with an entry would.
func flipInFile(t *testing.T, db, marker string) string {
	t.Helper()
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i := bytes.Index(b, []byte(marker)); i >= 0; {
		b[i] ^= 0x01
		n++
		j := bytes.Index(b[i+1:], []byte(marker))
		if j < 0 {
			break
		}
		i += 1 + j
	}
	if n == 0 {
		t.Fatalf("%q is not in the log file", marker)
	}
	out := filepath.Join(t.TempDir(), "tampered.db")
	if err := os.WriteFile(out, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

// Scenario 1b: a log with a flipped byte fails verification: the report
// shows no figure as green, greys every card with where the log failed,
// exits non-zero; --allow-unverified exits 0 and stamps the page.
func TestEvidenceScenarioTamperedLog(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	s.request("shop", "web")
	s.adminCmd("rotate-intermediate", "--reason", "tamper-marker")
	s.adminCmd("drill")
	s.request("shop", "api")
	s.stop()
	db := flipInFile(t, s.copyLog(), "tamper-marker")

	r := renderReport(t, "tampered", "--db", db, "--verifier-key", s.vkey(), "--from", from)
	if r.code == 0 {
		t.Errorf("the report of a tampered log exited 0")
	}
	if !strings.Contains(r.stderr, "failed verification at entry") {
		t.Errorf("stderr %q does not say where the log failed", r.stderr)
	}
	screen := firstScreen(t, r.dom)
	if regexp.MustCompile(`class="[^"]*\bok\b`).MatchString(screen) {
		t.Errorf("the first screen of a tampered log's report shows something green:\n%s", screen)
	}
	for _, id := range []string{"issued-total", "over-total", "denials-total", "events-total", "drills-passed", "log-verified"} {
		tag, text := element(r.dom, id)
		if !hasClass(tag, "grey") {
			t.Errorf("card %s is not greyed: %s %q", id, tag, text)
		}
	}
	_, text := element(r.dom, "log-verified")
	if !strings.Contains(text, "log failed verification at entry") {
		t.Errorf("verification card %q does not say where the log failed", text)
	}
	if lg := r.json.Logs[0]; lg.State != logFailed || lg.FailedAt < 0 {
		t.Errorf("log %+v: want state %q with the failing entry", lg, logFailed)
	}

	allowed := renderReport(t, "tampered-allowed", "--db", db, "--verifier-key", s.vkey(), "--from", from, "--allow-unverified")
	if allowed.code != 0 {
		t.Errorf("--allow-unverified exited %d: %s", allowed.code, allowed.stderr)
	}
	if tag, text := element(allowed.dom, "unverified-banner"); tag == "" || !strings.Contains(text, "failed verification") {
		t.Errorf("--allow-unverified: no stamp on the page (%q)", text)
	}
	if !strings.Contains(allowed.dom, "@media print") || !strings.Contains(allowed.dom, "position: fixed") {
		t.Errorf("the stamp is not repeated on every printed page")
	}
}

// Scenario 2: after a restart with a 45-day service tier, certificates
// over the stated 30-day control are red and the policy change is listed,
// whether the control is stated with --control or taken from the first
// start of the period.
func TestEvidenceScenarioLoosenedPolicy(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	s.request("shop", "web", "--ttl", "2000h") // 30 days
	s.stop()
	loosened := "tiers:\n  service: {max_ttl: 1080h, default_ttl: 24h}\n  privileged: {max_ttl: 168h, default_ttl: 24h}\npolicy: [{tier: privileged, namespaces: [istio-system]}]\nca: {intermediate_ttl: 2400h}\n"
	s.start(loosened)
	for range 3 {
		s.request("shop", "web", "--ttl", "2000h") // 45 days
	}
	s.stop()
	db := s.copyLog()
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"default control", nil},
		{"stated control", []string{"--control", "service=720h,privileged=168h"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--db", db, "--verifier-key", s.vkey(), "--from", from}, tc.args...)
			r := renderReport(t, "loosened-policy-"+strings.ReplaceAll(tc.name, " ", "-"), args...)
			tag, text := element(r.dom, "over-total")
			if !hasClass(tag, "bad") || !strings.HasPrefix(text, "3") {
				t.Errorf("over-control card %s %q: want 3 in red", tag, text)
			}
			_, changes := element(r.dom, "policy-changes")
			if !strings.Contains(changes, "service") || !strings.Contains(changes, "720h") || !strings.Contains(changes, "1080h") || !strings.Contains(changes, "transitca") {
				t.Errorf("policy changes %q: want the service tier's change from 720h to 1080h with its actor", changes)
			}
			over := 0
			for _, v := range r.json.Validity {
				over += len(v.OverControl)
			}
			if over != 3 || len(r.json.PolicyChanges) != 1 || r.json.Control.Tiers["service"] != "720h0m0s" {
				t.Errorf("JSON: %d over the control, policy changes %+v, control %+v", over, r.json.PolicyChanges, r.json.Control)
			}
			runEvidenceCommands(t, r.json)
		})
	}
}

// Scenario 3: with "policy: []", istiod and the ingress gateway get
// service-tier certificates: each start records its rules, the report
// lists which identities were privileged, and flags those known
// privileged workloads in red.
func TestEvidenceScenarioPrivilegedClassification(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("policy: []\n")
	s.request("istio-system", "istiod", "--ttl", "2000h")
	s.request("istio-system", "istio-ingressgateway", "--ttl", "2000h")
	s.request("shop", "web")
	s.stop()
	s.start("")
	s.request("istio-system", "istiod", "--ttl", "2000h") // privileged again: 7 days
	s.stop()
	r := renderReport(t, "privileged-classification", "--db", s.copyLog(), "--verifier-key", s.vkey(), "--from", from)
	tag, text := element(r.dom, "privileged-flagged")
	if !hasClass(tag, "bad") || !strings.HasPrefix(text, "2") {
		t.Errorf("privileged card %s %q: want 2 in red", tag, text)
	}
	_, flagged := element(r.dom, "privileged-flags")
	for _, want := range []string{"/ns/istio-system/sa/istiod", "/ns/istio-system/sa/istio-ingressgateway", "720h"} {
		if !strings.Contains(flagged, want) {
			t.Errorf("flagged certificates %q lack %s", flagged, want)
		}
	}
	_, rules := element(r.dom, "privileged-rules")
	if !strings.Contains(rules, "no rule") || !strings.Contains(rules, "istio-system") {
		t.Errorf("privileged rules %q: want the start without a rule and the one with istio-system", rules)
	}
	var privileged []string
	for _, p := range r.json.Privileged.Identities {
		privileged = append(privileged, p.SPIFFEID)
	}
	if len(privileged) != 1 || !strings.HasSuffix(privileged[0], "/sa/istiod") {
		t.Errorf("identities issued in the privileged tier: %v, want istiod's (second start)", privileged)
	}
	runEvidenceCommands(t, r.json)
}

// Scenario 4: a dev log says so on every page, its key custody statement
// says local software keys, and a drill whose Vault step could not check
// is not counted as passed.
func TestEvidenceScenarioDevLog(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	s.request("shop", "web")
	s.adminCmd("drill")
	s.stop()
	r := renderReport(t, "dev-log", "--db", s.copyLog(), "--verifier-key", s.vkey(), "--from", from)
	if tag, text := element(r.dom, "dev-banner"); tag == "" || !strings.Contains(text, "DEV") || !strings.Contains(text, "local software keys") {
		t.Errorf("no dev banner: %q", text)
	}
	if !strings.Contains(r.dom, "@media print") {
		t.Errorf("the dev banner is not repeated on printed pages")
	}
	if strings.Contains(r.dom, "never leaves Vault") {
		t.Errorf("a dev log's report says a key never leaves Vault")
	}
	_, custody := element(r.dom, "key-custody")
	if !strings.Contains(custody, "local software key") {
		t.Errorf("key custody %q does not say local software keys", custody)
	}
	tag, text := element(r.dom, "drills-passed")
	if hasClass(tag, "ok") || !strings.HasPrefix(text, "0/1") || !strings.Contains(text, "not checked") {
		t.Errorf("drills card %s %q: want 0/1 passed, 1 not checked, not green", tag, text)
	}
	if d := r.json.Drills; d.Total != 1 || d.Passed != 0 || d.NotChecked != 1 {
		t.Errorf("drills %+v: want 1 run, 0 passed, 1 not checked", d)
	}
	if !r.json.Dev {
		t.Error("JSON: dev is false")
	}
	runEvidenceCommands(t, r.json)
}

// Starts and stops are shown with the gaps between them: a clean stop, and
// a kill (no stop entry), whose gap runs from the last entry of the run.
func TestEvidenceServiceGaps(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	s.request("shop", "web")
	s.stop()
	time.Sleep(1100 * time.Millisecond)
	s.start("")
	s.request("shop", "web")
	s.kill()
	time.Sleep(1100 * time.Millisecond)
	s.start("")
	s.stop()
	r := renderReport(t, "service-gaps", "--db", s.copyLog(), "--verifier-key", s.vkey(), "--from", from)
	svc := r.json.Service
	var actions []string
	for _, e := range svc.Events {
		actions = append(actions, e.Action)
	}
	if strings.Join(actions, " ") != "start stop start start stop" || svc.UncleanStops != 1 || len(svc.Gaps) != 2 {
		t.Fatalf("service events %v, %d unclean stops, gaps %+v; want start stop start start stop, one unclean, two gaps", actions, svc.UncleanStops, svc.Gaps)
	}
	if g := svc.Gaps[0]; !g.Clean || g.Seconds < 1 {
		t.Errorf("gap after the clean stop %+v: want clean, at least 1s", g)
	}
	if g := svc.Gaps[1]; g.Clean || g.Seconds < 1 {
		t.Errorf("gap after the kill %+v: want unclean, at least 1s", g)
	}
	tag, text := element(r.dom, "service-starts")
	if !hasClass(tag, "warn") || !strings.Contains(text, "unclean stop") {
		t.Errorf("service card %s %q: want amber, naming the unclean stop", tag, text)
	}
	runEvidenceCommands(t, r.json)
}

// A backup put back after the witness was removed: the start on it records
// that the witness held nothing for a log with entries, and the report
// shows it in red; with the checkpoint an auditor kept (--since), the
// report fails the log as rolled back.
func TestEvidenceRestoredBackupWithoutWitness(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	s.request("shop", "web")
	s.stop()
	backup := s.copyLog()
	s.start("")
	s.request("shop", "api")
	kept := filepath.Join(t.TempDir(), "kept.checkpoint")
	out, errs, code := runCA(t, append([]string{"log", "checkpoint"}, s.adminFlags()...)...)
	if code != 0 {
		t.Fatalf("ca log checkpoint: %s", errs)
	}
	writeFile(t, kept, out)
	s.stop()
	b, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, s.logFile(), string(b))
	if err := os.Remove(filepath.Join(s.dataDir, "log-witness.checkpoint")); err != nil {
		t.Fatal(err)
	}
	s.start("")
	s.stop()

	r := renderReport(t, "restored-backup", "--db", s.copyLog(), "--verifier-key", s.vkey(), "--from", from)
	if r.json.Service.RollbackUnchecked != 1 {
		t.Errorf("rollback_unchecked = %d, want 1 (the start on the restored file)", r.json.Service.RollbackUnchecked)
	}
	tag, text := element(r.dom, "service-starts")
	if !hasClass(tag, "bad") || !strings.Contains(text, "rollback") {
		t.Errorf("service card %s %q: want red, naming the rollback that could not be checked", tag, text)
	}
	_, service := element(r.dom, "service")
	if !strings.Contains(service, "witness held NO checkpoint") {
		t.Errorf("the service table %q does not say the witness held nothing", service)
	}

	since := renderReport(t, "restored-backup-since", "--db", s.copyLog(), "--verifier-key", s.vkey(), "--from", from, "--since", kept)
	if since.code == 0 || since.json.Logs[0].State != logFailed || !strings.Contains(since.json.Logs[0].VerifyError, "diverges from a checkpoint") {
		t.Errorf("with --since the kept checkpoint: exit %d, log %+v; want it failed as rolled back (diverging from the kept checkpoint)", since.code, since.json.Logs[0])
	}
}

// Tier names come from the configuration, and through the log into the
// commands the report prints: a tier named to run a command in the
// auditor's shell runs nothing, and a tier name holding "=" leaves every
// tier's lifetime checked. Every command runs against the same log and
// reproduces the report's figure.
func TestEvidenceTierNamesInCommands(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "p")
	injection := `x'$(touch${IFS}` + marker + `)'`
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	extra := fmt.Sprintf(`tiers:
  service: {max_ttl: 720h, default_ttl: 24h}
  privileged: {max_ttl: 168h, default_ttl: 24h}
  %q: {max_ttl: 240h, default_ttl: 24h}
  "a=b": {max_ttl: 48h, default_ttl: 24h}
policy:
  - {tier: privileged, namespaces: [istio-system]}
  - {tier: %q, namespaces: [shop], service_accounts: [web]}
  - {tier: "a=b", namespaces: [shop], service_accounts: [api]}
`, injection, injection)
	s.start(extra)
	s.request("shop", "web", "--ttl", "2000h")
	s.request("shop", "api", "--ttl", "2000h")
	s.stop()
	r := renderReport(t, "tier-names", "--db", s.copyLog(), "--verifier-key", s.vkey(), "--from", from)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	byTier := map[string]*tierValidity{}
	for _, v := range r.json.Validity {
		byTier[v.Tier] = v
		if v.Unchecked != 0 || len(v.MaxTTL) != 1 {
			t.Errorf("tier %q: %d unchecked, maximum %v: want every tier checked against its recorded maximum", v.Tier, v.Unchecked, v.MaxTTL)
		}
	}
	if v := byTier[injection]; v == nil || v.LongestSeconds != 240*3600 {
		t.Errorf("tier %q: %+v, want a 240h certificate", injection, v)
	}
	if v := byTier["a=b"]; v == nil || v.LongestSeconds != 48*3600 || v.MaxTTL[0] != "48h0m0s" {
		t.Errorf("tier a=b: %+v, want a 48h certificate checked against 48h", v)
	}
	runEvidenceCommands(t, r.json)
	if _, err := os.Stat(marker); err == nil {
		t.Fatalf("a command of the report ran the tier name's command: %s exists", marker)
	}
}

// docRecomputeChecks maps the figure named by a command of
// docs/auditing.md's re-compute block to the report's check.
var docRecomputeChecks = map[string]string{
	"issued.by_tier":            checkByTier,
	"validity, longest_seconds": checkLongest,
	"validity, over_control":    checkOverControl,
	"denials.by_reason":         checkDenials,
	"events":                    checkEvents,
	"drills":                    checkDrills,
	"service.events":            checkService,
}

var docReportFigure = regexp.MustCompile(`\(report: ([^)]+)\)\s*$`)

// The re-compute block of docs/auditing.md, run as written against a log
// that ca serve wrote (aggregated denials, a drill, a restart with a
// loosened tier), with the report's period: each command prints the
// report's figure.
func TestAuditingDocRecomputes(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("limits: {denials_per_peer_per_second: 0.01, denial_burst: 1, denial_window: 1s}\n")
	s.request("shop", "web")
	bad := filepath.Join(t.TempDir(), "token")
	writeFile(t, bad, "not-a-token")
	for range 6 {
		if _, errs, code := runCA(t, "request", "--addr", s.addr, "--token-file", bad, "--root-cert", s.root,
			"--server-name", "localhost", "--identity", "spiffe://cluster.local/ns/shop/sa/web", "--out", t.TempDir()); code == 0 {
			t.Fatalf("a forged token got a certificate: %s", errs)
		}
	}
	s.adminCmd("drill")
	s.stop()
	s.start("tiers:\n  service: {max_ttl: 1080h, default_ttl: 24h}\n  privileged: {max_ttl: 168h, default_ttl: 24h}\nca: {intermediate_ttl: 2400h}\n")
	s.request("shop", "web", "--ttl", "2000h")
	s.stop()
	db := s.copyLog()

	out, errs, code := runCA(t, "report", "evidence", "--db", db, "--verifier-key", s.vkey(), "--from", from,
		"--control", "service=720h,privileged=168h", "-o", "json")
	if code != 0 {
		t.Fatalf("ca report evidence: %s", errs)
	}
	var r evidenceReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	export, _, _ := runCA(t, "log", "export", "--db", db)
	if entries := strings.Count(export, `"kind":"denial"`); r.Denials.Total != 6 || entries >= 6 {
		t.Fatalf("%d denials in %d entries: want 6 requests, some in an aggregated entry", r.Denials.Total, entries)
	}
	over := 0
	for _, v := range r.Validity {
		over += len(v.OverControl)
	}
	if over != 1 {
		t.Fatalf("%d certificates over the control, want the 45-day one", over)
	}

	dir := t.TempDir()
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "issuance.db"), string(b))
	lines := docBlock(t, "docs/auditing.md", "## Re-compute the figures yourself")
	var script strings.Builder
	var checks []string
	pending := ""
	for _, line := range lines {
		switch {
		case strings.HasPrefix(line, "FROM="):
			fmt.Fprintf(&script, "FROM=%s TO=%s\n", r.From, r.To)
		case strings.HasPrefix(line, "#"):
			if m := docReportFigure.FindStringSubmatch(line); m != nil {
				pending = m[1]
			}
		case strings.TrimSpace(line) == "":
		default:
			fmt.Fprintf(&script, "%s\necho \"@@@ %d $?\"\n", line, len(checks))
			checks = append(checks, pending)
			pending = ""
		}
	}
	sh := exec.Command("bash", "-c", script.String())
	sh.Dir, sh.Env = dir, caOnPath(t)
	got, err := sh.CombinedOutput()
	if err != nil {
		t.Fatalf("the block's shell: %v\n%s", err, got)
	}
	segments, codes := splitByMarkers(t, string(got), len(checks))
	compared := 0
	for i, label := range checks {
		if codes[i] != 0 {
			t.Errorf("command %d exited %d:\n%s", i, codes[i], segments[i])
			continue
		}
		if label == "" {
			continue
		}
		check, ok := docRecomputeChecks[label]
		if !ok {
			t.Errorf("the block names the figure %q, which this test does not know", label)
			continue
		}
		var v any
		if err := json.Unmarshal([]byte(segments[i]), &v); err != nil {
			t.Errorf("%s: output is not JSON: %v\n%s", label, err, segments[i])
			continue
		}
		if g, w := canonicalJSON(t, v), canonicalJSON(t, evidenceFigure(t, &r, check)); g != w {
			t.Errorf("%s: the report says\n%s\nthe documented command computes\n%s", label, w, g)
		}
		compared++
	}
	if compared != len(docRecomputeChecks) {
		t.Errorf("%d documented commands compared, want %d", compared, len(docRecomputeChecks))
	}
}

// The tier query of docs/operations.md counts every issuance of the log,
// not the first page of them.
func TestOperationsTierQueryReadsEveryPage(t *testing.T) {
	s := newScenarioCA(t, false)
	s.start("")
	const n = 60 // beyond the 50 entries of one page
	for range n {
		s.request("shop", "web")
	}
	s.stop()
	db := s.copyLog()
	var line string
	for _, l := range docBlock(t, "docs/operations.md", "did every certificate respect its tier") {
		if strings.Contains(l, "ca log query") {
			line = l
		}
	}
	sh := exec.Command("bash", "-c", "A='--db "+db+"'\n"+line)
	sh.Env = caOnPath(t)
	out, err := sh.Output()
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	total := 0
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var c int
		if _, err := fmt.Sscan(l, &c); err == nil {
			total += c
		}
	}
	// The CA's own serving certificate and the admin's are issuances too.
	if total < n+2 {
		t.Fatalf("%s counts %d issuances, want every one of the %d and more in the log:\n%s", line, total, n+2, out)
	}
}

// A backup taken right after activity ends under a signed checkpoint: the
// daemon signs one before the snapshot, so the report on the backup is
// verified, not partly.
func TestBackupIsCheckpointedFirst(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	s.request("shop", "web")
	s.request("shop", "api")
	backup := filepath.Join(t.TempDir(), "backup.db")
	if out, errs, code := runCA(t, append([]string{"log", "backup", "--out", backup, "--verifier-key", s.vkey()}, s.adminFlags()...)...); code != 0 {
		t.Fatalf("ca log backup: %s%s", out, errs)
	}
	s.stop()
	out, errs, code := runCA(t, "report", "evidence", "--db", backup, "--verifier-key", s.vkey(), "--from", from, "-o", "json")
	if code != 0 {
		t.Fatalf("report on the backup: %s", errs)
	}
	var r evidenceReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if lg := r.Logs[0]; lg.State != logVerified || lg.AfterCheckpoint != 0 || lg.CheckpointSize != lg.Entries {
		t.Fatalf("the backup's log: state %s, checkpoint of %d of %d entries; want every entry under the checkpoint", lg.State, lg.CheckpointSize, lg.Entries)
	}
}

// The commands of a report made from a file named relatively run in the
// directory of that file: the copy is not a copy of the file onto itself.
// The report also says what it cannot show.
func TestEvidenceCommandsRunWhereTheLogIs(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	s.request("shop", "web")
	s.stop()
	dir := filepath.Dir(s.copyLog())
	writeFile(t, filepath.Join(dir, "log-verifier.vkey"), mustRead(t, s.vkey()))
	t.Chdir(dir)
	out, errs, code := runCA(t, "report", "evidence", "--db", "issuance.db", "--verifier-key", "log-verifier.vkey", "--from", from, "-o", "json")
	if code != 0 {
		t.Fatalf("report: %s", errs)
	}
	var r evidenceReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	env := caOnPath(t)
	for _, c := range r.Commands {
		sh := exec.Command("bash", "-c", c.Command)
		sh.Dir, sh.Env = dir, env
		if b, err := sh.CombinedOutput(); err != nil {
			t.Fatalf("%s, run where the log is: %v\n%s", c.Command, err, b)
		}
	}
	cannot := strings.Join(r.CannotShow, "\n")
	for _, want := range []string{"mutual TLS on the wire", "beyond what Vault itself reported", "Downtime outside the log", "rolled back"} {
		if !strings.Contains(cannot, want) {
			t.Errorf("what the report cannot show lacks %q:\n%s", want, cannot)
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A CA on Vault: the report carries no dev banner; each start and drill
// recorded Vault's own answer about the keys, and the report shows it: a
// key Vault reports as backed up in plaintext is red, and the sentence on
// the checkpoint key says so. The report signs with the checkpoint key in
// Vault.
func TestEvidenceVaultKeyCustody(t *testing.T) {
	s := newScenarioCA(t, true)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	s.request("shop", "web")
	s.adminCmd("drill")
	s.stop()
	mid := time.Now().Add(time.Second).UTC().Format(time.RFC3339)
	time.Sleep(1100 * time.Millisecond)
	clean := renderReport(t, "vault-custody", "--db", s.copyLog(), "--verifier-key", s.vkey(), "--from", from, "--to", mid)
	if tag, _ := element(clean.dom, "dev-banner"); tag != "" || clean.json.Dev {
		t.Errorf("a Vault CA's report has a dev banner")
	}
	if d := clean.json.Drills; d.Total != 1 || d.Passed != 1 || d.NotChecked != 0 {
		t.Errorf("drills %+v: want the drill passed, its Vault step checked", d)
	}
	if tag, text := element(clean.dom, "custody"); !hasClass(tag, "ok") || !strings.Contains(text, "none exportable") {
		t.Errorf("custody card %s %q: want green, Vault's answer", tag, text)
	}
	if !strings.Contains(clean.dom, "Vault answered exportable=false, allow_plaintext_backup=false") {
		t.Errorf("the report does not give Vault's answer about the checkpoint key")
	}
	seen := map[string]bool{}
	for _, c := range clean.json.Custody {
		for _, k := range c.Keys {
			if k.Role == "intermediate" {
				continue // in memory
			}
			if k.Where != "vault-transit" || k.Mount != s.vault.Transit || k.LatestVersion < 1 || k.Error != "" {
				t.Errorf("%s at %s: %+v, want Vault's answer", k.Role, c.At, k)
			}
			seen[c.At+" "+k.Role] = true
		}
	}
	if !seen["start root"] || !seen["start checkpoint"] || !seen["drill root"] || !seen["drill checkpoint"] {
		t.Errorf("key custody recorded %v: want the root and checkpoint keys at the start and at the drill", seen)
	}

	// The checkpoint key now allows a plaintext backup: the next drill
	// records it, and the report shows it in red.
	if _, err := s.vault.Client.Logical().Write(s.vault.Transit+"/keys/transitca-log/config", map[string]any{"allow_plaintext_backup": true}); err != nil {
		t.Fatal(err)
	}
	s.start("")
	s.adminCmd("drill")
	s.stop()
	after := renderReport(t, "vault-custody-plaintext-backup", "--db", s.copyLog(), "--verifier-key", s.vkey(), "--from", from)
	if tag, text := element(after.dom, "custody"); !hasClass(tag, "bad") || !strings.Contains(text, "can leave Vault") {
		t.Errorf("custody card %s %q: want red, a key that can leave Vault", tag, text)
	}
	if !strings.Contains(after.dom, "CAN leave Vault") {
		t.Errorf("the sentence on the checkpoint key does not say it can leave Vault")
	}

	// Signed with the checkpoint key in Vault.
	out := filepath.Join(t.TempDir(), "report.html")
	if _, errs, code := runCA(t, "report", "evidence", "--db", s.copyLog(), "--verifier-key", s.vkey(), "--from", from, "--out", out,
		"--sign", "--config", s.config("")); code != 0 {
		t.Fatalf("--sign with Vault: %s", errs)
	}
	if stdout, errs, code := runCA(t, "report", "verify", "--verifier-key", s.vkey(), out); code != 0 {
		t.Fatalf("verify: %s%s", stdout, errs)
	}
}
