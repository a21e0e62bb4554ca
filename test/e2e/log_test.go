package e2e

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"istio.io/istio/security/pkg/pki/util"
)

// exported is the JSON line "ca log export" writes per entry.
type exported struct {
	Shard             string `json:"shard"`
	Seq               uint64 `json:"seq"`
	Kind              string `json:"kind"`
	Time              string `json:"time"`
	Serial            string `json:"serial"`
	SPIFFEID          string `json:"spiffe_id"`
	Namespace         string `json:"namespace"`
	ServiceAccount    string `json:"service_account"`
	Tier              string `json:"tier"`
	RequestedTTL      string `json:"requested_ttl"`
	GrantedTTL        string `json:"granted_ttl"`
	NotBefore         string `json:"not_before"`
	NotAfter          string `json:"not_after"`
	IssuerFingerprint string `json:"issuer_fingerprint"`
	RootKeyVersion    int64  `json:"root_key_version"`
	CallerID          string `json:"caller_id"`
	AuthMethod        string `json:"auth_method"`
	CallerSubject     string `json:"caller_subject"`
	ClusterID         string `json:"cluster_id"`
	Code              string `json:"code"`
	Reason            string `json:"reason"`
	Action            string `json:"action"`
	Actor             string `json:"actor"`
	Detail            string `json:"detail"`
	CertificateDER    string `json:"certificate_der"`
}

func runCA(t *testing.T, s *caServer, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := s.command(args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func runCAStdout(t *testing.T, s *caServer, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := s.command(args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, errb.String())
	}
	return out.String(), err
}

func exportLog(t *testing.T, s *caServer, db string) []exported {
	t.Helper()
	out, err := runCA(t, s, "log", "export", "--db", db, "--verifier-key", filepath.Join(s.DataDir, "log-verifier.vkey"))
	if err != nil {
		t.Fatalf("ca log export: %v\n%s", err, out)
	}
	var entries []exported
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var e exported
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("export line %q: %v", line, err)
		}
		entries = append(entries, e)
	}
	return entries
}

