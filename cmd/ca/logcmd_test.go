package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/daemon"
	"github.com/transitca/transitca/store"
	"github.com/transitca/transitca/store/storetest"
)

const testLogOrigin = "transitca.test/log"

// testLogKey signs the checkpoints of test logs.
var testLogKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize))

func testNoteSigner(t *testing.T) *store.NoteSigner {
	t.Helper()
	s, err := store.NewNoteSigner(testLogOrigin, testLogKey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeTestLog writes a closed log of n admin entries with a checkpoint at
// the end, and the verifier key file next to it.
func writeTestLog(t *testing.T, n int) (db, vkeyFile string) {
	t.Helper()
	dir := t.TempDir()
	db = filepath.Join(dir, "issuance.db")
	s := testNoteSigner(t)
	l, err := store.Open(db, store.Options{Signer: s, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range n {
		e := &store.Entry{Kind: store.KindAdmin, Time: time.Unix(1767225600+int64(i), 0), Action: "test", Actor: "alice", Detail: fmt.Sprintf("entry-%04d", i)}
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.WriteCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	vkeyFile = filepath.Join(dir, "log-verifier.vkey")
	if err := os.WriteFile(vkeyFile, []byte(s.VerifierKey()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return db, vkeyFile
}

func TestLogVerifyVerifierKey(t *testing.T) {
	db, good := writeTestLog(t, 5)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.vkey")
	os.WriteFile(garbage, []byte("this is not a key\n"), 0o644)
	otherSigner, err := store.NewNoteSigner(testLogOrigin, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.vkey")
	os.WriteFile(other, []byte(otherSigner.VerifierKey()+"\n"), 0o644)
	missing := filepath.Join(dir, "missing.vkey")

	cases := []struct {
		name string
		key  string
		code int
		want string // in stdout when code is 0, in stderr otherwise
	}{
		{"right key file", good, 0, "log verified: 5 entries"},
		{"right key text", testNoteSigner(t).VerifierKey(), 0, "log verified: 5 entries"},
		{"missing file", missing, 1, missing},
		{"garbage file", garbage, 1, garbage},
		{"another log's key", other, 1, "does not match the log's checkpoints"},
		{"no key", "", 0, "log structure verified, checkpoint signatures NOT checked (no --verifier-key): 5 entries"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"log", "verify", "--db", db}
			if tc.key != "" {
				args = append(args, "--verifier-key", tc.key)
			}
			out, errs, code := runCA(t, args...)
			got := errs
			if tc.code == 0 {
				got = out
			}
			if code != tc.code || !strings.Contains(got, tc.want) {
				t.Fatalf("exit %d\nstdout: %s\nstderr: %s\nwant exit %d and %q", code, out, errs, tc.code, tc.want)
			}
			if code != 0 && strings.Contains(out, "log verified") {
				t.Fatalf("failed but says verified: %s", out)
			}
			if tc.key == "" && strings.Contains(out, "log verified") {
				t.Fatalf("no signature was checked, but it says log verified: %s", out)
			}
			if tc.key == other && (strings.Contains(errs, "corrupt") || !strings.Contains(errs, otherSigner.VerifierKey()[:20])) {
				t.Fatalf("a wrong key is reported as corruption, or without the key named: %s", errs)
			}
		})
	}
}

// damagePageType returns a copy of the log file in which the bbolt leaf
// page holding entry seq (of writeTestLog) has an invalid page-type byte,
// as a bad sector would leave it.
func damagePageType(t *testing.T, db string, seq int) string {
	t.Helper()
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	const pageSize = 4096
	marker := []byte(fmt.Sprintf("entry-%04d", seq))
	n := 0
	// Freed pages may hold older copies of the entry: damage them all.
	for off := 2 * pageSize; off+pageSize <= len(b); off += pageSize {
		if b[off+8] == 0x02 && bytes.Contains(b[off:off+pageSize], marker) {
			b[off+8] = 0x40
			n++
		}
	}
	if n == 0 {
		t.Fatalf("no leaf page holds entry %d", seq)
	}
	out := filepath.Join(t.TempDir(), "damaged.db")
	if err := os.WriteFile(out, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLogCommandsOnDamagedPages(t *testing.T) {
	db, vkey := writeTestLog(t, 300)
	damaged := damagePageType(t, db, 150)
	backup := filepath.Join(t.TempDir(), "backup.db")
	cases := []struct {
		name string
		args []string
		file string // the error names it; default the damaged log
	}{
		{"verify", []string{"log", "verify", "--db", damaged, "--verifier-key", vkey}, ""},
		{"query", []string{"log", "query", "--db", damaged, "--limit", "1000"}, ""},
		{"export", []string{"log", "export", "--db", damaged}, ""},
		{"show", []string{"log", "show", "--db", damaged, "--seq", "150"}, ""},
		{"prove", []string{"log", "prove", "--db", damaged, "--seq", "150", "--verifier-key", vkey}, ""},
		{"backup", []string{"log", "backup", "--db", damaged, "--out", backup}, backup},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errs, code := runCA(t, tc.args...)
			file := tc.file
			if file == "" {
				file = damaged
			}
			if code != 1 || !strings.Contains(errs, file) || !strings.Contains(errs, "corrupt") {
				t.Fatalf("exit %d\nstdout: %.500s\nstderr: %.2000s\nwant exit 1 and an error naming %s as corrupt", code, out, errs, file)
			}
		})
	}
	if _, err := os.Stat(backup); err == nil {
		t.Fatal("backup of a damaged log was written")
	}
}

func TestLogBackupVerifiesCopy(t *testing.T) {
	db, vkey := writeTestLog(t, 300)
	backup := filepath.Join(t.TempDir(), "backup.db")
	out, errs, code := runCA(t, "log", "backup", "--db", db, "--out", backup, "--verifier-key", vkey)
	if code != 0 || !strings.Contains(out, "300 entries, verified") {
		t.Fatalf("exit %d: %s %s", code, out, errs)
	}
	out, errs, code = runCA(t, "log", "verify", "--db", backup, "--verifier-key", vkey)
	if code != 0 || !strings.Contains(out, "log verified: 300 entries") {
		t.Fatalf("verify of the backup: exit %d: %s %s", code, out, errs)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(backup), "*"))
	if len(left) != 1 {
		t.Fatalf("files left next to the backup: %v", left)
	}
}

func TestLogVerifyDamagedMeta(t *testing.T) {
	db, vkey := writeTestLog(t, 20)
	damaged, page, txid := storetest.DamageNewerMeta(t, db)
	out, errs, code := runCA(t, "log", "verify", "--db", damaged, "--verifier-key", vkey)
	for _, want := range []string{damaged, fmt.Sprintf("meta page %d", page), fmt.Sprintf("transaction %d", txid),
		fmt.Sprintf("ca log accept-damage --db %s --confirm-txid %d", damaged, txid)} {
		if code != 1 || !strings.Contains(errs, want) {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s\nwant exit 1 and %q", code, out, errs, want)
		}
	}

	_, errs, code = runCA(t, "log", "accept-damage", "--db", damaged, "--confirm-txid", fmt.Sprint(txid+1), "--actor", "alice")
	if code != 1 || !strings.Contains(errs, fmt.Sprint(txid)) {
		t.Fatalf("accept-damage with the wrong txid: exit %d: %s", code, errs)
	}
	// The command verify printed, run as printed, where $USER is not set
	// (a container, a service account's shell).
	_, errs, _ = runCA(t, "log", "verify", "--db", damaged, "--verifier-key", vkey)
	printed := regexp.MustCompile(`ca log accept-damage [^\n]*`).FindString(errs)
	sh := exec.Command("bash", "-c", printed)
	for _, kv := range caOnPath(t) {
		if !strings.HasPrefix(kv, "USER=") {
			sh.Env = append(sh.Env, kv)
		}
	}
	b, err := sh.CombinedOutput()
	if err != nil || !strings.Contains(string(b), "accepted") {
		t.Fatalf("%s: %v\n%s", printed, err, b)
	}
	out, errs, code = runCA(t, "log", "verify", "--db", damaged, "--verifier-key", vkey)
	if code != 0 {
		t.Fatalf("verify after accept-damage: exit %d: %s %s", code, out, errs)
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	out, errs, code = runCA(t, "log", "query", "--db", damaged, "--kind", "admin", "--newest", "--limit", "1", "--json")
	if code != 0 || !strings.Contains(out, `"action":"accept-damage"`) || !strings.Contains(out, `"actor":"`+me.Username+`"`) {
		t.Fatalf("no accept-damage entry by %s: exit %d: %s %s", me.Username, code, out, errs)
	}
	// The evidence report lists it.
	out, errs, code = runCA(t, "report", "evidence", "--db", damaged, "--verifier-key", vkey, "--from", "-1h", "-o", "json")
	if code != 0 {
		t.Fatalf("report: exit %d: %s", code, errs)
	}
	var r evidenceReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(r.Events, func(e evidenceEvent) bool { return e.Action == "accept-damage" }); i < 0 || r.Events[i].Actor != me.Username {
		t.Fatalf("the report's events %+v lack the accept-damage entry", r.Events)
	}
}

// appendTestLog appends n admin entries to a closed log and checkpoints
// them, publishing to w when it is not nil.
func appendTestLog(t *testing.T, db string, from, n int, w store.Witness) {
	t.Helper()
	l, err := store.Open(db, store.Options{Signer: testNoteSigner(t), Witness: w, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := from; i < from+n; i++ {
		e := &store.Entry{Kind: store.KindAdmin, Time: time.Unix(1767225600+int64(i), 0), Action: "test", Actor: "alice", Detail: fmt.Sprintf("entry-%04d", i)}
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.WriteCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// A log put back from an old backup verifies on its own; the checkpoint an
// auditor kept (--since), or the one the daemon published to its witness
// file, shows that entries are gone.
func TestLogVerifyRolledBack(t *testing.T) {
	db, vkey := writeTestLog(t, 20)
	old, _ := os.ReadFile(db)
	appendTestLog(t, db, 20, 10, store.NewFileWitness(filepath.Join(filepath.Dir(db), daemon.WitnessFileName)))
	saved := filepath.Join(t.TempDir(), "checkpoint-30")
	out, errs, code := runCA(t, "log", "checkpoint", "--db", db)
	if code != 0 {
		t.Fatalf("log checkpoint: exit %d: %s", code, errs)
	}
	os.WriteFile(saved, []byte(out), 0o600)

	out, errs, code = runCA(t, "log", "verify", "--db", db, "--verifier-key", vkey, "--since", saved)
	if code != 0 || !strings.Contains(out, "log verified: 30 entries") || !strings.Contains(out, "extends the checkpoint of size 30") {
		t.Fatalf("verify of the intact log: exit %d: %s %s", code, out, errs)
	}

	os.WriteFile(db, old, 0o600)                           // the backup of 20 entries put back
	elsewhere := filepath.Join(t.TempDir(), "issuance.db") // no witness file next to it
	os.WriteFile(elsewhere, old, 0o600)
	cases := []struct {
		name string
		db   string
		args []string
		want string
	}{
		{"auditor's checkpoint", elsewhere, []string{"--since", saved}, "it has 20 entries, but the checkpoint in " + saved + " says the log had 30"},
		{"witness file next to the log", db, nil, "it has 20 entries, but the checkpoint last published to the witness says the log had 30"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"log", "verify", "--db", tc.db, "--verifier-key", vkey}, tc.args...)
			out, errs, code := runCA(t, args...)
			if code != 1 || !strings.Contains(errs, tc.want) || strings.Contains(out, "log verified") {
				t.Fatalf("exit %d\nstdout: %s\nstderr: %s\nwant exit 1 and %q", code, out, errs, tc.want)
			}
		})
	}
}

// ca log prove --since a checkpoint of a longer log says that the log is
// shorter than the checkpoint, not that the query is invalid.
func TestLogProveSinceOnAShorterLog(t *testing.T) {
	db, vkey := writeTestLog(t, 20)
	old, _ := os.ReadFile(db)
	appendTestLog(t, db, 20, 10, nil)
	saved := filepath.Join(t.TempDir(), "checkpoint-30")
	out, errs, code := runCA(t, "log", "checkpoint", "--db", db)
	if code != 0 {
		t.Fatalf("log checkpoint: %s", errs)
	}
	os.WriteFile(saved, []byte(out), 0o600)
	if out, errs, code := runCA(t, "log", "prove", "--db", db, "--seq", "3", "--verifier-key", vkey, "--since", saved); code != 0 || !strings.Contains(out, "consistency proof verified") {
		t.Fatalf("prove on the log the checkpoint is of: exit %d: %s%s", code, out, errs)
	}
	short := filepath.Join(t.TempDir(), "issuance.db")
	os.WriteFile(short, old, 0o600)
	out, errs, code = runCA(t, "log", "prove", "--db", short, "--seq", "3", "--verifier-key", vkey, "--since", saved)
	want := "the log is shorter than the checkpoint in " + saved + ": its latest checkpoint has 20 entries, that one 30: it was rolled back, or it is not the log the checkpoint is of"
	if code != 1 || !strings.Contains(errs, want) || strings.Contains(out, "consistency proof verified") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s\nwant exit 1 and %q", code, out, errs, want)
	}
}
