package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/bits"
	"time"

	"github.com/transparency-dev/merkle/compact"
	bolt "go.etcd.io/bbolt"
)

// appendReq is one Append call waiting for the committer.
type appendReq struct {
	rec      []byte        // record bytes; the committer writes the seq into them
	serial   string        // of an issuance
	idx      []indexPut    // index records; the committer writes the seq into them
	validity time.Duration // NotAfter - NotBefore of an issuance
	seq      uint64        // set by the committer
	err      error         // set by the committer
	done     chan struct{}
}

// newAppendReq encodes a validated entry for the committer of l.
func (l *Log) newAppendReq(e *Entry) *appendReq {
	r := &appendReq{
		rec:  appendRecord(make([]byte, 0, e.encodedSizeHint()), e),
		idx:  indexPuts(e, 0, l.epochs, make([]indexPut, 0, numIndexes)),
		done: make(chan struct{}),
	}
	if e.Kind == KindIssuance {
		r.validity = e.NotAfter.Sub(e.NotBefore)
		r.serial = e.Serial
	}
	return r
}

// Append writes e to the log and returns its sequence number.
//
// Append MUST NOT return a nil error before the entry is committed to the
// file and fsynced; it returns only after that commit (which it shares with
// concurrent callers). If it returns an error, the entry was not written,
// except that after a failed commit (ErrFailed) the disk state is unknown.
// ctx is honored while waiting for a place in the commit queue; once queued,
// Append waits for the outcome of the commit, so that the caller always
// learns whether the entry was acknowledged.
//
// On success Append sets e.Seq, and e.Time to the stored time (Options.Now()
// if it was zero; in UTC, without a monotonic reading). The entry must
// pass validation (ErrInvalidEntry); an issuance whose serial is already in
// the log is refused with ErrDuplicateSerial.
func (l *Log) Append(ctx context.Context, e *Entry) (uint64, error) {
	if l.readOnly {
		return 0, ErrReadOnly
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c := *e
	c.Seq = 0
	if c.Time.IsZero() {
		c.Time = l.opts.Now()
	}
	c.Time = c.Time.UTC()
	if err := c.validate(); err != nil {
		return 0, err
	}
	req := l.newAppendReq(&c)

	l.closeMu.RLock()
	if l.closed {
		l.closeMu.RUnlock()
		return 0, ErrClosed
	}
	select {
	case l.reqs <- req:
		l.closeMu.RUnlock()
	case <-l.closing:
		l.closeMu.RUnlock()
		return 0, ErrClosed
	case <-ctx.Done():
		l.closeMu.RUnlock()
		return 0, ctx.Err()
	}
	<-req.done
	if req.err != nil {
		return 0, req.err
	}
	e.Seq = req.seq
	e.Time = c.Time
	return req.seq, nil
}

// committer drains the queue into group commits until Close closes it.
//
// Every caller of a batch waits for its commit, so with N concurrent
// writers the queue alternates between two groups of about N/2 (one
// committing, one queueing). After a batch of at least lingerMin entries
// the committer therefore waits up to lingerMax for the callers it has
// just acknowledged to come back, so that one commit (and one fsync)
// carries both groups. A lone writer never waits.
func (l *Log) committer() {
	defer close(l.committerDone)
	batch := make([]*appendReq, 0, maxBatchEntries)
	prev := 0
	var timer *time.Timer
	var lastEnd time.Time
	var lastDur time.Duration
	for {
		req, ok := <-l.reqs
		if !ok {
			return
		}
		// A request that was already waiting when the last commit ended
		// means the committer is the bottleneck: requests arrive faster
		// than commits end.
		busy := !lastEnd.IsZero() && time.Since(lastEnd) < 50*time.Microsecond
		batch = append(batch[:0], req)
		size := len(req.rec)
		queueOpen := true
		take := func(r *appendReq) {
			batch = append(batch, r)
			size += len(r.rec)
		}
	drain:
		for len(batch) < maxBatchEntries && size < maxBatchBytes {
			select {
			case r, ok := <-l.reqs:
				if !ok {
					queueOpen = false
					break drain
				}
				take(r)
			default:
				break drain
			}
		}
		var wait time.Duration
		want := maxBatchEntries
		switch {
		case prev >= lingerMin && len(batch) < min(prev+len(batch), maxBatchEntries):
			wait, want = lingerMax, min(prev+len(batch), maxBatchEntries)
		case busy:
			wait = min(lastDur, 2*time.Millisecond)
		}
		if queueOpen && wait > 0 {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
		linger:
			for len(batch) < want && size < maxBatchBytes {
				select {
				case r, ok := <-l.reqs:
					if !ok {
						break linger
					}
					take(r)
				case <-timer.C:
					break linger
				}
			}
			timer.Stop()
		}
		prev = len(batch)
		start := time.Now()
		l.commit(batch)
		lastEnd = time.Now()
		lastDur = lastEnd.Sub(start)
		for _, r := range batch {
			close(r.done)
		}
		clear(batch)
	}
}

// commit writes a batch in one bbolt transaction. Entries are numbered in
// the transaction, from the stored tree size. The in-memory tree changes
// only after the commit succeeded; on any failure every caller of the batch
// gets the error and the log stops accepting appends.
func (l *Log) commit(batch []*appendReq) {
	// Shared for the whole commit: recovery, which replaces the file
	// handle and adopts the tree, waits until the tree below is updated.
	l.dbMu.RLock()
	defer l.dbMu.RUnlock()
	l.mu.Lock()
	failed, cur := l.failed, l.tree
	l.mu.Unlock()
	if failed != nil {
		for _, r := range batch {
			r.err = fmt.Errorf("append to %q: %w", l.path, ErrFailed)
		}
		return
	}
	next := cloneRange(cur)
	if err := l.writeBatch(batch, next); err != nil {
		err = l.fail(fmt.Errorf("append to %q: commit failed: %w (%w)", l.path, err, ErrFailed))
		for _, r := range batch {
			if r.err == nil {
				r.err = err
			}
		}
		return
	}
	root := rootOf(next)
	l.mu.Lock()
	l.tree, l.root = next, root
	l.commits++
	l.commitSizes[min(bits.Len(uint(len(batch)-1)), CommitSizeBuckets-1)]++
	l.commitEntries += uint64(len(batch))
	l.mu.Unlock()
	l.size.Store(next.End())
	if l.opts.Signer != nil && next.End()-l.cpSize.Load() >= uint64(l.opts.CheckpointEvery) {
		select {
		case l.cpKick <- struct{}{}:
		default:
		}
	}
}

// writeBatch runs the write transaction of one batch and commits it; the
// caller holds dbMu.
// Duplicate serials are refused one by one, without failing the batch.
func (l *Log) writeBatch(batch []*appendReq, next *compact.Range) (err error) {
	if l.db == nil {
		return l.noFile()
	}
	tx, err := l.db.Begin(true)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	// Runs before the rollback above: a damaged page fails the commit
	// instead of crashing the daemon.
	defer recoverCorrupt(l.path, &err)
	entries, leaves, nodes := tx.Bucket(bucketEntries), tx.Bucket(bucketLeaves), tx.Bucket(bucketNodes)
	entries.FillPercent, leaves.FillPercent, nodes.FillPercent = 1, 1, 1
	var idx [numIndexes]*bolt.Bucket
	for i, name := range indexBuckets {
		idx[i] = tx.Bucket(name)
		idx[i].FillPercent = indexFillPercent(indexID(i), l.epochs)
	}

	// The stored state must be the state this Log committed last.
	stored, err := readTree(tx)
	if err != nil {
		return err
	}
	seq := next.End()
	if stored.End() != seq || entries.Sequence() != seq {
		return fmt.Errorf("%w: stored tree size %d (bucket sequence %d) differs from the committed size %d",
			ErrCorrupt, stored.End(), entries.Sequence(), seq)
	}

	var visitErr error
	visit := func(id compact.NodeID, hash []byte) {
		if storedNode(id.Level) && visitErr == nil {
			visitErr = nodes.Put(nodeKey(id.Level, id.Index), hash)
		}
	}
	for _, r := range batch {
		if r.serial != "" {
			taken, err := l.serialTaken(idx[idxSerial], entries, r.serial, seq)
			if err != nil {
				return err
			}
			if taken {
				r.err = fmt.Errorf("append: serial %s: %w", r.serial, ErrDuplicateSerial)
				continue
			}
		}
		binary.BigEndian.PutUint64(r.rec[seqOffset:], seq)
		leaf := leafHash(r.rec)
		key := seqKey(seq)
		if err := entries.Put(key, r.rec); err != nil {
			return err
		}
		if err := leaves.Put(key, leaf); err != nil {
			return err
		}
		if err := next.Append(leaf, visit); err != nil {
			return err
		}
		if visitErr != nil {
			return visitErr
		}
		for i := range r.idx {
			p := &r.idx[i]
			p.setSeq(seq)
			if err := idx[p.idx].Put(p.key, p.val); err != nil {
				return err
			}
		}
		if r.serial != "" && l.epochs {
			l.addSerial(r.serial)
		}
		r.seq = seq
		seq++
	}
	if err := entries.SetSequence(seq); err != nil {
		return err
	}
	if err := raiseMaxValidity(tx, batch); err != nil {
		return err
	}
	if err := tx.Bucket(bucketMeta).Put(metaKeyTree, encodeTreeState(next.End(), next.Hashes())); err != nil {
		return err
	}
	return tx.Commit()
}

// indexFillPercent is the bbolt fill percent of index bucket id.
//
// Keys of the time, issuer and NotAfter indexes end in a growing seq under
// few distinct prefixes (times grow with seq): new keys land at the end of
// the key space or of a few key ranges, and a page that splits keeps what
// it has, so schema 2 fills them. The namespace index has a few hundred
// such ranges: a full page at the end of one range splits badly, so it
// keeps 0.9 (measured). Serial and SPIFFE ID hashes land anywhere in their
// epoch: bbolt's default suits random keys better (measured), and the
// pages of past epochs are never split again. Schema 1 files keep the fill
// they were written with.
func indexFillPercent(id indexID, epochs bool) float64 {
	switch {
	case id == idxSerial, id == idxSPIFFEID:
		return bolt.DefaultFillPercent
	case id == idxNamespace, !epochs:
		return 0.9
	}
	return 1
}

// raiseMaxValidity raises the stored maximum validity to cover the
// committed issuances of the batch.
func raiseMaxValidity(tx *bolt.Tx, batch []*appendReq) error {
	stored := readMaxValidity(tx)
	longest := stored
	for _, r := range batch {
		if r.err == nil && r.validity > longest {
			longest = r.validity
		}
	}
	if longest == stored {
		return nil
	}
	return tx.Bucket(bucketMeta).Put(metaKeyMaxValidity, binary.BigEndian.AppendUint64(nil, uint64(longest)))
}

// readMaxValidity returns the stored maximum validity (0 if absent or
// malformed, which Verify reports).
func readMaxValidity(tx *bolt.Tx) time.Duration {
	v := tx.Bucket(bucketMeta).Get(metaKeyMaxValidity)
	if len(v) != 8 {
		return 0
	}
	return time.Duration(binary.BigEndian.Uint64(v))
}
