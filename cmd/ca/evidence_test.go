package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/daemontest"
	"github.com/transitca/transitca/internal/vaulttest"
)

// asCA makes the test binary run as the ca command when it is started
// under the name ca (see caOnPath): commands printed for users then run
// exactly as typed, through the same code as the real binary.
const asCAEnv = "TRANSITCA_TEST_RUN_AS_CA"

// caOnPath returns a PATH on which "ca" is this test binary acting as the
// ca command, and the environment that makes it do so.
func caOnPath(t *testing.T) []string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(self, filepath.Join(bin, "ca")); err != nil {
		t.Fatal(err)
	}
	return append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), asCAEnv+"=1")
}

// evidenceDaemon is a dev daemon with a log that has issuances in two
// tiers, denials, an intermediate rotation and a drill, and the admin
// connection flags that reach it.
func evidenceDaemon(t *testing.T) (admin []string, dataDir string) {
	t.Helper()
	dataDir = t.TempDir()
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dev, cfg.DataDir = true, dataDir
	cfg.Server.Listen, cfg.Server.MetricsListen, cfg.Admin.Listen = "127.0.0.1:0", "", "127.0.0.1:0"
	cfg.Kubernetes.Enabled = new(bool)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d, _ := daemontest.Start(t, cfg)

	request := func(ns, sa string, extra ...string) (string, int) {
		t.Helper()
		tok, errs, code := runCA(t, "token", "--dev", "--data-dir", dataDir, "--namespace", ns, "--service-account", sa)
		if code != 0 {
			t.Fatalf("ca token: %s", errs)
		}
		tf := filepath.Join(t.TempDir(), "token")
		writeFile(t, tf, tok)
		out := t.TempDir()
		args := append([]string{"request", "--addr", d.Addr(), "--token-file", tf, "--root-cert", d.RootFile(),
			"--server-name", "localhost", "--out", out}, extra...)
		_, errs, code = runCA(t, args...)
		if code != 0 && !slices.Contains(extra, "--identity") {
			t.Fatalf("ca request for %s/%s: %s", ns, sa, errs)
		}
		return out, code
	}
	request("shop", "web")
	request("shop", "web", "--ttl", "2000h") // clamped to the service tier's 30 days
	request("shop", "api")
	request("istio-system", "ingressgateway", "--ttl", "720h") // privileged: clamped to 7 days
	if _, code := request("shop", "web", "--identity", "spiffe://cluster.local/ns/shop/sa/api"); code == 0 {
		t.Fatal("a CSR for another identity was signed")
	}
	badToken := filepath.Join(t.TempDir(), "token")
	writeFile(t, badToken, "not-a-token")
	if _, errs, code := runCA(t, "request", "--addr", d.Addr(), "--token-file", badToken, "--root-cert", d.RootFile(),
		"--server-name", "localhost", "--identity", "spiffe://cluster.local/ns/shop/sa/web", "--out", t.TempDir()); code == 0 {
		t.Fatalf("a forged token got a certificate: %s", errs)
	}
	adminDir, _ := request("transitca", "admin")
	admin = []string{"--addr", d.AdminAddr(), "--cert", filepath.Join(adminDir, "cert-chain.pem"),
		"--key", filepath.Join(adminDir, "key.pem"), "--root-cert", d.RootFile(), "--server-name", "localhost"}
	for _, args := range [][]string{{"rotate-intermediate", "--reason", "evidence test"}, {"drill"}} {
		if out, errs, code := runCA(t, append(append([]string{"admin"}, args...), admin...)...); code != 0 {
			t.Fatalf("ca admin %s: %s%s", args[0], out, errs)
		}
	}
	request("shop", "web") // under the new intermediate
	return admin, dataDir
}

