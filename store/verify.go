package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"
)

// VerifyResult summarizes a successful Verify.
type VerifyResult struct {
	// Size is the number of entries, all checked.
	Size uint64
	// Root is the recomputed root hash of the tree of Size entries.
	Root []byte
	// Issuances, Denials and Admin count the entries by kind.
	Issuances, Denials, Admin uint64
	// Checkpoints is the number of stored checkpoints whose size and root
	// hash were checked against the entries (and consecutive pairs with a
	// consistency proof).
	Checkpoints int
	// SignaturesVerified is how many of them had their signature checked
	// with Options.Verifiers (0 when the log was opened without them).
	SignaturesVerified int
	// IndexKeys is the number of index records checked.
	IndexKeys uint64
}

// Verify checks the whole log in one consistent snapshot: every record
// decodes and carries its own index, sequence numbers are contiguous, every
// stored leaf hash and stored subtree hash matches the entries, the
// recomputed root matches the stored tree state and every stored
// checkpoint (signature, size, root, and a consistency proof between
// consecutive checkpoints), and every index record points to an entry that
// has the indexed value, and every entry is indexed. progress, if not nil,
// is called with the number of entries checked so far.
//
// On the first problem it returns a *VerifyError (wrapping ErrCorrupt) that
// names the lowest bad index. Verify holds a read transaction for its whole
// run; appends continue meanwhile.
func (l *Log) Verify(ctx context.Context, progress func(done uint64)) (res VerifyResult, err error) {
	if err := l.readable(ctx); err != nil {
		return VerifyResult{}, err
	}
	// bbolt uses whichever meta page is intact; an fsck must not.
	if err := checkMetaPages(l.path); err != nil {
		return VerifyResult{}, err
	}
	defer recoverCorrupt(l.path, &err)
	err = l.view(func(tx *bolt.Tx) error {
		var err error
		res, err = l.scan(ctx, tx, scanOptions{indexes: true, consistency: true, progress: progress})
		return err
	})
	if err == nil {
		err = l.checkWitness(ctx)
	}
	return res, err
}

// checkOnOpen runs the integrity check that Open requires: entries, leaf
// hashes, stored subtree hashes, tree state and checkpoints (no indexes).
func (l *Log) checkOnOpen() (err error) {
	defer recoverCorrupt(l.path, &err)
	err = l.view(func(tx *bolt.Tx) error {
		_, err := l.scan(context.Background(), tx, scanOptions{})
		return err
	})
	var ve *VerifyError
	if errors.As(err, &ve) {
		return fmt.Errorf("log file %q failed its integrity check, refusing to open it: %w", l.path, err)
	}
	if err != nil {
		return fmt.Errorf("log file %q: %w", l.path, err)
	}
	if l.origin != "" && len(l.cpSigned) > 0 {
		if cp, _, err := checkpointBody(l.cpSigned, nil); err == nil && cp.Origin != l.origin {
			return fmt.Errorf("log file %q: its checkpoints have origin %q but the configured origin is %q", l.path, cp.Origin, l.origin)
		}
	}
	return nil
}

type scanOptions struct {
	indexes     bool
	consistency bool
	progress    func(uint64)
}

// checkpointBody parses a stored checkpoint, checking its signature when
// verifiers are given.
func checkpointBody(signed []byte, vs note.Verifiers) (cp Checkpoint, verified bool, err error) {
	if vs == nil {
		vs = note.VerifierList()
	}
	n, err := note.Open(signed, vs)
	var unverified *note.UnverifiedNoteError
	switch {
	case err == nil:
		verified = true
	case errors.As(err, &unverified):
		n = unverified.Note
	default:
		return Checkpoint{}, false, err
	}
	cp, err = ParseCheckpoint(n.Text)
	return cp, verified, err
}

type storedCheckpoint struct {
	Checkpoint
	verified bool
}

// scanner accumulates the first (lowest-index) problem found.
type scanner struct {
	bad *VerifyError
	// verified counts the checkpoints whose signature a verifier checked;
	// unknownSigners are the signers of those signed by no known key.
	verified       int
	unknownSigners []string
}

