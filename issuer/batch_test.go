package issuer_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/internal/vaulttest"
	"github.com/transitca/transitca/issuer"
)

// batcherGoroutines counts the goroutines running a signature batcher.
func batcherGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "issuer.(*signBatcher).run(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestTransitCloseEndsBatchers checks that the goroutines started to batch
// signatures (one set per key version and parameters) end at Close, and
// that signing afterwards fails with ErrClosed instead of waiting.
func TestTransitCloseEndsBatchers(t *testing.T) {
	env := vaulttest.New(t)
	ctx := context.Background()
	tr := issuer.NewTransit(env.Client, env.Transit, 5*time.Second)
	for _, k := range []struct {
		name string
		typ  issuer.KeyType
	}{{"ec", issuer.KeyECDSAP256}, {"ed", issuer.KeyEd25519}} {
		if _, err := tr.EnsureKey(ctx, k.name, k.typ); err != nil {
			t.Fatal(err)
		}
	}
	ec, err := tr.Signer(ctx, "ec", 0)
	if err != nil {
		t.Fatal(err)
	}
	ed, err := tr.Signer(ctx, "ed", 0)
	if err != nil {
		t.Fatal(err)
	}
	before := batcherGoroutines()
	d256, d384 := sha256.Sum256([]byte("x")), sha512.Sum384([]byte("x"))
	if _, err := ec.SignContext(ctx, d256[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	if _, err := ec.SignContext(ctx, d384[:], crypto.SHA384); err != nil {
		t.Fatal(err)
	}
	if during := batcherGoroutines(); during <= before {
		t.Fatalf("%d batcher goroutines after signing, %d before: the test sees none start", during, before)
	}

	tr.Close()
	if after := batcherGoroutines(); after != before {
		t.Fatalf("%d batcher goroutines after Close, want %d as before signing", after, before)
	}
	tr.Close() // a second Close does nothing

	for _, c := range []struct {
		name   string
		signer *issuer.TransitSigner
		digest []byte
		opts   crypto.SignerOpts
	}{
		{"batched", ec, d256[:], crypto.SHA256},
		{"ed25519", ed, []byte("checkpoint"), crypto.Hash(0)},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.signer.SignContext(ctx, c.digest, c.opts)
			if !errors.Is(err, issuer.ErrClosed) {
				t.Fatalf("sign after Close = %v, want ErrClosed", err)
			}
			if n := batcherGoroutines(); n != before {
				t.Fatalf("signing after Close started batchers: %d goroutines, want %d", n, before)
			}
		})
	}
}

// TestTransitSignStopsWaitingForAHungVault checks, with a Vault that
// accepts connections but never answers, that a caller whose context is
// cancelled gets its answer at once rather than at the engine's timeout,
// that the request to Vault is abandoned too (nobody is left to use its
// answer), and that Close ends a signature in flight.
func TestTransitSignStopsWaitingForAHungVault(t *testing.T) {
	srv := vaulttest.Own(t)
	env := vaulttest.NewOn(t, srv)
	ctx := context.Background()
	tr := issuer.NewTransit(env.Client, env.Transit, time.Minute)
	t.Cleanup(tr.Close)
	if _, err := tr.EnsureKey(ctx, "k", issuer.KeyECDSAP256); err != nil {
		t.Fatal(err)
	}
	s, err := tr.Signer(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	calls := make(chan error, 8)
	tr.SetObserver(func(_ string, _ time.Duration, err error) {
		select {
		case calls <- err:
		default:
		}
	})
	digest := sha256.Sum256([]byte("x"))
	srv.Pause(t)

	const prompt = 5 * time.Second // far below the engine's minute
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err = s.SignContext(cctx, digest[:], crypto.SHA256)
	if took := time.Since(start); !errors.Is(err, context.Canceled) || took > prompt {
		t.Fatalf("sign with a cancelled context = %v after %v, want context.Canceled within %v", err, took, prompt)
	}
	select {
	case err := <-calls:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the request to Vault ended with %v, want context.Canceled", err)
		}
	case <-time.After(prompt):
		t.Fatalf("the request to Vault is still waiting %v after its only caller gave up", prompt)
	}

	time.AfterFunc(200*time.Millisecond, tr.Close)
	start = time.Now()
	_, err = s.SignContext(ctx, digest[:], crypto.SHA256)
	if took := time.Since(start); !errors.Is(err, issuer.ErrClosed) || took > prompt {
		t.Fatalf("sign in flight at Close = %v after %v, want ErrClosed within %v", err, took, prompt)
	}
}
