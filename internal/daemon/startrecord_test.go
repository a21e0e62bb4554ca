package daemon

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// adminEntries reads the admin entries of the closed log at path, oldest
// first.
func adminEntries(t *testing.T, path string) []*store.Entry {
	t.Helper()
	l, err := store.Open(path, store.Options{ReadOnly: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	kind := store.KindAdmin
	es, _, err := l.Query(context.Background(), store.Query{Kind: &kind, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// startRecords returns the start records of entries, parsed.
func startRecords(t *testing.T, es []*store.Entry) []*ca.StartRecord {
	t.Helper()
	var out []*ca.StartRecord
	for _, e := range es {
		if e.Action != ca.StartAction {
			continue
		}
		r, ok, err := ca.ParseStartRecord(e.Detail)
		if err != nil || !ok {
			t.Fatalf("start entry %d: no record (ok=%v, %v): %s", e.Seq, ok, err, e.Detail)
		}
		out = append(out, r)
	}
	return out
}

// devDaemonConfig is a dev-mode configuration on loopback, with no
// Kubernetes, in dataDir.
func devDaemonConfig(t *testing.T, dataDir string, policy func(*config.Config)) *config.Config {
	t.Helper()
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dev, cfg.DataDir = true, dataDir
	cfg.Server.Listen, cfg.Server.MetricsListen, cfg.Admin.Listen = "127.0.0.1:0", "", "127.0.0.1:0"
	cfg.Kubernetes.Enabled = new(bool)
	if policy != nil {
		policy(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// runOnce starts a daemon with cfg and stops it cleanly.
func runOnce(t *testing.T, cfg *config.Config) {
	t.Helper()
	d, err := New(context.Background(), cfg, Options{Logger: slog.New(slog.DiscardHandler), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// Each start records its policy rules (which identities are privileged),
// its tiers, its admin identities, where each key is kept, and what the
// witness held; each clean stop records a stop entry.
func TestStartRecordsPolicyCustodyWitnessAndStop(t *testing.T) {
	dataDir := t.TempDir()
	cfg := devDaemonConfig(t, dataDir, func(c *config.Config) {
		c.Policy = []config.Rule{{Tier: "privileged", Namespaces: []string{"istio-system"}, ServiceAccounts: []string{"istiod", "*gateway*"}}}
	})
	runOnce(t, cfg)
	runOnce(t, cfg)

	es := adminEntries(t, cfg.LogPath())
	var actions []string
	for _, e := range es {
		if e.Action == ca.StartAction || e.Action == ca.StopAction {
			actions = append(actions, e.Action)
		}
	}
	if want := []string{"start", "stop", "start", "stop"}; len(actions) != 4 || actions[0] != want[0] || actions[1] != want[1] || actions[2] != want[2] || actions[3] != want[3] {
		t.Fatalf("start and stop entries %v, want %v", actions, want)
	}
	recs := startRecords(t, es)
	first, second := recs[0], recs[1]
	if len(first.Rules) != 1 || first.Rules[0].Tier != "privileged" || first.Rules[0].ServiceAccounts[1] != "*gateway*" {
		t.Errorf("rules recorded %+v, want the configured rule", first.Rules)
	}
	if first.Tiers["service"].MaxTTL != "720h0m0s" || first.Tiers["privileged"].MaxTTL != "168h0m0s" || first.DefaultTier != "service" {
		t.Errorf("tiers %+v default %q", first.Tiers, first.DefaultTier)
	}
	if !first.Dev || len(first.AdminIdentities) != 1 || first.AdminIdentities[0] != cfg.DevAdminIdentity() {
		t.Errorf("dev %v, admin identities %v", first.Dev, first.AdminIdentities)
	}
	where := map[string]string{}
	for _, k := range first.Custody {
		where[k.Role] = k.Where
	}
	if where["root"] != ca.KeyInLocalFile || where["checkpoint"] != ca.KeyInLocalFile || where["intermediate"] != ca.KeyInMemory {
		t.Errorf("key custody %+v: want the dev key files and the in-memory intermediate", first.Custody)
	}
	if first.Log.Witness != ca.WitnessEmpty || first.Log.Size != 0 {
		t.Errorf("first start: log %+v, want an empty log and an empty witness", first.Log)
	}
	if second.Log.Witness != ca.WitnessChecked || second.Log.Size == 0 || second.Log.WitnessSize != second.Log.Size {
		t.Errorf("second start: log %+v, want the witness checked at the size of the log", second.Log)
	}

	// The witness removed and the log started again: the start records
	// that nothing outside the file could check it.
	if err := os.Remove(dataDir + "/" + WitnessFileName); err != nil {
		t.Fatal(err)
	}
	runOnce(t, cfg)
	recs = startRecords(t, adminEntries(t, cfg.LogPath()))
	if last := recs[len(recs)-1]; last.Log.Witness != ca.WitnessEmpty || last.Log.Size == 0 {
		t.Errorf("start after the witness was removed: log %+v, want a non-empty log with an empty witness", last.Log)
	}
}

// With Vault, each start records Vault's own answer about the root, the
// intermediate (in-Vault mode) and the checkpoint key.
func TestStartRecordsVaultKeyCustody(t *testing.T) {
	env := vaulttest.New(t)
	t.Setenv("VAULT_ADDR", env.Server.Addr)
	t.Setenv("VAULT_TOKEN", env.Server.RootToken)
	cfg, err := config.Load(writeConfig(t, env, `server: {listen: "127.0.0.1:0", metrics_listen: ""}
admin: {listen: "127.0.0.1:0", identities: [spiffe://cluster.local/ns/transitca/sa/admin]}
kubernetes: {enabled: false}
ca: {intermediate_mode: vault}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	b := openBackend(t, cfg, slog.New(slog.DiscardHandler))
	if _, err := issuer.Init(context.Background(), b.Keys, b.Certs, cfg.IssuerOptions()); err != nil {
		t.Fatal(err)
	}
	// Deletion allowed on the root, as an operator might have set it.
	if _, err := env.Client.Logical().Write(env.Transit+"/keys/"+cfg.CA.RootKey+"/config", map[string]any{"deletion_allowed": true}); err != nil {
		t.Fatal(err)
	}
	runOnce(t, cfg)
	recs := startRecords(t, adminEntries(t, cfg.LogPath()))
	got := map[string]ca.KeyCustody{}
	for _, k := range recs[0].Custody {
		got[k.Role] = k
	}
	for _, role := range []string{"root", "intermediate", "checkpoint"} {
		k := got[role]
		if k.Where != ca.KeyInVault || k.Mount != env.Transit || k.Error != "" || k.LatestVersion < 1 || k.Type == "" || k.Exportable || k.AllowPlaintextBackup {
			t.Errorf("%s key custody %+v: want Vault's answer, not exportable", role, k)
		}
	}
	if !got["root"].DeletionAllowed || got["checkpoint"].DeletionAllowed {
		t.Errorf("deletion_allowed: root %v, checkpoint %v; want true (set above) and false", got["root"].DeletionAllowed, got["checkpoint"].DeletionAllowed)
	}
}

// A dev-mode drill cannot ask Vault about the root key: its entry lists
// that step as not checked (not as passed), and a key-custody entry
// before it records the keys as local files.
func TestDevDrillRecordsNotCheckedAndCustody(t *testing.T) {
	cfg := devConfig(t, t.TempDir())
	d := startDaemon(t, cfg)
	adm := d.admin(t, d.request(t, "transitca", "admin"))
	if _, err := adm.Drill(context.Background(), &adminv1.DrillRequest{}); err != nil {
		t.Fatal(err)
	}
	d.stop(t)
	var drill, custody *store.Entry
	for _, e := range adminEntries(t, cfg.LogPath()) {
		switch e.Action {
		case "drill":
			drill = e
		case ca.KeyCustodyAction:
			custody = e
		}
	}
	if drill == nil || !strings.Contains(drill.Detail, "not_checked=vault-root-key") || !strings.Contains(drill.Detail, "vault-root-key NOT CHECKED") {
		t.Fatalf("drill entry %+v: want the Vault step listed as not checked", drill)
	}
	if custody == nil || custody.Seq > drill.Seq {
		t.Fatalf("no key-custody entry before the drill entry: %+v", custody)
	}
	rec, err := ca.ParseKeyCustodyRecord(custody.Detail)
	if err != nil || rec.At != "drill" || len(rec.Keys) != 3 || rec.Keys[0].Role != "root" || rec.Keys[0].Where != ca.KeyInLocalFile {
		t.Fatalf("key-custody record %+v, %v", rec, err)
	}
}
