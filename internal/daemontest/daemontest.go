// Package daemontest runs a daemon in the background of a test.
package daemontest

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/daemon"
)

// Start starts a daemon with cfg (validated by the caller) and runs it
// until stop is called or the test ends. stop shuts it down, closes it (the
// final checkpoint is published then) and reports a failure of either as a
// test error; calling it again does nothing.
func Start(t testing.TB, cfg *config.Config) (d *daemon.Daemon, stop func()) {
	t.Helper()
	d, err := daemon.New(context.Background(), cfg, daemon.Options{Logger: slog.New(slog.DiscardHandler), Version: "test"})
	if err != nil {
		t.Fatalf("start the daemon: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			if err := d.Close(); err != nil {
				t.Errorf("Close (publishes the final checkpoint): %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return d, stop
}