// The evidence report, on a log with issuances in two tiers, denials, an
// intermediate rotation and a drill: every figure equals the one its own
// recomputing command (ca log export and jq, run as printed) computes from
// a backup of the log, and the figures are the ones the test caused.
func TestReportEvidence(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		t.Fatalf("the evidence report's commands need jq (make test-deps installs it): %v", err)
	}
	start := time.Now().Add(-time.Minute)
	admin, dataDir := evidenceDaemon(t)
	end := time.Now().Add(time.Minute)
	args := append([]string{"report", "evidence", "--from", start.Format(time.RFC3339), "--to", end.Format(time.RFC3339), "-o", "json"}, admin...)
	out, errs, code := runCA(t, args...)
	if code != 0 {
		t.Fatalf("ca report evidence exited %d: %s", code, errs)
	}
	var r evidenceReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	// The figures the test caused.
	if r.Issued.ByNamespace["shop"] != 4 || r.Issued.ByTier["privileged"] != 1 || r.Issued.ByTier["service"] < 5 {
		t.Errorf("issued by namespace %v, by tier %v; want 4 in shop (web three times, api), 1 privileged (istio-system), at least 5 service (shop's and the admin's)",
			r.Issued.ByNamespace, r.Issued.ByTier)
	}
	validity := map[string]*tierValidity{}
	for _, v := range r.Validity {
		validity[v.Tier] = v
	}
	if v := validity["service"]; v == nil || v.LongestSeconds != 30*24*3600 || !slices.Equal(v.MaxTTL, []string{"720h0m0s"}) || len(v.Over) != 0 || v.Unchecked != 0 {
		t.Errorf("service tier validity %+v; want the 30-day maximum granted and nothing over it", v)
	}
	if v := validity["privileged"]; v == nil || v.LongestSeconds != 7*24*3600 || !slices.Equal(v.MaxTTL, []string{"168h0m0s"}) || len(v.Over) != 0 {
		t.Errorf("privileged tier validity %+v; want the 7-day maximum granted", v)
	}
	for _, v := range r.Validity {
		if v.Unchecked != 0 {
			t.Errorf("tier %s: %d certificates not checked: the start entry does not record its policy", v.Tier, v.Unchecked)
		}
	}
	if r.Denials.Total != 2 || len(r.Denials.ByReason) != 2 {
		t.Errorf("denials %+v; want 2, for two reasons", r.Denials)
	}
	var actions []string
	for _, e := range r.Events {
		actions = append(actions, e.Action)
	}
	for _, want := range []string{"intermediate-activated", "intermediate-rotated", "drill"} {
		if !slices.Contains(actions, want) {
			t.Errorf("events %v lack %s", actions, want)
		}
	}
	if r.Drills.Total < 1 || r.Drills.NotChecked != r.Drills.Total || r.Drills.Passed != 0 {
		t.Errorf("drills %+v; want every drill of this dev CA not checked (its Vault step has no Vault to ask), none passed", r.Drills)
	}
	if len(r.Logs) != 1 || !r.Logs[0].Verified || !r.Logs[0].CoversPeriod || r.Logs[0].VerifierKey == "" {
		t.Errorf("logs %+v; want one, verified, with a checkpoint covering the period", r.Logs)
	}

	// The same report from a backup (--db) has the same figures.
	backup := filepath.Join(t.TempDir(), "backup.db")
	if out, errs, code := runCA(t, append([]string{"log", "backup", "--out", backup}, admin...)...); code != 0 {
		t.Fatalf("ca log backup: %s%s", out, errs)
	}
	out, errs, code = runCA(t, "report", "evidence", "--db", backup, "--verifier-key", filepath.Join(dataDir, "log-verifier.vkey"),
		"--from", start.Format(time.RFC3339), "--to", end.Format(time.RFC3339), "-o", "json")
	if code != 0 {
		t.Fatalf("ca report evidence --db exited %d: %s", code, errs)
	}
	var fromBackup evidenceReport
	if err := json.Unmarshal([]byte(out), &fromBackup); err != nil {
		t.Fatal(err)
	}
	figures := func(r evidenceReport) string {
		r.Source, r.GeneratedAt, r.CommandLine, r.Commands, r.Logs, r.Control.Source = "", "", "", nil, nil, ""
		// What names the log read, and how far it is verified (a backup
		// may end after its last checkpoint): not figures.
		r.Verification, r.CannotShow = "", nil
		for i := range r.Custody {
			r.Custody[i].Shard = ""
		}
		for i := range r.Privileged.Rules {
			r.Privileged.Rules[i].Shard = ""
		}
		for i := range r.Service.Events {
			r.Service.Events[i].Shard = ""
		}
		return canonicalJSON(t, r)
	}
	if a, b := figures(r), figures(fromBackup); a != b {
		t.Errorf("the report from the admin API and from a backup differ:\n%s\n%s", a, b)
	}

	runEvidenceCommands(t, &r)
}

