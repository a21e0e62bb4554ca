package issuer_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
)

func TestStateStoresCompareAndSet(t *testing.T) {
	cases := []struct {
		name string
		// open returns a fresh store object on the same backing each call.
		open func(t *testing.T) func() issuer.StateStore
	}{
		{"memory", func(*testing.T) func() issuer.StateStore {
			m := issuer.NewMemoryState()
			return func() issuer.StateStore { return m }
		}},
		{"file", func(t *testing.T) func() issuer.StateStore {
			p := filepath.Join(t.TempDir(), "data", "rotation.json")
			return func() issuer.StateStore { return issuer.NewFileState(p) }
		}},
		{"vault", func(t *testing.T) func() issuer.StateStore {
			env := vaulttest.New(t)
			return func() issuer.StateStore {
				return issuer.NewVaultState(env.Client, env.KV, "transitca", 5*time.Second)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			open := tc.open(t)
			s := open()
			st, rev, err := s.Load(ctx)
			if st != nil || rev != 0 || err != nil {
				t.Fatalf("empty store: %+v, %d, %v", st, rev, err)
			}
			want := &issuer.RotationState{
				Schema: 1, ActiveRoot: 1, PreparedRoot: 2, PreparedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
				BundleRoots: []int{1, 2}, CompromisedRoots: []int{3},
				CompromisedIntermediates: []string{"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"},
			}
			if rev, err = s.Store(ctx, want, 0); err != nil || rev != 1 {
				t.Fatalf("first store: revision %d, %v", rev, err)
			}
			if _, err := open().Store(ctx, want, 0); !errors.Is(err, issuer.ErrStateConflict) {
				t.Fatalf("store at a stale revision: %v, want ErrStateConflict", err)
			}
			got, rev, err := open().Load(ctx)
			if err != nil || rev != 1 || got.Revision != 1 {
				t.Fatalf("load: revision %d (in state %d), %v", rev, got.Revision, err)
			}
			if got.ActiveRoot != 1 || got.PreparedRoot != 2 || !got.PreparedAt.Equal(want.PreparedAt) ||
				!slices.Equal(got.BundleRoots, want.BundleRoots) || !got.RootCompromised(3) ||
				!got.IntermediateCompromised(want.CompromisedIntermediates[0]) {
				t.Fatalf("loaded %+v, stored %+v", got, want)
			}
			got.PreparedRoot, got.PreparedAt, got.ActiveRoot = 0, time.Time{}, 2
			if rev, err = open().Store(ctx, got, 1); err != nil || rev != 2 {
				t.Fatalf("second store: revision %d, %v", rev, err)
			}
			// An invalid state is refused on load, not adopted.
			bad := *got
			bad.ActiveRoot = 3
			if err := bad.Validate(); err == nil {
				t.Fatal("a state whose active root is compromised and out of the bundle validates")
			}
		})
	}
}

func TestFileStateRefusesDamagedFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "rotation.json")
	if err := os.WriteFile(p, []byte(`{"schema":1,"revision":3,"active_root":2,"bundle_roots":[1]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := issuer.NewFileState(p).Load(context.Background()); err == nil {
		t.Fatal("loaded a state whose active root is not in the bundle")
	}
	if err := os.WriteFile(p, []byte(`{"schema":9,"revision":3,"active_root":1,"bundle_roots":[1]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := issuer.NewFileState(p).Load(context.Background()); err == nil {
		t.Fatal("loaded a state of a newer schema")
	}
}