// TestLogRecordsEveryIssuanceAndDenial drives the daemon with Istio's
// client, then reads the log as the security team would: through the admin
// API while the daemon runs, and from the file once it has stopped.
func TestLogRecordsEveryIssuanceAndDenial(t *testing.T) {
	adminAddr := freeAddr(t)
	s := startCA(t, "vault", fmt.Sprintf("admin:\n  listen: %s\n  identities: [spiffe://cluster.local/ns/security/sa/auditor]\n", adminAddr))

	// The auditor's client certificate comes from the CA like any other.
	auditorKey, auditorCert := t.TempDir()+"/key.pem", t.TempDir()+"/chain.pem"
	tok := s.tokenFile(t, "security", "auditor")
	if out, err := runCA(t, s, "request", "--addr", s.Addr, "--server-name", "localhost", "--token-file", tok,
		"--root-cert", s.RootFile, "--out", filepath.Dir(auditorKey)); err != nil {
		t.Fatalf("auditor certificate: %v\n%s", err, out)
	}
	if err := os.Rename(filepath.Join(filepath.Dir(auditorKey), "cert-chain.pem"), auditorCert); err != nil {
		t.Fatal(err)
	}
	admin := []string{"--addr", adminAddr, "--server-name", "localhost", "--cert", auditorCert, "--key", auditorKey, "--root-cert", s.RootFile}

	type issued struct {
		ns, sa string
		leaf   *x509.Certificate
	}
	var got []issued
	var oldCheckpoint string
	for i, opts := range []util.CertOptions{{ECSigAlg: util.EcdsaSigAlg}, {RSAKeySize: 2048}, {ECSigAlg: util.EcdsaSigAlg}} {
		ns, sa := "shop", fmt.Sprintf("svc-%d", i)
		opts.Host = spiffeID(ns, sa)
		csr, _, err := util.GenCSR(opts)
		if err != nil {
			t.Fatal(err)
		}
		chain, err := istioClient(t, s, s.tokenFile(t, ns, sa)).CSRSign(csr, 3600*48)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, issued{ns, sa, parsePEMChain(t, chain)[0]})
		if i == 0 {
			// Keep a checkpoint, as an auditor would, to check later that
			// the log only grew.
			cp, err := runCAStdout(t, s, append([]string{"log", "checkpoint"}, admin...)...)
			if err != nil {
				t.Fatalf("ca log checkpoint: %v", err)
			}
			oldCheckpoint = filepath.Join(t.TempDir(), "old.checkpoint")
			if err := os.WriteFile(oldCheckpoint, []byte(cp), 0o600); err != nil {
				t.Fatal(err)
			}
			// The daemon holds the log file: a second opener is refused.
			out, err := runCA(t, s, "log", "verify", "--db", filepath.Join(s.DataDir, "issuance.db"))
			if err == nil || !strings.Contains(out, "in use by another process") {
				t.Fatalf("reading the live log file: %v\n%s", err, out)
			}
		}
	}
	// Two denials: another workload's identity, and no credentials.
	csr, _, _ := util.GenCSR(util.CertOptions{Host: spiffeID("payments", "api"), ECSigAlg: util.EcdsaSigAlg})
	if _, err := istioClient(t, s, s.tokenFile(t, "shop", "svc-0")).CSRSign(csr, 3600); err == nil {
		t.Fatal("a CSR for another identity was signed")
	}
	if _, err := istioClient(t, s, "").CSRSign(csr, 3600); err == nil {
		t.Fatal("a request without credentials was signed")
	}

	out, err := runCA(t, s, append([]string{"log", "query", "--namespace", "shop", "--kind", "issuance", "--json"}, admin...)...)
	if err != nil {
		t.Fatalf("ca log query over the admin API: %v\n%s", err, out)
	}
	if n := strings.Count(out, `"kind":"issuance"`); n != len(got) {
		t.Fatalf("admin query for namespace shop found %d issuances, want %d:\n%s", n, len(got), out)
	}
	out, err = runCA(t, s, append([]string{"log", "verify"}, admin...)...)
	if err != nil || !regexp.MustCompile(`log verified: \d+ entries, root [0-9a-f]{64}`).MatchString(out) {
		t.Fatalf("ca log verify over the admin API: %v\n%s", err, out)
	}
	// A workload identity is not an admin.
	wl := t.TempDir()
	if out, err := runCA(t, s, "request", "--addr", s.Addr, "--server-name", "localhost", "--token-file", s.tokenFile(t, "shop", "svc-0"),
		"--root-cert", s.RootFile, "--out", wl); err != nil {
		t.Fatal(out)
	}
	out, err = runCA(t, s, "log", "query", "--addr", adminAddr, "--server-name", "localhost", "--cert", wl+"/cert-chain.pem", "--key", wl+"/key.pem", "--root-cert", s.RootFile)
	if err == nil || !strings.Contains(out, "PermissionDenied") || !strings.Contains(out, "is not an admin identity") {
		t.Fatalf("a workload read the log: %v\n%s", err, out)
	}

	// Prove inclusion of an issued certificate, offline, with the verifier key.
	leafFile := filepath.Join(t.TempDir(), "leaf.pem")
	os.WriteFile(leafFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: got[1].leaf.Raw}), 0o600)
	vkey := filepath.Join(s.DataDir, "log-verifier.vkey")
	out, err = runCA(t, s, append([]string{"log", "prove", "--certificate", leafFile, "--verifier-key", vkey, "--since", oldCheckpoint}, admin...)...)
	if err != nil || !strings.Contains(out, "inclusion proof verified") || !strings.Contains(out, "consistency proof verified") {
		t.Fatalf("ca log prove: %v\n%s", err, out)
	}
	// A certificate that is not in the log cannot be proven.
	stranger := filepath.Join(t.TempDir(), "stranger.pem")
	os.WriteFile(stranger, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: selfSigned(t).Raw}), 0o600)
	out, err = runCA(t, s, append([]string{"log", "prove", "--certificate", stranger, "--verifier-key", vkey}, admin...)...)
	if err == nil || !strings.Contains(out, "NotFound") {
		t.Fatalf("proving a certificate that is not in the log: %v\n%s", err, out)
	}

	backup := filepath.Join(t.TempDir(), "backup.db")
	if out, err := runCA(t, s, append([]string{"log", "backup", "--out", backup}, admin...)...); err != nil {
		t.Fatalf("ca log backup: %v\n%s", err, out)
	}
	s.stop()
	db := filepath.Join(s.DataDir, "issuance.db")
	entries := exportLog(t, s, db)
	bySerial := map[string]exported{}
	var denials []exported
	for _, e := range entries {
		switch e.Kind {
		case "issuance":
			if _, dup := bySerial[e.Serial]; dup {
				t.Fatalf("serial %s logged twice", e.Serial)
			}
			bySerial[e.Serial] = e
		case "denial":
			if !strings.Contains(e.Detail, "class=admin_") { // refused admin calls are checked below
				denials = append(denials, e)
			}
		}
	}
	for _, g := range got {
		e, ok := bySerial[g.leaf.SerialNumber.Text(16)]
		if !ok {
			t.Fatalf("issued certificate %x is not in the log", g.leaf.SerialNumber)
		}
		der, _ := base64.StdEncoding.DecodeString(e.CertificateDER)
		if !bytes.Equal(der, g.leaf.Raw) {
			t.Fatalf("log holds another certificate for serial %s", e.Serial)
		}
		want := spiffeID(g.ns, g.sa)
		if e.SPIFFEID != want || e.Namespace != g.ns || e.ServiceAccount != g.sa || e.Tier != "service" ||
			e.RequestedTTL != "48h0m0s" || e.GrantedTTL == "" || e.NotBefore == "" || e.NotAfter == "" ||
			len(e.IssuerFingerprint) != 64 || e.RootKeyVersion != 1 || e.CallerID != want || e.AuthMethod != "jwt" ||
			e.CallerSubject == "" || e.ClusterID != "Kubernetes" || e.Time == "" {
			t.Fatalf("incomplete issuance entry: %+v", e)
		}
	}
	// Two refused CSRs.
	if len(denials) != 2 {
		t.Fatalf("log holds %d denials, want 2: %+v", len(denials), denials)
	}
	var sawOther, sawNoCreds bool
	for _, d := range denials {
		sawOther = sawOther || (d.Code == "PermissionDenied" && strings.Contains(d.Reason, "payments") && d.SPIFFEID == spiffeID("shop", "svc-0"))
		sawNoCreds = sawNoCreds || (d.Code == "Unauthenticated" && strings.Contains(d.Reason, "no credentials"))
	}
	if !sawOther || !sawNoCreds {
		t.Fatalf("denials not recorded as expected: %+v", denials)
	}
	// Every admin call is recorded with its caller, method and outcome:
	// the auditor's allowed queries as admin entries, the workload's
	// refused one as a denial.
	var actions []string
	var sawAdminRefused, sawAdminQuery bool
	for _, e := range entries {
		if e.Kind == "admin" {
			actions = append(actions, e.Action)
		}
		if e.Kind == "denial" && strings.Contains(e.Detail, "class=admin_permission_denied") {
			sawAdminRefused = sawAdminRefused || (e.SPIFFEID == spiffeID("shop", "svc-0") && e.Code == "PermissionDenied" &&
				strings.Contains(e.Reason, "admin call QueryLog refused") && strings.Contains(e.Reason, "is not an admin identity"))
		}
		if e.Kind == "admin" && e.Action == "admin-call" {
			sawAdminQuery = sawAdminQuery || (strings.HasPrefix(e.Actor, "spiffe://cluster.local/ns/security/sa/auditor") &&
				strings.Contains(e.Detail, "method=QueryLog") && strings.Contains(e.Detail, `"namespace":"shop"`) && strings.Contains(e.Detail, "outcome=ok"))
		}
	}
	if !sawAdminRefused || !sawAdminQuery {
		t.Fatalf("admin calls not recorded as expected (refused %v, query %v)", sawAdminRefused, sawAdminQuery)
	}
	if !strings.Contains(strings.Join(actions, ","), "intermediate-activated") || !strings.Contains(strings.Join(actions, ","), "start") {
		t.Fatalf("admin entries: %v", actions)
	}

	// A backup taken through the admin API before the stop verifies on its own.
	out, err = runCA(t, s, "log", "verify", "--db", backup, "--verifier-key", vkey)
	if err != nil || !strings.Contains(out, "log verified") {
		t.Fatalf("ca log verify of the backup: %v\n%s", err, out)
	}
	out, err = runCA(t, s, "log", "verify", "--db", db, "--verifier-key", vkey)
	if err != nil || !strings.Contains(out, fmt.Sprintf("log verified: %d entries, root ", len(entries))) {
		t.Fatalf("ca log verify --db: %v\n%s", err, out)
	}
	tamperTests(t, s, db, vkey, len(entries))
}

