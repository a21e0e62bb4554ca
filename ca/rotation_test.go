package ca_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }

// scheduleEnv is a dev authority on a settable clock, with a 600h root,
// and an admin service with rotation over a real log.
func scheduleEnv(t *testing.T, minOverlap time.Duration) (*issuer.Authority, *ca.AdminService, *store.Log, *clock) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	clk := &clock{now: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	keys, certs := issuer.NewLocalKeys(filepath.Join(dir, "keys")), issuer.NewLocalCerts(filepath.Join(dir, "keys"))
	opts := issuer.Options{
		RootTTL: 600 * time.Hour, IntermediateTTL: 48 * time.Hour, Now: clk.Now,
		State: issuer.NewFileState(filepath.Join(dir, "rotation.json")), Logger: slog.New(slog.DiscardHandler),
	}
	if _, err := issuer.Init(ctx, keys, certs, opts); err != nil {
		t.Fatal(err)
	}
	a, err := issuer.Open(ctx, keys, certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := store.Open(filepath.Join(dir, "log.db"), store.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	adm := ca.NewAdminService(l, "", slog.New(slog.DiscardHandler))
	adm.EnableRotation(ca.RotationOptions{Authority: a, Audit: ca.LogRecorder{Log: l}, MinOverlap: minOverlap, Now: clk.Now})
	return a, adm, l, clk
}

// The schedule prepares a root at prepare_at of the active root's
// lifetime left, activates it at activate_at once the overlap has passed,
// and records both steps in the log as the schedule's.
func TestRotationSchedule(t *testing.T) {
	ctx := context.Background()
	a, adm, l, clk := scheduleEnv(t, 24*time.Hour)
	root := a.Root()
	life := root.NotAfter.Sub(root.NotBefore)
	at := func(leftFraction float64) time.Time {
		return root.NotAfter.Add(-time.Duration(leftFraction * float64(life)))
	}
	step := func(when time.Time) string {
		t.Helper()
		clk.Set(when)
		did, err := adm.ScheduledStep(ctx, 0.5, 1.0/6)
		if err != nil {
			t.Fatalf("at %s: %v", when, err)
		}
		return did
	}

	if did := step(at(0.6)); did != "" {
		t.Fatalf("with 60%% of the root's life left: %q, want nothing", did)
	}
	if did := step(at(0.49)); !strings.Contains(did, "prepared root version 2") {
		t.Fatalf("with 49%% left: %q, want a prepared root", did)
	}
	if st := a.Status(); st.PreparedRoot != 2 || st.ActiveRoot != 1 || len(a.Roots()) != 2 {
		t.Fatalf("after the scheduled prepare: %+v", st)
	}
	if did := step(at(0.3)); did != "" {
		t.Fatalf("with 30%% left: %q, want nothing (activation waits for 1/6)", did)
	}
	if did := step(at(0.16)); !strings.Contains(did, "activated root version 2") {
		t.Fatalf("with 16%% left: %q, want the root activated", did)
	}
	if st := a.Status(); st.ActiveRoot != 2 || a.Intermediate().RootKeyVersion != 2 {
		t.Fatalf("after the scheduled activate: active %d, intermediate under v%d", st.ActiveRoot, a.Intermediate().RootKeyVersion)
	}
	kind := store.KindAdmin
	entries, _, err := l.Query(ctx, store.Query{Kind: &kind})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		if e.Actor == "transitca schedule" {
			got = append(got, e.Action)
		}
	}
	if strings.Join(got, ",") != "root-prepared,root-activated" {
		t.Fatalf("scheduled steps in the log: %v", got)
	}
}

// Activation on schedule still waits for the overlap: a prepared root
// that entered the bundle too recently is not activated.
func TestRotationScheduleWaitsForOverlap(t *testing.T) {
	ctx := context.Background()
	a, adm, _, clk := scheduleEnv(t, 500*time.Hour)
	root := a.Root()
	clk.Set(root.NotAfter.Add(-100 * time.Hour)) // a sixth of the life left: prepare now
	if _, err := adm.ScheduledStep(ctx, 0.5, 1.0/6); err != nil {
		t.Fatal(err)
	}
	clk.Set(root.NotAfter.Add(-50 * time.Hour))
	_, err := adm.ScheduledStep(ctx, 0.5, 1.0/6)
	if err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Fatalf("activation before the overlap: %v, want a refusal naming the overlap", err)
	}
	if st := a.Status(); st.ActiveRoot != 1 || st.PreparedRoot != 2 {
		t.Fatalf("a refused activation changed the state: %+v", st)
	}
}
