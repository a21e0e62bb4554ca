// Package loop runs work periodically until a context ends: the shape of
// the daemon's background tasks (renewals, polls, scheduled drills).
package loop

import (
	"context"
	"time"
)

// Every calls f every d, the first time d from now, until ctx ends. A
// tick that comes while f runs is dropped, as time.Ticker drops it; f is
// not called again once ctx has ended. Every returns when ctx ends.
func Every(ctx context.Context, d time.Duration, f func(ctx context.Context)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if ctx.Err() != nil {
			return
		}
		f(ctx)
	}
}
