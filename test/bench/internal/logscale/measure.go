package logscale

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/transitca/transitca/store"
)

// generate writes a log of opts.Entries entries at path: through a
// temporary file, renamed once complete, so that an interrupted run leaves
// no partial cache behind.
func generate(ctx context.Context, path string, opts Options) error {
	tmp := path + ".partial"
	if err := os.Remove(tmp); err != nil && !os.IsNotExist(err) {
		return err
	}
	s, err := signer()
	if err != nil {
		return err
	}
	l, err := store.Open(tmp, store.Options{NoSync: true, Signer: s, CheckpointEvery: 1 << 40, CheckpointInterval: 24 * time.Hour})
	if err != nil {
		return err
	}
	g, err := newGenerator(1)
	if err != nil {
		_ = l.Close()
		return err
	}
	const chunk, checkpointEvery = 100_000, 1_000_000
	start := time.Now()
	for from := 0; from < opts.Entries; from += chunk {
		n := min(chunk, opts.Entries-from)
		if err := appendAll(ctx, l, g.entries(from, n), 4*chunk/100, nil); err != nil {
			_ = l.Close()
			return err
		}
		if (from+n)%checkpointEvery == 0 {
			if _, err := l.WriteCheckpoint(ctx); err != nil {
				_ = l.Close()
				return err
			}
			opts.Logf("logscale: %d entries in %v", from+n, time.Since(start).Round(time.Second))
		}
	}
	if err := l.Close(); err != nil {
		return err
	}
	if err := syncFile(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// entries returns entries [from, from+n) of the generator's log.
func (g *generator) entries(from, n int) []*store.Entry {
	out := make([]*store.Entry, n)
	for i := range out {
		out[i] = g.entry(from + i)
	}
	return out
}

// appendAll appends entries from the given number of concurrent writers;
// with lat, it records the latency of entry i in lat[i].
func appendAll(ctx context.Context, l *store.Log, entries []*store.Entry, writers int, lat []time.Duration) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range writers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(entries) {
					return
				}
				t0 := time.Now()
				if _, err := l.Append(ctx, entries[i]); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(len(entries)))
					return
				}
				if lat != nil {
					lat[i] = time.Since(t0)
				}
			}
		})
	}
	wg.Wait()
	return first
}

// target is one log appended to during the measurement.
type target struct {
	path    string
	log     *store.Log
	gen     *generator
	before  uint64
	commits uint64
	elapsed time.Duration
	lat     []time.Duration
}

func openTarget(path string) (*target, error) {
	s, err := signer()
	if err != nil {
		return nil, err
	}
	l, err := store.Open(path, store.Options{Signer: s})
	if err != nil {
		return nil, err
	}
	g, err := newGenerator(uint64(time.Now().UnixNano()))
	if err != nil {
		_ = l.Close()
		return nil, err
	}
	return &target{path: path, log: l, gen: g, before: l.Size()}, nil
}

// round appends n entries durably and accumulates the measurement.
func (t *target) round(ctx context.Context, n, writers int) error {
	entries := t.gen.entries(int(t.log.Size()), n)
	lat := make([]time.Duration, n)
	st0 := t.log.Stats()
	start := time.Now()
	if err := appendAll(ctx, t.log, entries, writers, lat); err != nil {
		return err
	}
	t.elapsed += time.Since(start)
	t.commits += t.log.Stats().Commits - st0.Commits
	t.lat = append(t.lat, lat...)
	return nil
}

// finish closes the log and returns the measurement.
func (t *target) finish() (Appends, error) {
	size := t.log.Size()
	if err := t.log.Close(); err != nil {
		return Appends{}, err
	}
	fi, err := os.Stat(t.path)
	if err != nil {
		return Appends{}, err
	}
	slices.Sort(t.lat)
	a := Appends{Before: t.before, Appends: len(t.lat), BytesPerEntry: float64(fi.Size()) / float64(max(size, 1))}
	if len(t.lat) > 0 {
		a.Rate = float64(len(t.lat)) / t.elapsed.Seconds()
		a.P50, a.P99 = t.lat[len(t.lat)/2], t.lat[len(t.lat)*99/100]
		a.EntriesPerCommit = float64(len(t.lat)) / float64(max(t.commits, 1))
	}
	return a, nil
}

// measureRounds is the number of alternating rounds of appends.
const measureRounds = 4

// measureAppends appends opts.Appends entries durably into a new log at
// newPath and into the large log, alternating in rounds.
func measureAppends(ctx context.Context, newPath, largePath string, opts Options, res *Result) error {
	opts.Logf("logscale: opening %s (Open checks the whole tree)", largePath)
	large, err := openTarget(largePath)
	if err != nil {
		return err
	}
	fresh, err := openTarget(newPath)
	if err != nil {
		_ = large.log.Close()
		return err
	}
	targets := []*target{fresh, large}
	for r := range measureRounds {
		n := opts.Appends / measureRounds
		if r == measureRounds-1 {
			n = opts.Appends - (measureRounds-1)*n
		}
		for _, t := range targets {
			if err := t.round(ctx, n, opts.Writers); err != nil {
				_ = fresh.log.Close()
				_ = large.log.Close()
				return fmt.Errorf("append to %s: %w", t.path, err)
			}
		}
		opts.Logf("logscale: round %d of %d done", r+1, measureRounds)
	}
	if res.New, err = fresh.finish(); err != nil {
		_ = large.log.Close()
		return err
	}
	res.Large, err = large.finish()
	return err
}

// verifyLog runs the full check of the log at path: "ca log verify" when
// opts.CABinary is set, else store.Verify.
func verifyLog(ctx context.Context, path string, opts Options) (time.Duration, string, error) {
	start := time.Now()
	if opts.CABinary != "" {
		cmd := exec.CommandContext(ctx, opts.CABinary, "log", "verify", "--db", path, "--verifier-key", path+".vkey") //nolint:gosec // the ca binary the benchmark driver built
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, "", fmt.Errorf("ca log verify: %w: %s", err, out)
		}
		return time.Since(start), "ca log verify", nil
	}
	vkey, err := os.ReadFile(path + ".vkey")
	if err != nil {
		return 0, "", err
	}
	v, err := note.NewVerifier(string(trimNewline(vkey)))
	if err != nil {
		return 0, "", err
	}
	l, err := store.Open(path, store.Options{ReadOnly: true, Verifiers: note.VerifierList(v)})
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = l.Close() }()
	if _, err := l.Verify(ctx, nil); err != nil {
		return 0, "", err
	}
	return time.Since(start), "store.Verify", nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