// runEvidenceCommands runs every command of the report, as printed, in an
// empty directory, and checks that each recomputing command's output equals
// the report's figure, and that every figure has one.
func runEvidenceCommands(t *testing.T, r *evidenceReport) {
	t.Helper()
	dir := t.TempDir()
	env := caOnPath(t)
	checked := map[string]bool{}
	for _, c := range r.Commands {
		sh := exec.Command("bash", "-c", c.Command)
		sh.Dir, sh.Env = dir, env
		var stdout, stderr bytes.Buffer
		sh.Stdout, sh.Stderr = &stdout, &stderr
		if err := sh.Run(); err != nil {
			t.Fatalf("%s: %v\n%s%s", c.What, err, stdout.String(), stderr.String())
		}
		if c.Check == "" {
			continue
		}
		want := evidenceFigure(t, r, c.Check)
		var got any
		if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
			t.Fatalf("%s: output is not JSON: %v\n%s", c.What, err, stdout.String())
		}
		if g, w := canonicalJSON(t, got), canonicalJSON(t, want); g != w {
			t.Errorf("%s: the report says\n%s\nits command computes\n%s", c.Check, w, g)
		}
		checked[c.Check] = true
	}
	want := []string{checkByTier, checkByNamespace, checkByCluster, checkByBucket, checkLongest, checkOver, checkOverControl, checkDenials, checkEvents, checkDrills, checkService, checkLive}
	if r.Control.Tiers[privilegedTier] != "" {
		want = append(want, checkPrivileged)
	}
	for _, check := range want {
		if !checked[check] {
			t.Errorf("no command recomputes %s", check)
		}
	}
}

// evidenceFigure is the figure of the report that a command's output must
// equal, in the command's shape.
func evidenceFigure(t *testing.T, r *evidenceReport, check string) any {
	t.Helper()
	switch check {
	case checkByTier:
		return r.Issued.ByTier
	case checkByNamespace:
		return r.Issued.ByNamespace
	case checkByCluster:
		return r.Issued.ByCluster
	case checkByBucket:
		m := map[string]int{}
		for _, b := range r.Issued.ByBucket {
			if b.Total > 0 {
				m[b.Start] = b.Total
			}
		}
		return m
	case checkLongest:
		m := map[string]int64{}
		for _, v := range r.Validity {
			m[v.Tier] = v.LongestSeconds
		}
		return m
	case checkOver:
		serials := []string{}
		for _, v := range r.Validity {
			for _, o := range v.Over {
				serials = append(serials, o.Serial)
			}
		}
		return serials
	case checkDenials:
		return r.Denials.ByReason
	case checkEvents:
		pairs := [][]string{}
		for _, e := range r.Events {
			pairs = append(pairs, []string{e.Time, e.Action})
		}
		slices.SortFunc(pairs, func(a, b []string) int { return slices.Compare(a, b) })
		return pairs
	case checkDrills:
		return map[string]int{"total": r.Drills.Total, "passed": r.Drills.Passed, "not_checked": r.Drills.NotChecked}
	case checkOverControl:
		serials := []string{}
		for _, v := range r.Validity {
			for _, o := range v.OverControl {
				serials = append(serials, o.Serial)
			}
		}
		return serials
	case checkPrivileged:
		serials := []string{}
		for _, f := range r.Privileged.Flagged {
			if f.Over {
				serials = append(serials, f.Serial)
			}
		}
		return serials
	case checkService:
		pairs := [][]string{}
		for _, e := range r.Service.Events {
			pairs = append(pairs, []string{e.Time, e.Action})
		}
		slices.SortFunc(pairs, func(a, b []string) int { return slices.Compare(a, b) })
		return pairs
	case checkLive:
		m := map[string]map[string]int{}
		for _, n := range r.Live {
			m[n.Namespace] = n.ServiceAccounts
		}
		return m
	}
	t.Fatalf("unknown check %q", check)
	return nil
}

// canonicalJSON encodes v with sorted keys, as numbers and strings only.
func canonicalJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var generic any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	b, err = json.Marshal(generic)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The HTML report is one self-contained file: no script, nothing fetched;
// it renders in headless Chromium, which prints its figures from the DOM
// and takes a screenshot that is not blank.
func TestReportEvidenceRendersInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the evidence report's browser test needs Debian's chromium (make test-deps installs it): %v", err)
	}
	start := time.Now().Add(-time.Minute)
	admin, _ := evidenceDaemon(t)
	dir := t.TempDir()
	html := filepath.Join(dir, "evidence.html")
	args := append([]string{"report", "evidence", "--from", start.Format(time.RFC3339), "--out", html}, admin...)
	if out, errs, code := runCA(t, args...); code != 0 {
		t.Fatalf("ca report evidence exited %d: %s%s", code, out, errs)
	}
	page, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	lower := strings.ToLower(string(page))
	for _, forbidden := range []string{"<script", "src=\"http", "href=\"http", "@import", "url("} {
		if strings.Contains(lower, forbidden) {
			t.Errorf("the report contains %q: it must be self-contained and need no script", forbidden)
		}
	}
	if !strings.Contains(lower, "<svg") {
		t.Error("the report has no inline SVG chart")
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
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`id="issued-total"><b>[1-9][0-9]*<`), regexp.MustCompile(`class="card ok" id="over-total"><b>0<`),
		regexp.MustCompile(`class="card ok" id="log-verified"><b>verified<`), regexp.MustCompile(`<svg[^>]*>`),
		regexp.MustCompile(`<td>privileged</td><td class="n">1</td>`),
	} {
		if !want.MatchString(dom) {
			t.Errorf("the rendered DOM lacks %s:\n%s", want, dom)
		}
	}
	shot := filepath.Join(dir, "evidence.png")
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
	if out := os.Getenv("TRANSITCA_EVIDENCE_SCREENSHOT"); out != "" {
		b, _ := os.ReadFile(shot)
		_ = os.WriteFile(out, b, 0o644)
	}
}