func (s *scanner) report(e *VerifyError) {
	if s.bad == nil || e.Index < s.bad.Index {
		s.bad = e
	}
}

// stopAt reports whether index i is past a problem already found.
func (s *scanner) stopAt(i uint64) bool { return s.bad != nil && i >= s.bad.Index }

func (l *Log) scan(ctx context.Context, tx *bolt.Tx, so scanOptions) (VerifyResult, error) {
	var res VerifyResult
	var s scanner
	tree, err := readTree(tx)
	if err != nil {
		return res, verifyErrorf(0, "stored tree state: %w", err)
	}
	n := tree.End()
	cps := l.scanCheckpoints(tx, n, &s)
	if s.verified == 0 && len(s.unknownSigners) > 0 {
		return res, fmt.Errorf("%w: its checkpoints are signed by %s, and by none of the keys given", ErrWrongKey, strings.Join(s.unknownSigners, ", "))
	}
	es := newEntryScan(tx, so.indexes, l.epochs)
	if err := es.run(ctx, n, cps, &s, &res, so.progress); err != nil {
		return res, err
	}
	if s.bad != nil {
		return res, s.bad
	}
	es.checkRest(tx, tree, &s)
	if s.bad != nil {
		return res, s.bad
	}
	if so.consistency {
		if err := checkConsistency(tx, cps); err != nil {
			return res, err
		}
	}
	if es.acc != nil {
		keys, err := l.checkIndexes(ctx, tx, es.acc, n)
		if err != nil {
			return res, err
		}
		res.IndexKeys = keys
	}

	res.Size = n
	res.Root = rootOf(es.tb.r)
	res.Checkpoints = len(cps)
	for _, cp := range cps {
		if cp.verified {
			res.SignaturesVerified++
		}
	}
	if so.progress != nil {
		so.progress(n)
	}
	return res, nil
}

// noteSigners names the keys that signed a note, as name+hash.
func noteSigners(signed []byte) []string {
	_, err := note.Open(signed, note.VerifierList())
	var unverified *note.UnverifiedNoteError
	if !errors.As(err, &unverified) {
		return nil
	}
	var out []string
	for _, sig := range unverified.Note.UnverifiedSigs {
		out = append(out, fmt.Sprintf("%s+%08x", sig.Name, sig.Hash))
	}
	return out
}

// scanCheckpoints reads the stored checkpoints, oldest first, and returns
// those that are well-formed; it reports the others to s. n is the tree
// size.
func (l *Log) scanCheckpoints(tx *bolt.Tx, n uint64, s *scanner) []storedCheckpoint {
	var cps []storedCheckpoint
	prevSize := uint64(0)
	origin := ""
	_ = tx.Bucket(bucketCheckpoints).ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			s.report(verifyErrorf(prevSize, "malformed checkpoint key %x", k))
			return nil
		}
		size := binary.BigEndian.Uint64(k)
		cp, verified, err := checkpointBody(v, l.verifiers)
		switch {
		case err != nil && l.verifiers != nil:
			s.report(verifyErrorf(prevSize, "checkpoint of size %d: signature does not verify: %w", size, err))
		case err != nil:
			s.report(verifyErrorf(prevSize, "checkpoint of size %d does not parse: %w", size, err))
		case l.verifiers != nil && !verified:
			s.report(verifyErrorf(prevSize, "checkpoint of size %d is not signed by a known key", size))
			for _, name := range noteSigners(v) {
				if !slices.Contains(s.unknownSigners, name) {
					s.unknownSigners = append(s.unknownSigners, name)
				}
			}
		case cp.Size != size:
			s.report(verifyErrorf(prevSize, "checkpoint stored under size %d says size %d", size, cp.Size))
		case origin != "" && cp.Origin != origin:
			s.report(verifyErrorf(prevSize, "checkpoint of size %d has origin %q, earlier ones %q", size, cp.Origin, origin))
		case size > n:
			s.report(verifyErrorf(n, "checkpoint of size %d is beyond the tree (size %d): entries were removed", size, n))
		case size == 0 && !bytes.Equal(cp.Root, hasher.EmptyRoot()):
			s.report(verifyErrorf(0, "checkpoint of size 0 does not have the empty root"))
		default:
			cps = append(cps, storedCheckpoint{cp, verified})
			origin = cp.Origin
		}
		if verified {
			s.verified++
		}
		prevSize = size
		return nil
	})
	return cps
}

