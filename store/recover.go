package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	bolt "go.etcd.io/bbolt"

	"github.com/transitca/transitca/internal/atomicfile"
)

// maxRecoverInterval caps the wait between two recovery attempts.
const maxRecoverInterval = time.Minute

// ActionRecovered is the Action of the admin entry a Log appends when it
// accepts appends again after a failed commit.
const ActionRecovered = "log-recovered"

// Failed returns a channel that is closed when a commit fails. From then
// on Append returns ErrFailed until the Log has recovered (Recovered), so a
// daemon that watches this channel can stop reporting itself as serving at
// once, instead of at the next request. After a recovery, Failed returns a
// new channel for the next failure. It is never closed on a healthy log,
// including after Close.
func (l *Log) Failed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failedC
}

// Recovered returns a channel that is closed when the Log accepts appends:
// at once on a healthy Log; after a failed commit, when the Log has
// reopened its file, checked it and committed its ActionRecovered entry.
func (l *Log) Recovered() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recoveredC
}

// Err returns the error of the failed commit that stopped the log (it
// wraps ErrFailed), or nil while the log accepts appends.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}

// fail stops appends after a failed commit and starts the recovery loop.
// It returns the error the Log reports (the first, if it had failed
// already).
func (l *Log) fail(err error) error {
	l.mu.Lock()
	if l.failed != nil {
		err = l.failed
		l.mu.Unlock()
		return err
	}
	l.failed = err
	close(l.failedC)
	l.recoveredC = make(chan struct{})
	l.mu.Unlock()
	// The failure outlives the append that met it: no caller's context applies.
	l.logger.ErrorContext(context.Background(), "issuance log: commit failed; appends are refused until the file accepts writes again",
		slog.String("path", l.path), slog.Any("error", err), slog.Duration("retry_in", l.opts.RecoverInterval))
	go l.recoverLoop()
	return err
}

// noFile is the error of a read or write while recovery has no handle on
// the file.
func (l *Log) noFile() error {
	return fmt.Errorf("log file %q could not be reopened after a failed commit: %w", l.path, ErrFailed)
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// recoverLoop tries to recover, waiting Options.RecoverInterval, then twice
// as long after each failed attempt, until it succeeds or the Log closes.
func (l *Log) recoverLoop() {
	// The loop outlives every request: no caller's context applies.
	ctx := context.Background()
	wait := l.opts.RecoverInterval
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-l.closing:
			return
		case <-t.C:
		}
		err := l.tryRecover(ctx)
		if err == nil || errors.Is(err, ErrClosed) {
			return
		}
		wait = min(2*wait, maxRecoverInterval)
		l.logger.WarnContext(ctx, "issuance log: still refusing appends",
			slog.String("path", l.path), slog.Any("error", err), slog.Duration("retry_in", wait))
		t.Reset(wait)
	}
}

// tryRecover reopens the file after a failed commit. After a failed
// commit bbolt's in-memory state (its freelist, the meta page it reads
// through the page cache) may not match what is on disk, so the handle is
// not reused: the file is closed and opened again, as Open would, and its
// whole tree is checked. The file must hold every acknowledged entry and
// extend the acknowledged tree (a failed commit may have left its entries
// on disk: committed, never acknowledged, as after a crash). Appends then
// resume with an ActionRecovered entry; its commit proves that the file
// takes writes again. On any failure the Log stays failed and keeps a
// read-only handle, so that reads go on.
func (l *Log) tryRecover(ctx context.Context) error {
	if err := probeWritable(l.path); err != nil {
		return err
	}
	l.dbMu.Lock()
	defer l.dbMu.Unlock()
	if l.isClosed() {
		return ErrClosed
	}
	l.mu.Lock()
	ack, ackRoot, cause := l.tree.End(), bytes.Clone(l.root), l.failed
	l.mu.Unlock()
	if l.db != nil {
		if err := l.db.Close(); err != nil {
			l.logger.WarnContext(ctx, "issuance log: close after a failed commit", slog.String("path", l.path), slog.Any("error", err))
		}
		l.db = nil
	}
	next, err := l.reopen(ack, ackRoot, cause)
	if err != nil {
		if ro, rerr := openBolt(l.path, &l.opts, true); rerr == nil {
			l.db = ro
		}
		return err
	}
	root := rootOf(next)
	l.mu.Lock()
	l.tree, l.root = next, root
	l.commits++
	l.failed = nil
	l.failedC = make(chan struct{})
	close(l.recoveredC)
	l.mu.Unlock()
	l.size.Store(next.End())
	l.logger.InfoContext(ctx, "issuance log: accepting appends again",
		slog.String("path", l.path), slog.Uint64("size", next.End()), slog.Uint64("acknowledged_before", ack))
	if l.opts.Signer != nil {
		select {
		case l.cpKick <- struct{}{}:
		default:
		}
	}
	return nil
}

