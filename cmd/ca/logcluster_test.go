package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/store"
)

// ca log query and export --cluster select the entries of one cluster.
func TestLogQueryCluster(t *testing.T) {
	db := filepath.Join(t.TempDir(), "issuance.db")
	l, err := store.Open(db, store.Options{Signer: testNoteSigner(t), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i, cluster := range []string{"east", "west", "east", "west", "west"} {
		e := &store.Entry{Kind: store.KindDenial, Time: time.Unix(1767225600+int64(i), 0), Code: "PermissionDenied", Reason: "test",
			SPIFFEID: "spiffe://cluster.local/ns/shop/sa/web", ClusterID: cluster}
		if _, err := l.Append(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for cmd, args := range map[string][]string{"query": {"--json"}, "export": nil} {
		out, errs, code := runCA(t, append([]string{"log", cmd, "--db", db, "--cluster", "west"}, args...)...)
		if code != 0 {
			t.Fatalf("ca log %s --cluster west: exit %d: %s", cmd, code, errs)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 {
			t.Fatalf("ca log %s --cluster west: %d entries, want 3:\n%s", cmd, len(lines), out)
		}
		for _, line := range lines {
			var x struct {
				ClusterID string `json:"cluster_id"`
			}
			if err := json.Unmarshal([]byte(line), &x); err != nil || x.ClusterID != "west" {
				t.Fatalf("ca log %s --cluster west: %q (%v)", cmd, line, err)
			}
		}
	}
}