// entryScan walks the entries and their stored leaf hashes in index order,
// rebuilding the tree (checking the stored nodes) and, when asked, the
// indexes.
type entryScan struct {
	entries        *bolt.Bucket
	ec, lc         *bolt.Cursor
	ek, ev, lk, lv []byte // the cursors' current keys and values
	tb             *treeBuilder
	acc            *indexAccumulator // nil: indexes not checked
	maxValidity    time.Duration
}

func newEntryScan(tx *bolt.Tx, indexes, epochs bool) *entryScan {
	es := &entryScan{
		entries:     tx.Bucket(bucketEntries),
		lc:          tx.Bucket(bucketLeaves).Cursor(),
		tb:          newTreeBuilder(tx.Bucket(bucketNodes)),
		maxValidity: readMaxValidity(tx),
	}
	es.ec = es.entries.Cursor()
	es.ek, es.ev = es.ec.First()
	es.lk, es.lv = es.lc.First()
	if indexes {
		es.acc = newIndexAccumulator(epochs)
	}
	return es
}

// checkRest reports what lies beyond the entries checked, once all of
// them were: entries and leaf hashes past the tree (written behind the
// log's back), a bucket sequence, tree state or node count that does not
// match them.
func (es *entryScan) checkRest(tx *bolt.Tx, tree *compact.Range, s *scanner) {
	n := tree.End()
	if es.ek != nil {
		s.report(verifyErrorf(keyIndex(es.ek, n), "entry key %x is beyond the Merkle tree (size %d): it was not appended through the log", es.ek, n))
	}
	if es.lk != nil {
		s.report(verifyErrorf(keyIndex(es.lk, n), "leaf hash key %x is beyond the Merkle tree (size %d)", es.lk, n))
	}
	if seq := es.entries.Sequence(); seq != n {
		s.report(verifyErrorf(min(seq, n), "entries bucket sequence %d differs from the tree size %d", seq, n))
	}
	if !es.tb.r.Equal(tree) {
		s.report(verifyErrorf(n, "stored tree state (size %d) does not match the entries", n))
	}
	if got, want := uint64(tx.Bucket(bucketNodes).Stats().KeyN), storedNodeCount(n); got != want {
		s.report(verifyErrorf(n, "%d stored tree nodes, want %d for size %d", got, want, n))
	}
}

// checkConsistency proves, from the stored tree, that each checkpoint's
// tree extends the one before.
func checkConsistency(tx *bolt.Tx, cps []storedCheckpoint) error {
	for i := 1; i < len(cps); i++ {
		a, b := cps[i-1], cps[i]
		p, err := consistencyProof(tx, a.Size, b.Size)
		if err == nil {
			err = proof.VerifyConsistency(hasher, a.Size, b.Size, p, a.Root, b.Root)
		}
		if err != nil {
			return verifyErrorf(a.Size, "checkpoints of sizes %d and %d are not consistent: %w", a.Size, b.Size, err)
		}
	}
	return nil
}

// keyIndex returns the index a seq key names, or def for a malformed key.
func keyIndex(k []byte, def uint64) uint64 {
	if len(k) == 8 {
		return binary.BigEndian.Uint64(k)
	}
	return def
}

// indexAccumulator keeps, per index, an order-independent digest of the
// index records the entries call for: their count and two 64-bit sums of
// keyed hashes. Comparing it with the same digest of the stored records
// checks every index in one pass over each bucket, without holding the
// expected records in memory.
type indexAccumulator struct {
	seeds  [2]maphash.Seed
	want   [numIndexes]indexDigest
	epochs bool // the file's layout
}

type indexDigest struct {
	n    uint64
	sums [2]uint64
}

func newIndexAccumulator(epochs bool) *indexAccumulator {
	return &indexAccumulator{seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}, epochs: epochs}
}