// Replicas each keep a shard: the report reads every shard named by a
// repeated --addr, adds their figures up, shows each shard's checkpoint, and
// its commands back up and verify each shard and recompute the same
// figures from their merged export.
func TestReportEvidenceAcrossShards(t *testing.T) {
	env := vaulttest.New(t)
	t.Setenv("VAULT_ADDR", env.Server.Addr)
	t.Setenv("VAULT_TOKEN", env.Server.RootToken)
	minter, jwksFile := testMinter(t, t.TempDir())
	extra := `server: {listen: "127.0.0.1:0", metrics_listen: ""}
admin: {listen: "127.0.0.1:0", identities: [spiffe://cluster.local/ns/transitca/sa/admin]}
auth: {jwt: {issuer: https://issuer.test, jwks_file: ` + jwksFile + `}}
kubernetes: {enabled: false}
`
	if out, errs, code := runCA(t, "init", "--config", writeConfig(t, env, extra)); code != 0 {
		t.Fatalf("ca init: %s%s", out, errs)
	}
	start := time.Now().Add(-time.Minute)
	var addrs []string
	var root, adminDir string
	for i, shard := range []string{"transitca-0", "transitca-1"} {
		cfg, err := config.Load(writeConfig(t, env, extra+"log: {shard: "+shard+"}\n"))
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		d, _ := daemontest.Start(t, cfg)
		addrs, root = append(addrs, d.AdminAddr()), d.RootFile()
		for _, sa := range []string{"web", "api"}[:i+1] {
			tok, err := minter.Mint("shop", sa, []string{"istio-ca"}, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			tf := filepath.Join(t.TempDir(), "token")
			writeFile(t, tf, tok)
			out := t.TempDir()
			if o, errs, code := runCA(t, "request", "--addr", d.Addr(), "--token-file", tf, "--root-cert", root, "--server-name", "localhost", "--out", out); code != 0 {
				t.Fatalf("ca request: %s%s", o, errs)
			}
			if adminDir == "" {
				tok, _ := minter.Mint("transitca", "admin", []string{"istio-ca"}, time.Hour)
				writeFile(t, tf, tok)
				adminDir = t.TempDir()
				if o, errs, code := runCA(t, "request", "--addr", d.Addr(), "--token-file", tf, "--root-cert", root, "--server-name", "localhost", "--out", adminDir); code != 0 {
					t.Fatalf("ca request for the admin: %s%s", o, errs)
				}
			}
		}
	}
	args := []string{"report", "evidence", "--from", start.Format(time.RFC3339), "--to", time.Now().Add(time.Minute).Format(time.RFC3339), "-o", "json",
		"--cert", filepath.Join(adminDir, "cert-chain.pem"), "--key", filepath.Join(adminDir, "key.pem"), "--root-cert", root, "--server-name", "localhost"}
	for _, a := range addrs {
		args = append(args, "--addr", a)
	}
	out, errs, code := runCA(t, args...)
	if code != 0 {
		t.Fatalf("ca report evidence over two shards exited %d: %s", code, errs)
	}
	var r evidenceReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	// shop: web on the first shard; web and api on the second.
	if r.Issued.ByNamespace["shop"] != 3 || len(r.Logs) != 2 {
		t.Fatalf("issued by namespace %v from %d logs; want 3 in shop from 2", r.Issued.ByNamespace, len(r.Logs))
	}
	for _, lg := range r.Logs {
		if !lg.Verified || !lg.CoversPeriod || !strings.Contains(lg.Checkpoint, "/transitca-") {
			t.Errorf("shard %s: %+v; want verified, covered by its own shard's checkpoint", lg.Shard, lg)
		}
	}
	i := slices.IndexFunc(r.Live, func(n *liveNamespace) bool { return n.Namespace == "shop" })
	if i < 0 || r.Live[i].ServiceAccounts["web"] != 2 || r.Live[i].ServiceAccounts["api"] != 1 {
		t.Errorf("live at the end: shop is missing or not web twice (one from each shard) and api once: %s", canonicalJSON(t, r.Live))
	}
	runEvidenceCommands(t, &r)
}
