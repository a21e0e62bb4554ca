package main

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ca report sample picks the same issuances for the same seed (and others
// for another), proves each is in the log against the signed checkpoint,
// gives the facts a test of controls checks, and prints a command that
// draws the same serials from an export.
func TestReportSample(t *testing.T) {
	s := newScenarioCA(t, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.start("")
	for _, sa := range []string{"web", "api", "cart", "search", "auth", "pay", "ship", "mail"} {
		s.request("shop", sa)
	}
	s.stop()
	db := s.copyLog()
	sample := func(seed string, n int) *sampleReport {
		t.Helper()
		out, errs, code := runCA(t, "report", "sample", "--db", db, "--verifier-key", s.vkey(), "--from", from, "--n", itoa(n), "--seed", seed, "-o", "json")
		if code != 0 {
			t.Fatalf("ca report sample: %s", errs)
		}
		var r sampleReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		return &r
	}
	serials := func(r *sampleReport) []string {
		var out []string
		for _, s := range r.Samples {
			out = append(out, s.Entry.Serial)
		}
		return out
	}
	a, b, c := sample("audit-2026", 4), sample("audit-2026", 4), sample("another seed", 4)
	if len(a.Samples) != 4 || a.Population < 9 || !slices.Equal(serials(a), serials(b)) {
		t.Fatalf("two draws with one seed: %v and %v from %d", serials(a), serials(b), a.Population)
	}
	if slices.Equal(serials(a), serials(c)) {
		t.Errorf("another seed drew the same sample %v", serials(a))
	}
	for _, smp := range a.Samples {
		f := smp.Facts
		if !smp.Proof.Verified || len(smp.Proof.Hashes) == 0 || smp.Proof.Checkpoint == "" {
			t.Errorf("serial %s: proof %+v, want one verified against a signed checkpoint", smp.Entry.Serial, smp.Proof)
		}
		// The CA's own serving certificate is an issuance too: no
		// namespace, no cluster.
		if !strings.HasPrefix(f.Identity, "spiffe://cluster.local/") || f.Tier == "" || f.Lifetime == "" || f.AuthMethod == "(none)" ||
			strings.Contains(f.Identity, "/ns/shop/") && (f.Cluster != "Kubernetes" || f.AuthMethod != "jwt") {
			t.Errorf("serial %s: facts %+v", smp.Entry.Serial, f)
		}
	}
	if all := sample("audit-2026", 1000); len(all.Samples) != all.Population {
		t.Errorf("--n beyond the population: %d of %d", len(all.Samples), all.Population)
	}

	sh := exec.Command("bash", "-c", a.Recompute)
	sh.Env = caOnPath(t)
	out, err := sh.Output()
	if err != nil {
		t.Fatalf("%s: %v", a.Recompute, err)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, serials(a)) {
		t.Errorf("the recompute command draws %v, the sample is %v", got, serials(a))
	}

	text, errs, code := runCA(t, "report", "sample", "--db", db, "--verifier-key", s.vkey(), "--from", from, "--n", "2", "--seed", "audit-2026")
	if code != 0 || strings.Count(text, "verified against the signed checkpoint") != 2 || !strings.Contains(text, "token pod") || !strings.Contains(text, serials(a)[0]) {
		t.Errorf("text output: exit %d\n%s%s", code, text, errs)
	}
	if _, errs, code := runCA(t, "report", "sample", "--db", db, "--verifier-key", s.vkey(), "--from", from); code != 1 || !strings.Contains(errs, "--seed is required") {
		t.Errorf("without --seed: exit %d: %s", code, errs)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
