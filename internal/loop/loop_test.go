package loop

import (
	"context"
	"testing"
	"time"
)

func TestEvery(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan time.Time, 16)
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		Every(ctx, 10*time.Millisecond, func(context.Context) { calls <- time.Now() })
	}()
	for i := range 3 {
		select {
		case at := <-calls:
			if i == 0 && at.Sub(start) < 10*time.Millisecond {
				t.Fatalf("first call after %v, before the first interval", at.Sub(start))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("call %d did not come", i+1)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Every did not return after its context ended")
	}
}
