package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"runtime"
)

// The entry scan of Open and Verify decodes and re-hashes every entry: it
// runs on every core. The goroutine of the scan reads the entries and leaf
// hashes with two cursors, in chunks; workers check the chunks (decode,
// leaf hash, index digest); the scan goroutine then takes the chunks in
// order, adds their leaves to the tree and checks the checkpoints, so the
// first problem reported is the same as in a sequential scan.

// verifyChunk is the number of entries of a chunk.
const verifyChunk = 1024

// scanItem is one entry as the cursors found it: its key and record, the
// key and value of the stored leaf hash (nil keys: the cursor ended).
type scanItem struct{ ek, ev, lk, lv []byte }

type scanChunk struct {
	start  uint64
	items  []scanItem
	leaves [][]byte
	// bad is the first problem in the chunk, at index badAt (relative);
	// when badLate, the entry itself is whole (its leaf joins the tree)
	// and the problem comes after the checkpoint checks.
	bad     *VerifyError
	badAt   int
	badLate bool
	kinds   [4]uint64
	digest  [numIndexes]indexDigest
	done    chan struct{}
}

// run checks the entries [0, n), each against the checkpoints cps, and
// counts them by kind in res, until the first problem, which it reports
// to s. It returns only ctx's error.
func (es *entryScan) run(ctx context.Context, n uint64, cps []storedCheckpoint, s *scanner, res *VerifyResult, progress func(done uint64)) error {
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan *scanChunk)
	defer close(jobs)
	for range workers {
		go func() {
			for c := range jobs {
				es.check(c)
				close(c.done)
			}
		}()
	}
	var pending []*scanChunk
	var con consumer
	var err error
	next := uint64(0)
	for {
		// Keep every worker busy; take the oldest chunk when enough are
		// in flight or nothing is left to read.
		if next < n && !s.stopAt(next) && len(pending) < 2*workers && err == nil {
			if err = ctx.Err(); err == nil {
				c := es.read(next, min(n-next, verifyChunk))
				next += uint64(len(c.items))
				pending = append(pending, c)
				jobs <- c
			}
			continue
		}
		if len(pending) == 0 {
			break
		}
		c := pending[0]
		pending = pending[1:]
		<-c.done
		if err == nil && !con.stopped {
			con.take(es, c, cps, s, res, progress)
		}
	}
	return err
}

// read takes up to m entries from the cursors, from index start.
func (es *entryScan) read(start, m uint64) *scanChunk {
	c := &scanChunk{start: start, items: make([]scanItem, 0, m), done: make(chan struct{})}
	for range m {
		c.items = append(c.items, scanItem{es.ek, es.ev, es.lk, es.lv})
		if es.ek == nil {
			break
		}
		es.ek, es.ev = es.ec.Next()
		es.lk, es.lv = es.lc.Next()
	}
	return c
}

// check checks the entries of a chunk, on a worker.
func (es *entryScan) check(c *scanChunk) {
	c.leaves = make([][]byte, 0, len(c.items))
	lh := leafHasher{h: sha256.New(), buf: make([]byte, 0, sha256.Size*len(c.items))}
	var puts []indexPut
	e := new(Entry)
	for j, it := range c.items {
		i := c.start + uint64(j)
		leaf, bad := checkEntry(i, it, e, &lh)
		if bad != nil {
			c.bad, c.badAt = bad, j
			return
		}
		c.leaves = append(c.leaves, leaf)
		c.kinds[e.Kind&3]++
		if es.acc == nil {
			continue
		}
		puts = indexPuts(e, i, es.acc.epochs, puts[:0])
		for _, p := range puts {
			es.acc.add(&c.digest[p.idx], p.key, p.val)
		}
		if e.Kind == KindIssuance && e.NotAfter.Sub(e.NotBefore) > es.maxValidity {
			c.bad, c.badAt, c.badLate = verifyErrorf(i, "entry %d is valid for %v, longer than the stored maximum validity %v (ValidAt queries would miss it)", i, e.NotAfter.Sub(e.NotBefore), es.maxValidity), j, true
			return
		}
	}
}

// leafHasher computes RFC 6962 leaf hashes (as leafHash) into one buffer
// per chunk, with one SHA-256 state.
type leafHasher struct {
	h   hash.Hash
	buf []byte
}

func (lh *leafHasher) sum(rec []byte) []byte {
	lh.h.Reset()
	lh.h.Write([]byte{0}) // RFC 6962 leaf prefix
	lh.h.Write(rec)
	lh.buf = lh.h.Sum(lh.buf)
	return lh.buf[len(lh.buf)-sha256.Size:]
}

// checkEntry checks entry i and its stored leaf hash: it decodes the entry
// into e (a view of the record: see decodeRecordInto) and returns its leaf
// hash, or the problem.
func checkEntry(i uint64, it scanItem, e *Entry, lh *leafHasher) ([]byte, *VerifyError) {
	if it.ek == nil || len(it.ek) != 8 || binary.BigEndian.Uint64(it.ek) != i {
		return nil, verifyErrorf(i, "entry %d is missing", i)
	}
	if err := decodeRecordInto(e, it.ev, true); err != nil {
		return nil, verifyErrorf(i, "entry does not decode: %w", err)
	}
	if e.Seq != i {
		return nil, verifyErrorf(i, "entry %d holds the record of entry %d (entries moved or swapped)", i, e.Seq)
	}
	leaf := lh.sum(it.ev)
	if it.lk == nil || len(it.lk) != 8 || binary.BigEndian.Uint64(it.lk) != i {
		return nil, verifyErrorf(i, "stored leaf hash of entry %d is missing", i)
	}
	if !bytes.Equal(it.lv, leaf) {
		return nil, verifyErrorf(i, "entry %d does not match its stored leaf hash (the entry or the hash was changed)", i)
	}
	return leaf, nil
}

// consumer takes the checked chunks in order: it builds the tree and
// checks the checkpoints.
type consumer struct {
	nextCP    int
	goodUntil uint64
	stopped   bool
}

func (con *consumer) take(es *entryScan, c *scanChunk, cps []storedCheckpoint, s *scanner, res *VerifyResult, progress func(done uint64)) {
	end := len(c.leaves)
	if c.bad != nil && !c.badLate {
		end = c.badAt
	}
	for j := 0; j < end || (c.badLate && j == c.badAt); j++ {
		i := c.start + uint64(j)
		if s.stopAt(i) {
			con.stopped = true
			return
		}
		if progress != nil && i > 0 && i%(1<<16) == 0 {
			progress(i)
		}
		es.tb.append(c.leaves[j])
		if es.tb.bad != nil {
			s.report(es.tb.bad)
			con.stopped = true
			return
		}
		for con.nextCP < len(cps) && cps[con.nextCP].Size == i+1 {
			cp := cps[con.nextCP]
			if root := rootOf(es.tb.r); !bytes.Equal(root, cp.Root) {
				s.report(verifyErrorf(con.goodUntil, "checkpoint of size %d: root hash does not match the entries; entries from index %d on are not covered by a valid checkpoint", cp.Size, con.goodUntil))
			}
			con.goodUntil = cp.Size
			con.nextCP++
		}
	}
	if c.bad != nil {
		s.report(c.bad)
		con.stopped = true
		return
	}
	res.Issuances += c.kinds[KindIssuance]
	res.Denials += c.kinds[KindDenial]
	res.Admin += c.kinds[KindAdmin]
	if es.acc != nil {
		for id := range c.digest {
			es.acc.want[id].merge(c.digest[id])
		}
	}
}
