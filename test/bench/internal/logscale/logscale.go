// Package logscale measures how the issuance log scales: durable appends
// into a new log and into a log that already holds millions of entries
// (10,000,000 by default), bytes of file per entry, and the time "ca log
// verify" takes on the large log.
//
// The large log is generated once (NoSync, large group commits, through
// the store API, so that it is a genuine log that "ca log verify" accepts)
// and cached outside the source tree, under a name that carries the size
// and the store schema, so that a format change generates a new one. The
// appends of every run go into the cached log itself: it grows by
// Options.Appends entries per run and stays a valid log.
package logscale

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/transitca/transitca/store"
)

// Options of Run. Zero values take the defaults.
type Options struct {
	// CacheDir holds the large log (default
	// ${XDG_CACHE_HOME:-$HOME/.cache}/transitca).
	CacheDir string
	// Entries is the size of the large log (default 10,000,000).
	Entries int
	// Appends is the number of durable appends measured into each log
	// (default 200,000), from Writers concurrent writers (default 256).
	Appends int
	Writers int
	// CABinary is the path of the ca command, run as "ca log verify --db"
	// on the large log; empty: store.Verify in this process.
	CABinary string
	// TempDir holds the new log (default os.TempDir()); it is removed.
	TempDir string
	// Logf reports progress (nil: silent).
	Logf func(format string, args ...any)
}

// Appends is the measurement of durable appends into one log.
type Appends struct {
	Before  uint64  // entries in the log before
	Appends int     // entries appended
	Rate    float64 // appends per second
	P50     time.Duration
	P99     time.Duration
	// EntriesPerCommit is the mean group commit size.
	EntriesPerCommit float64
	// BytesPerEntry is the file size over the entries, after the appends.
	BytesPerEntry float64
}

// Result of Run.
type Result struct {
	LargeLog string // path of the cached large log
	// Generated is set when this run generated the large log, which took
	// GenerateTime.
	Generated    bool
	GenerateTime time.Duration
	New, Large   Appends
	// Ratio is Large.Rate / New.Rate.
	Ratio float64
	// VerifyTime is the time of the full check of the large log, by
	// VerifiedBy ("ca log verify" or "store.Verify").
	VerifyTime time.Duration
	VerifiedBy string
}

// cacheName is the file name of the large log: it changes with the size
// and the schema of the files this build writes.
func cacheName(entries int) string {
	size := fmt.Sprint(entries)
	switch {
	case entries%1_000_000 == 0:
		size = fmt.Sprintf("%dm", entries/1_000_000)
	case entries%1_000 == 0:
		size = fmt.Sprintf("%dk", entries/1_000)
	}
	return fmt.Sprintf("bench-log-%s-schema%d.db", size, store.SchemaVersion)
}

func (o *Options) fill() error {
	if o.CacheDir == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return fmt.Errorf("no cache directory: %w", err)
		}
		o.CacheDir = filepath.Join(dir, "transitca")
	}
	if o.Entries <= 0 {
		o.Entries = 10_000_000
	}
	if o.Appends <= 0 {
		o.Appends = 200_000
	}
	if o.Writers <= 0 {
		o.Writers = 256
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return nil
}

// Run measures the log at scale: it generates the large log if it is not
// cached, appends Options.Appends entries durably into a new log and into
// the large one, in alternating rounds so that both see the same load of
// the machine, and runs the full check of the large log.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	res := &Result{LargeLog: filepath.Join(opts.CacheDir, cacheName(opts.Entries))}
	start := time.Now()
	generated, err := ensureLargeLog(ctx, res.LargeLog, opts)
	if err != nil {
		return nil, err
	}
	if generated {
		res.Generated, res.GenerateTime = true, time.Since(start)
	}
	dir, err := os.MkdirTemp(opts.TempDir, "transitca-logscale-")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if err := measureAppends(ctx, filepath.Join(dir, "new.db"), res.LargeLog, opts, res); err != nil {
		return nil, err
	}
	if res.New.Rate > 0 {
		res.Ratio = res.Large.Rate / res.New.Rate
	}
	res.VerifyTime, res.VerifiedBy, err = verifyLog(ctx, res.LargeLog, opts)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// benchKey signs the checkpoints of the benchmark logs: a fixed key, so
// that the cached log verifies with the key file written next to it.
var benchKey = ed25519.NewKeyFromSeed([]byte("transitca log scale benchmark 32"))

const benchOrigin = "bench.transitca.example/log"

func signer() (*store.NoteSigner, error) { return store.NewNoteSigner(benchOrigin, benchKey) }

// writeVerifierKey writes the verifier key of benchKey to path.
func writeVerifierKey(path string) error {
	vkey, err := store.VerifierKey(benchOrigin, benchKey.Public().(ed25519.PublicKey))
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(vkey+"\n"), 0o600)
}

// ensureLargeLog generates the large log at path unless it is there.
func ensureLargeLog(ctx context.Context, path string, opts Options) (bool, error) {
	if _, err := os.Stat(path); err == nil {
		return false, writeVerifierKey(path + ".vkey")
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, err
	}
	opts.Logf("logscale: generating a %d-entry log at %s", opts.Entries, path)
	if err := generate(ctx, path, opts); err != nil {
		return false, fmt.Errorf("generate %s: %w", path, err)
	}
	return true, writeVerifierKey(path + ".vkey")
}