func (a *indexAccumulator) add(d *indexDigest, k, v []byte) {
	d.n++
	for i, seed := range a.seeds {
		var h maphash.Hash
		h.SetSeed(seed)
		h.Write(k)
		h.WriteByte(0xff)
		h.Write(v)
		d.sums[i] += h.Sum64()
	}
}

func (d *indexDigest) merge(o indexDigest) {
	d.n += o.n
	d.sums[0] += o.sums[0]
	d.sums[1] += o.sums[1]
}

// checkIndexes compares every index bucket with the accumulated digest and,
// for a bucket that differs, finds the lowest bad index.
func (l *Log) checkIndexes(ctx context.Context, tx *bolt.Tx, acc *indexAccumulator, n uint64) (uint64, error) {
	// The buckets are read concurrently, each by its own cursor of tx
	// (read-only cursors share nothing but the memory map).
	var got [numIndexes]indexDigest
	var errs [numIndexes]error
	buckets := make([]*bolt.Bucket, numIndexes)
	for id := range buckets {
		buckets[id] = tx.Bucket(indexBuckets[id])
	}
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for id := range buckets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			// A damaged page panics in bbolt: an error, as in the caller.
			defer recoverCorrupt(l.path, &errs[id])
			c := buckets[id].Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				if got[id].n%4096 == 0 {
					if errs[id] = ctx.Err(); errs[id] != nil {
						return
					}
				}
				acc.add(&got[id], k, v)
			}
		})
	}
	wg.Wait()
	var total uint64
	for id := indexID(0); id < numIndexes; id++ {
		if errs[id] != nil {
			return 0, errs[id]
		}
		total += got[id].n
		if got[id] != acc.want[id] {
			return 0, l.findIndexProblem(ctx, tx, id, n)
		}
	}
	return total, nil
}

// findIndexProblem finds the lowest index at which index bucket id and the
// entries disagree. It runs only when the digests differ.
func (l *Log) findIndexProblem(ctx context.Context, tx *bolt.Tx, id indexID, n uint64) error {
	var s scanner
	name := indexNames[id]
	b, entries := tx.Bucket(indexBuckets[id]), tx.Bucket(bucketEntries)
	var puts []indexPut
	expected := func(seq uint64) ([]indexPut, bool) {
		v := entries.Get(seqKey(seq))
		if v == nil {
			return nil, false
		}
		e, err := decodeRecord(v)
		if err != nil {
			return nil, false
		}
		puts = indexPuts(e, seq, l.epochs, puts[:0])
		return puts, true
	}
	// Records that do not belong to their entry.
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		seq, ok := uint64(0), false
		if seqInVal := id == idxSerial && !l.epochs; seqInVal && len(v) == 8 {
			seq, ok = binary.BigEndian.Uint64(v), true
		} else if !seqInVal && len(k) >= 8 {
			seq, ok = binary.BigEndian.Uint64(k[len(k)-8:]), true
		}
		if !ok {
			s.report(verifyErrorf(0, "%s index has a malformed record %x", name, k))
			continue
		}
		if s.stopAt(seq) {
			continue
		}
		if seq >= n {
			s.report(verifyErrorf(seq, "%s index points to entry %d, beyond the log (size %d)", name, seq, n))
			continue
		}
		want, _ := expected(seq)
		found := false
		for _, p := range want {
			if p.idx == id && bytes.Equal(p.key, k) && bytes.Equal(p.val, v) {
				found = true
			}
		}
		if !found {
			s.report(verifyErrorf(seq, "%s index record %x does not match entry %d", name, k, seq))
		}
	}
	// Entries missing from the index.
	for i := uint64(0); i < n && !s.stopAt(i); i++ {
		if i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		want, _ := expected(i)
		for _, p := range want {
			if p.idx != id {
				continue
			}
			if v := b.Get(p.key); v == nil || !bytes.Equal(v, p.val) {
				s.report(verifyErrorf(i, "entry %d is missing from the %s index", i, name))
			}
		}
	}
	if s.bad == nil {
		return verifyErrorf(0, "%s index differs from the entries", name)
	}
	return s.bad
}
