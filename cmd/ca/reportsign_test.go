package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/transitca/transitca/store"
)

// A report signed with the log's checkpoint key: ca report verify accepts
// it untouched, and refuses it with any byte changed, a byte added or
// removed, another report's signature, or another key. The signature can
// never pass for a checkpoint.
func TestReportSignature(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	s.request("shop", "web")
	s.stop()
	db := s.copyLog()
	dir := t.TempDir()
	reports := map[string]string{}
	for _, format := range []string{"html", "json"} {
		out := filepath.Join(dir, "report."+format)
		_, errs, code := runCA(t, "report", "evidence", "--db", db, "--verifier-key", s.vkey(), "--from", from, "-o", format,
			"--out", out, "--sign", "--dev", "--data-dir", s.dataDir)
		if code != 0 || !strings.Contains(errs, "signed: "+out+".sig") {
			t.Fatalf("report -o %s --sign: exit %d: %s", format, code, errs)
		}
		reports[format] = out
		stdout, errs, code := runCA(t, "report", "verify", "--verifier-key", s.vkey(), out)
		if code != 0 || !strings.Contains(stdout, "byte for byte the one signed") || !strings.Contains(stdout, "made from log transitca/cluster.local") {
			t.Fatalf("verify of the untouched %s report: exit %d: %s%s", format, code, stdout, errs)
		}
	}

	html := reports["html"]
	data, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := os.ReadFile(html + ".sig")
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := os.ReadFile(s.vkey())
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := checkReport(data, sig, v); err != nil {
		t.Fatalf("the untouched report: %v", err)
	}
	// Every byte, one at a time.
	changed := make([]byte, len(data))
	for i := range data {
		copy(changed, data)
		changed[i] ^= 0x01
		if _, err := checkReport(changed, sig, v); !errors.Is(err, ErrReportChanged) {
			t.Fatalf("byte %d of %d changed: %v, want ErrReportChanged", i, len(data), err)
		}
	}
	for name, b := range map[string][]byte{"a byte added": append(append([]byte{}, data...), '\n'), "the last byte removed": data[:len(data)-1]} {
		if _, err := checkReport(b, sig, v); !errors.Is(err, ErrReportChanged) {
			t.Errorf("%s: %v, want ErrReportChanged", name, err)
		}
	}

	// Through the command: one byte in the middle of the page.
	tampered := filepath.Join(t.TempDir(), "report.html")
	copy(changed, data)
	changed[len(changed)/2] ^= 0x20
	writeFile(t, tampered, string(changed))
	writeFile(t, tampered+".sig", string(sig))
	if out, errs, code := runCA(t, "report", "verify", "--verifier-key", s.vkey(), tampered); code != 1 || !strings.Contains(errs, "changed after it was signed") || strings.Contains(out, "verified") {
		t.Errorf("verify of a changed report: exit %d: %s%s", code, out, errs)
	}
	// Another report's signature, another key, no key.
	if _, errs, code := runCA(t, "report", "verify", "--verifier-key", s.vkey(), "--sig", reports["json"]+".sig", html); code != 1 || !strings.Contains(errs, "changed after it was signed") {
		t.Errorf("the JSON report's signature on the HTML report: exit %d: %s", code, errs)
	}
	other := newScenarioCA(t, false)
	other.start("")
	other.stop()
	if _, errs, code := runCA(t, "report", "verify", "--verifier-key", other.vkey(), html); code != 1 || !strings.Contains(errs, "signature does not verify") {
		t.Errorf("another CA's key: exit %d: %s", code, errs)
	}
	if _, errs, code := runCA(t, "report", "verify", html); code != 1 || !strings.Contains(errs, "--verifier-key is required") {
		t.Errorf("no key: exit %d: %s", code, errs)
	}
	if _, err := store.OpenCheckpoint(sig, v); err == nil {
		t.Error("the report's signature opens as a checkpoint")
	}
}
