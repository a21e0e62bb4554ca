package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"

	"github.com/transparency-dev/merkle/proof"
	bolt "go.etcd.io/bbolt"

	"github.com/transitca/transitca/internal/atomicfile"
)

// Witness keeps the latest signed checkpoint of a log outside the log file,
// so that a log file rolled back as a whole (an old backup put back, the
// file replaced) is noticed: its tree is smaller than, or does not extend,
// the checkpoint the witness holds.
//
// NewFileWitness keeps it in a file (dev mode); issuer.VaultWitness keeps it
// in Vault KV with check-and-set.
type Witness interface {
	// Latest returns the checkpoint last published, or nil and no error
	// when none was.
	Latest(ctx context.Context) ([]byte, error)
	// Publish replaces prev (nil: nothing published yet) with next, only
	// if the witness still holds prev (compare-and-set); it fails
	// otherwise.
	Publish(ctx context.Context, prev, next []byte) error
}

// FileWitness is a Witness that keeps the checkpoint in one file, written
// atomically (temporary file, fsync, rename, fsync of the directory).
type FileWitness struct {
	path string
	mu   sync.Mutex
}

var _ Witness = (*FileWitness)(nil)

// NewFileWitness returns a witness kept in the file at path. Keep the file
// away from the log's backups: a witness restored with the log proves
// nothing.
func NewFileWitness(path string) *FileWitness { return &FileWitness{path: path} }

// Path returns the witness file's path.
func (w *FileWitness) Path() string { return w.path }

// Latest implements Witness.
func (w *FileWitness) Latest(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(w.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("witness file: %w", err)
	}
	return b, nil
}

// Publish implements Witness.
func (w *FileWitness) Publish(ctx context.Context, prev, next []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	cur, err := w.Latest(ctx)
	if err != nil {
		return err
	}
	if !bytes.Equal(cur, prev) {
		return fmt.Errorf("witness file %s holds another checkpoint than expected", w.path)
	}
	if err := atomicfile.Write(w.path, next, 0o600); err != nil {
		return fmt.Errorf("witness file: %w", err)
	}
	return nil
}

// checkAgainst checks that the committed tree extends the tree of the
// signed checkpoint (what says where it comes from): same origin, a size
// no larger than the log, and a consistency proof from it to the log.
func (l *Log) checkAgainst(signed []byte, what string) error {
	cp, verified, err := checkpointBody(signed, l.verifiers)
	switch {
	case err != nil && l.verifiers != nil:
		return fmt.Errorf("%s: %w: signature does not verify: %w", what, ErrInvalidCheckpoint, err)
	case err != nil:
		return fmt.Errorf("%s: %w: %w", what, ErrInvalidCheckpoint, err)
	case l.verifiers != nil && !verified:
		return fmt.Errorf("%s: %w: not signed by a known key", what, ErrInvalidCheckpoint)
	}
	if l.origin != "" && cp.Origin != l.origin {
		return fmt.Errorf("%s is of log %q, this log is %q: %w", what, cp.Origin, l.origin, ErrInvalidCheckpoint)
	}
	return l.view(func(tx *bolt.Tx) error {
		tree, err := readTree(tx)
		if err != nil {
			return err
		}
		n := tree.End()
		if cp.Size > n {
			return fmt.Errorf("log file %q: %w: it has %d entries, but %s says the log had %d: entries were lost (an older file or backup put back?)",
				l.path, ErrRolledBack, n, what, cp.Size)
		}
		p, err := consistencyProof(tx, cp.Size, n)
		if err == nil {
			err = proof.VerifyConsistency(hasher, cp.Size, n, p, cp.Root, rootOf(tree))
		}
		if err != nil {
			return fmt.Errorf("log file %q: %w: its %d entries do not extend the tree of size %d that %s commits to: %w",
				l.path, ErrRolledBack, n, cp.Size, what, err)
		}
		return nil
	})
}

const witnessWhat = "the checkpoint last published to the witness"

// openWitness reads the witness's checkpoint and checks the log against
// it. Open calls it before the Log is used.
func (l *Log) openWitness() error {
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.WitnessTimeout)
	defer cancel()
	latest, err := l.opts.Witness.Latest(ctx)
	if err != nil {
		return fmt.Errorf("log file %q: read the witness: %w", l.path, err)
	}
	if latest != nil {
		if err := l.checkAgainst(latest, witnessWhat); err != nil {
			return err
		}
	}
	l.witnessPrev, l.witnessKnown, l.witnessAtOpen = latest, true, latest
	return nil
}

// WitnessAtOpen returns the checkpoint the witness held when the log was
// opened (nil when it held none) and whether the log has a witness at
// all. A log with entries whose witness held nothing could not be checked
// for a rollback: the witness is new, or it was removed.
func (l *Log) WitnessAtOpen() (signed []byte, hasWitness bool) {
	return l.witnessAtOpen, l.opts.Witness != nil
}

// checkWitness checks the log against the witness's latest checkpoint, for
// Verify.
func (l *Log) checkWitness(ctx context.Context) error {
	if l.opts.Witness == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, l.opts.WitnessTimeout)
	defer cancel()
	latest, err := l.opts.Witness.Latest(ctx)
	if err != nil {
		return fmt.Errorf("read the witness: %w", err)
	}
	if latest == nil {
		return nil
	}
	return l.checkAgainst(latest, witnessWhat)
}

// witnessLags reports whether the witness may not hold the latest stored
// checkpoint. Callers hold cpMu.
func (l *Log) witnessLags() bool {
	return l.opts.Witness != nil && l.cpSigned != nil && (!l.witnessKnown || !bytes.Equal(l.witnessPrev, l.cpSigned))
}

// publishLocked publishes the latest stored checkpoint to the witness.
// Failures are logged and retried at the next checkpoint: they never fail
// or delay an append. Callers hold cpMu.
func (l *Log) publishLocked() {
	if !l.witnessLags() {
		return
	}
	w, signed := l.opts.Witness, l.cpSigned
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.WitnessTimeout)
	defer cancel()
	if !l.witnessKnown {
		latest, err := w.Latest(ctx)
		if err != nil {
			l.logger.ErrorContext(ctx, "issuance log: cannot read the witness; publishing at the next checkpoint",
				slog.String("path", l.path), slog.Any("error", err))
			return
		}
		if latest != nil {
			if err := l.checkAgainst(latest, witnessWhat); err != nil {
				l.logger.ErrorContext(ctx, "issuance log: the witness holds a checkpoint this log does not extend; not overwriting it",
					slog.String("path", l.path), slog.Any("error", err))
				return
			}
		}
		l.witnessPrev, l.witnessKnown = latest, true
		if bytes.Equal(latest, signed) {
			return
		}
	}
	if err := w.Publish(ctx, l.witnessPrev, signed); err != nil {
		// Read the witness again before the next attempt: the failed
		// write may have landed, or someone else wrote.
		l.witnessKnown = false
		l.logger.ErrorContext(ctx, "issuance log: publishing the checkpoint to the witness failed; retrying at the next checkpoint",
			slog.String("path", l.path), slog.Uint64("size", l.cpSize.Load()), slog.Any("error", err))
		return
	}
	l.witnessPrev = signed
}
