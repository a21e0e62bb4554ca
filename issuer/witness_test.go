package issuer_test

import (
	"context"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
)

// The witness in Vault KV replaces a checkpoint only when the writer saw
// the current one (check-and-set).
func TestVaultWitnessCompareAndSet(t *testing.T) {
	ctx := context.Background()
	env := vaulttest.New(t)
	w := issuer.NewVaultWitness(env.Client, env.KV, "ca-test", "transitca/test.example", 5*time.Second)
	a, b, c := []byte("log\n1\nAAAA\n\n— sig a\n"), []byte("log\n2\nBBBB\n\n— sig b\n"), []byte("log\n3\nCCCC\n\n— sig c\n")

	latest := func() string {
		t.Helper()
		got, err := w.Latest(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return string(got)
	}
	if got := latest(); got != "" {
		t.Fatalf("Latest of an empty witness = %q", got)
	}
	if err := w.Publish(ctx, nil, a); err != nil {
		t.Fatal(err)
	}
	if err := w.Publish(ctx, nil, b); err == nil {
		t.Fatal("Publish over a checkpoint the writer did not see succeeded")
	}
	if got := latest(); got != string(a) {
		t.Fatalf("Latest = %q, want %q", got, a)
	}
	if err := w.Publish(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	if got := latest(); got != string(b) {
		t.Fatalf("Latest = %q, want %q", got, b)
	}
	// Someone else writes behind the witness's back.
	if _, err := env.Client.KVv2(env.KV).Put(ctx, "ca-test/log-checkpoint/transitca/test.example", map[string]any{"checkpoint": string(c)}); err != nil {
		t.Fatal(err)
	}
	if err := w.Publish(ctx, b, a); err == nil {
		t.Fatal("Publish with a stale previous checkpoint succeeded")
	}
	if got := latest(); got != string(c) {
		t.Fatalf("Latest = %q, want %q", got, c)
	}
}