// tamperTests changes copies of a stopped daemon's log behind its back, the
// four ways an insider might, and checks that "ca log verify" fails and
// names the first bad index, and that the daemon refuses to start on it.
func tamperTests(t *testing.T, s *caServer, db, vkey string, size int) {
	key := func(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }
	entries := []byte("entries")
	cases := []struct {
		name  string
		index int
		edit  func(b *bolt.Bucket) error
	}{
		{"entry changed", 2, func(b *bolt.Bucket) error {
			v := bytes.Clone(b.Get(key(2)))
			v[len(v)-1] ^= 0x01
			return b.Put(key(2), v)
		}},
		{"entry removed", 3, func(b *bolt.Bucket) error { return b.Delete(key(3)) }},
		{"entries reordered", 1, func(b *bolt.Bucket) error {
			a, c := bytes.Clone(b.Get(key(1))), bytes.Clone(b.Get(key(4)))
			if err := b.Put(key(1), c); err != nil {
				return err
			}
			return b.Put(key(4), a)
		}},
		{"entry appended", size, func(b *bolt.Bucket) error {
			return b.Put(key(uint64(size)), bytes.Clone(b.Get(key(uint64(size-1)))))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cp := filepath.Join(t.TempDir(), "copy.db")
			copyFile(t, db, cp)
			bdb, err := bolt.Open(cp, 0o600, &bolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := bdb.Update(func(tx *bolt.Tx) error { return tc.edit(tx.Bucket(entries)) }); err != nil {
				t.Fatal(err)
			}
			bdb.Close()
			before, _ := os.ReadFile(cp)
			out, err := runCA(t, s, "log", "verify", "--db", cp, "--verifier-key", vkey)
			if err == nil {
				t.Fatalf("ca log verify passed a tampered log:\n%s", out)
			}
			if !strings.Contains(out, fmt.Sprintf("index %d", tc.index)) {
				t.Fatalf("ca log verify does not name index %d:\n%s", tc.index, out)
			}
			// The daemon refuses to start on it, and says where.
			cfg := filepath.Join(t.TempDir(), "tampered.yaml")
			orig, _ := os.ReadFile(s.Config)
			conf := string(orig) + "log:\n  path: " + cp + "\n"
			if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err = runCA(t, s, "serve", "--config", cfg)
			if err == nil || !strings.Contains(out, cp) || !strings.Contains(out, "index") {
				t.Fatalf("ca serve on a tampered log: %v\n%s", err, out)
			}
			after, _ := os.ReadFile(cp)
			if !bytes.Equal(before, after) {
				t.Fatal("ca log verify or ca serve changed the file it refused")
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
}

// selfSigned is a certificate transitca never issued.
func selfSigned(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}
