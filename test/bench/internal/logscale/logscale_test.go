package logscale

import (
	"context"
	"flag"
	"testing"
)

var (
	entries  = flag.Int("logscale.entries", 20_000, "size of the large log")
	appends  = flag.Int("logscale.appends", 2_000, "durable appends measured into each log")
	cacheDir = flag.String("logscale.cache", "", "directory of the cached large log (default: a temporary directory)")
	caBinary = flag.String("logscale.ca", "", `ca binary to run "ca log verify" with (default: store.Verify)`)
)

// TestRun runs the measurement on a small log, twice: the first run
// generates the log, the second takes it from the cache and appends to
// it. With -logscale.entries=10000000 -logscale.appends=200000 and a
// cache directory it is the full measurement.
func TestRun(t *testing.T) {
	opts := Options{CacheDir: *cacheDir, Entries: *entries, Appends: *appends, CABinary: *caBinary, TempDir: t.TempDir(), Logf: t.Logf}
	if opts.CacheDir == "" {
		opts.CacheDir = t.TempDir()
	}
	ctx := context.Background()
	runs := 2
	if *cacheDir != "" {
		runs = 1
	}
	for i := range runs {
		res, err := Run(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%+v", *res)
		t.Logf("new log: %.0f appends/s (p50 %v, p99 %v, %.0f entries/commit), %.0f bytes/entry",
			res.New.Rate, res.New.P50, res.New.P99, res.New.EntriesPerCommit, res.New.BytesPerEntry)
		t.Logf("%d-entry log: %.0f appends/s (p50 %v, p99 %v, %.0f entries/commit), %.0f bytes/entry; ratio %.2f",
			res.Large.Before, res.Large.Rate, res.Large.P50, res.Large.P99, res.Large.EntriesPerCommit, res.Large.BytesPerEntry, res.Ratio)
		t.Logf("%s of the large log: %v; generated: %v (%v)", res.VerifiedBy, res.VerifyTime, res.Generated, res.GenerateTime)
		if *cacheDir != "" {
			continue
		}
		if res.Generated != (i == 0) {
			t.Errorf("run %d: Generated = %v", i, res.Generated)
		}
		if want := uint64(opts.Entries + i*opts.Appends); res.Large.Before != want {
			t.Errorf("run %d: the large log held %d entries, want %d", i, res.Large.Before, want)
		}
		if res.New.Before != 0 || res.New.Appends != opts.Appends || res.Large.Appends != opts.Appends {
			t.Errorf("run %d: appended %d (from %d) and %d", i, res.New.Appends, res.New.Before, res.Large.Appends)
		}
		if res.New.Rate <= 0 || res.Large.Rate <= 0 || res.Ratio <= 0 || res.New.BytesPerEntry <= 0 ||
			res.Large.BytesPerEntry <= 0 || res.Large.EntriesPerCommit < 1 || res.VerifyTime <= 0 {
			t.Errorf("run %d: incomplete result %+v", i, *res)
		}
	}
}