// reopen opens the file for appending, checks it against the acknowledged
// tree and commits the recovery entry; it leaves l.db set on success only.
// The caller holds dbMu exclusively.
func (l *Log) reopen(ack uint64, ackRoot []byte, cause error) (*compact.Range, error) {
	if !writeRefused(cause) {
		if err := rewriteFile(l.path, &l.opts); err != nil {
			return nil, fmt.Errorf("rewrite the file after a failed commit: %w", err)
		}
	}
	db, err := openBolt(l.path, &l.opts, false)
	if err != nil {
		return nil, err
	}
	fresh, err := newLog(l.path, db, l.opts)
	if err == nil {
		err = fresh.checkOnOpen()
	}
	if err == nil {
		err = extendsAcknowledged(db, fresh.tree, ack, ackRoot)
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("reopen after a failed commit: %w", err)
	}
	e := &Entry{Kind: KindAdmin, Time: l.opts.Now().UTC(), Action: ActionRecovered, Actor: "transitca",
		Detail: truncate(fmt.Sprintf("appends resumed after a failed commit (%d entries were acknowledged, the file holds %d): %v",
			ack, fresh.tree.End(), cause), 1024)}
	req := l.newAppendReq(e)
	next := cloneRange(fresh.tree)
	l.db = db
	// The file may hold serials of a commit that failed after all.
	l.serials = nil
	if err := l.writeBatch([]*appendReq{req}, next); err != nil {
		l.db = nil
		_ = db.Close()
		return nil, fmt.Errorf("record the recovery: %w", err)
	}
	return next, nil
}

// extendsAcknowledged checks that the stored tree holds the acknowledged
// one: the same tree, or a larger one that extends it (by a consistency
// proof from the stored nodes, which checkOnOpen checked).
func extendsAcknowledged(db *bolt.DB, stored *compact.Range, ack uint64, ackRoot []byte) error {
	size := stored.End()
	switch {
	case size < ack:
		return fmt.Errorf("%w: the file holds %d entries, but %d were acknowledged", ErrRolledBack, size, ack)
	case size == ack:
		if !bytes.Equal(rootOf(stored), ackRoot) {
			return fmt.Errorf("%w: the file's tree of %d entries differs from the acknowledged one", ErrRolledBack, size)
		}
		return nil
	case ack == 0:
		return nil
	}
	return db.View(func(tx *bolt.Tx) error {
		p, err := consistencyProof(tx, ack, size)
		if err != nil {
			return err
		}
		if err := proof.VerifyConsistency(hasher, ack, size, p, ackRoot, rootOf(stored)); err != nil {
			return fmt.Errorf("%w: the file's %d entries do not extend the %d acknowledged: %w", ErrRolledBack, size, ack, err)
		}
		return nil
	})
}

// writeRefused reports whether a commit failed because a write or a
// resize of the file was refused (no space, a read-only or immutable
// file): then nothing of it reached the page cache but whole pages that
// the next fsync writes. After any other failure, notably a failed fsync,
// the page cache may hold pages the disk does not (Linux marks them clean
// after a failed writeback), so the file must be rewritten.
func writeRefused(cause error) bool {
	var pe *os.PathError
	return errors.As(cause, &pe) && (pe.Op == "write" || pe.Op == "truncate")
}

// rewriteFile replaces the file with a copy of its committed state, read
// through the page cache (bbolt's consistent snapshot, Tx.WriteTo), written
// to a new file, fsynced, and renamed over it: after a failed fsync this is
// the only way to make what the log reads durable again. It needs as much
// free space as the file takes.
func rewriteFile(path string, opts *Options) (err error) {
	ro, err := openBolt(path, opts, true)
	if err != nil {
		return err
	}
	tmp := path + ".rewrite"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		_ = ro.Close()
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	err = ro.View(func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(f)
		return err
	})
	if cerr := ro.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}

// probeWritable is a cheap check, before the file is reopened and
// re-read, that the disk takes writes again: the log file opens for
// writing, and a scratch file of probeBytes in its directory is written,
// fsynced and removed.
func probeWritable(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("log file %q is not writable: %w", path, err)
	}
	_ = f.Close()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".transitca-probe-*")
	if err != nil {
		return fmt.Errorf("log directory %q is not writable: %w", filepath.Dir(path), err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(make([]byte, probeBytes))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("log directory %q does not take writes: %w", filepath.Dir(path), err)
	}
	return nil
}

// probeBytes is what the probe writes: a few bbolt pages.
const probeBytes = 64 << 10

// truncate cuts s to at most n bytes of valid UTF-8.
func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "")
}
