package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/store"
)

// writeShardLog writes a closed log of admin entries at the given seconds
// after a fixed instant, signed by the test key under origin.
func writeShardLog(t *testing.T, origin string, seconds []int) string {
	t.Helper()
	db := filepath.Join(t.TempDir(), "issuance.db")
	s := testNoteSigner(t)
	l, err := store.Open(db, store.Options{Signer: s, Origin: origin, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, sec := range seconds {
		e := &store.Entry{Kind: store.KindAdmin, Time: time.Unix(1767225600+int64(sec), 0), Action: "test", Actor: origin, Detail: fmt.Sprintf("t=%d", sec)}
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
	return db
}

// decodeLines decodes JSON lines of exported entries.
func decodeLines(t *testing.T, out string) []exportEntry {
	t.Helper()
	var es []exportEntry
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var e exportEntry
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("%v in %s", err, out)
		}
		es = append(es, e)
	}
	return es
}

// details returns each entry's detail, prefixed by its shard's index in
// dbs: the time order of the merge and where each entry is from.
func details(es []exportEntry, dbs ...string) []string {
	var out []string
	for _, e := range es {
		out = append(out, fmt.Sprintf("%d:%s", slices.Index(dbs, e.Shard), e.Detail))
	}
	return out
}

// Three shards with interleaved times: export and every page of query
// merge them in time order, each entry once and labelled with its shard;
// verify checks each and that they are distinct logs.
func TestLogShardsMerge(t *testing.T) {
	a := writeShardLog(t, "transitca.test/log/a", []int{0, 3, 6, 9, 10})
	b := writeShardLog(t, "transitca.test/log/b", []int{1, 4, 7})
	c := writeShardLog(t, "transitca.test/log/c", []int{2, 5, 8, 11, 12, 13})
	vkey := testNoteSigner(t).VerifierKey()
	var want []string
	for sec, shard := range []int{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 2, 2, 2} {
		want = append(want, fmt.Sprintf("%d:t=%d", shard, sec))
	}

	out, errs, code := runCA(t, "log", "export", "--db", a, "--db", b, "--db", c)
	if code != 0 || !strings.Contains(errs, "exported 14 entries") {
		t.Fatalf("export: exit %d: %s", code, errs)
	}
	if got := details(decodeLines(t, out), a, b, c); !slices.Equal(got, want) {
		t.Fatalf("export order:\n got %v\nwant %v", got, want)
	}

	for _, newest := range []bool{false, true} {
		t.Run(fmt.Sprintf("query newest=%v", newest), func(t *testing.T) {
			args := []string{"log", "query", "--json", "--limit", "4", "--db", a, "--db", b, "--db", c}
			if newest {
				args = append(args, "--newest")
			}
			var got []string
			token := ""
			for page := 0; ; page++ {
				pargs := args
				if token != "" {
					pargs = append(slices.Clone(args), "--page-token", token)
				}
				out, errs, code := runCA(t, pargs...)
				if code != 0 {
					t.Fatalf("page %d: exit %d: %s", page, code, errs)
				}
				es := decodeLines(t, out)
				if len(es) > 4 || page > 4 {
					t.Fatalf("page %d: %d entries", page, len(es))
				}
				got = append(got, details(es, a, b, c)...)
				m := regexp.MustCompile(`more: --page-token (\S+)`).FindStringSubmatch(errs)
				if m == nil {
					break
				}
				token = m[1]
			}
			w := slices.Clone(want)
			if newest {
				slices.Reverse(w)
			}
			if !slices.Equal(got, w) {
				t.Fatalf("pages of 4:\n got %v\nwant %v", got, w)
			}
		})
	}

	out, errs, code = runCA(t, "log", "verify", "--db", a, "--db", b, "--db", c, "--verifier-key", vkey)
	if code != 0 || strings.Count(out, "log verified") != 3 || !strings.Contains(out, "all 3 logs verified") {
		t.Fatalf("verify: exit %d\n%s\n%s", code, out, errs)
	}
	out, _, code = runCA(t, "log", "verify", "--db", a, "--db", b, "--db", a, "--verifier-key", vkey)
	if code != 1 || !strings.Contains(out, `the same log as `+a+` (origin "transitca.test/log/a")`) {
		t.Fatalf("verify of a log named twice: exit %d\n%s", code, out)
	}
	// A damaged shard fails verify, and the others are still checked.
	big, _ := writeTestLog(t, 300)
	damaged := damagePageType(t, big, 150)
	out, errs, code = runCA(t, "log", "verify", "--db", a, "--db", damaged, "--db", c, "--verifier-key", vkey)
	if code != 1 || strings.Count(out, "log verified") != 2 || !strings.Contains(errs, "1 of 3 logs do not verify: "+damaged) {
		t.Fatalf("verify with a damaged shard: exit %d\n%s\n%s", code, out, errs)
	}

	// Commands that read one log refuse several.
	for _, args := range [][]string{
		{"log", "show", "--db", a, "--db", b, "--seq", "0"},
		{"log", "checkpoint", "--db", a, "--db", b},
		{"log", "verify", "--db", a, "--db", b, "--since", "x"},
		{"log", "query", "--db", a, "--db", b, "--page-token", "abc"},
	} {
		if _, errs, code := runCA(t, args...); code != 1 || !strings.Contains(errs, "one log") {
			t.Errorf("%v: exit %d: %s", args, code, errs)
		}
	}
}

// dns:///NAME:PORT stands for every address NAME resolves to, each
// verified under NAME; other addresses are taken as they are.
func TestLogShardTargets(t *testing.T) {
	f := &logFlags{addrs: []string{"10.0.0.7:15015", "dns:///localhost:15015", "10.0.0.7:15015"}}
	ts, err := f.targets(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) < 2 || ts[0] != (target{addr: "10.0.0.7:15015"}) || !slices.Contains(ts[1:], target{addr: "127.0.0.1:15015", serverName: "localhost"}) {
		t.Fatalf("targets: %+v", ts)
	}
	if _, err := (&logFlags{addrs: []string{"dns:///localhost"}}).targets(context.Background()); err == nil || !strings.Contains(err.Error(), "dns:///localhost") {
		t.Fatalf("a name without a port: %v", err)
	}

	// A headless Service's name given as a plain address would read one
	// replica's shard: refused, naming the fix.
	lookupHost = func(_ context.Context, host string) ([]string, error) {
		switch host {
		case "transitca-headless.istio-system.svc":
			return []string{"10.0.0.12", "10.0.0.11"}, nil
		case "transitca.istio-system.svc": // a dual-stack ClusterIP
			return []string{"10.96.0.10", "fd00::10"}, nil
		}
		return net.DefaultResolver.LookupHost(context.Background(), host)
	}
	t.Cleanup(func() { lookupHost = net.DefaultResolver.LookupHost })
	_, err = (&logFlags{addrs: []string{"transitca-headless.istio-system.svc:15015"}}).targets(context.Background())
	if err == nil || !strings.Contains(err.Error(), "--addr dns:///transitca-headless.istio-system.svc:15015") {
		t.Fatalf("a name with several addresses: %v", err)
	}
	if _, err := (&logFlags{addrs: []string{"transitca.istio-system.svc:15015"}}).targets(context.Background()); err != nil {
		t.Fatalf("a dual-stack Service name: %v", err)
	}
	ts, err = (&logFlags{addrs: []string{"dns:///transitca-headless.istio-system.svc:15015"}}).targets(context.Background())
	want := []target{{"10.0.0.11:15015", "transitca-headless.istio-system.svc"}, {"10.0.0.12:15015", "transitca-headless.istio-system.svc"}}
	if err != nil || !slices.Equal(ts, want) {
		t.Fatalf("targets: %+v, %v; want %+v", ts, err, want)
	}
}

// The rollout report counts the live certificates of every replica's
// shard: a service account whose certificates all came from one replica
// is not reported as holding none.
func TestReportRolloutReadsEveryShard(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	now := time.Now()
	a := rolloutLog(t, now, []rolloutCert{{"shop", "web", -time.Hour, time.Hour}}, [2]string{"shop", "x"})
	b := rolloutLog(t, now, []rolloutCert{{"shop", "api", -time.Hour, time.Hour}, {"shop", "web", -time.Hour, 2 * time.Hour}}, [2]string{"shop", "x"})
	out, errs, code := runCA(t, "report", "rollout", "--db", a, "--db", b, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var r rolloutReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	live := map[string]int{}
	for _, n := range r.Namespaces {
		for _, sa := range n.ServiceAccounts {
			live[n.Namespace+"/"+sa.Name] = sa.LiveCertificates
		}
	}
	if live["shop/web"] != 2 || live["shop/api"] != 1 {
		t.Fatalf("live certificates %v, want shop/web 2 (one per shard) and shop/api 1", live)
	}
}
