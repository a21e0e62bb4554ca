package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/maphash"

	bolt "go.etcd.io/bbolt"
)

// In a schema-2 file a serial may sit in any epoch of the serial index, so
// telling whether a serial is already in the log takes one lookup per
// epoch. The committer keeps a Bloom filter of every serial in the log,
// built from the serial index when the file is opened for appending, so
// that an append looks in the epochs only for the few serials the filter
// cannot rule out.

// serialFilterBits is the filter's size per serial of its capacity (with
// serialFilterProbes probes, about 1% false positives when full).
const (
	serialFilterBits   = 10
	serialFilterProbes = 7
	serialFilterMin    = 1 << 16
)

type serialFilter struct {
	seed     maphash.Seed
	bits     []uint64
	n, limit int
}

func newSerialFilter(capacity int) *serialFilter {
	capacity = max(capacity, serialFilterMin)
	words := (capacity*serialFilterBits + 63) / 64
	return &serialFilter{seed: maphash.MakeSeed(), bits: make([]uint64, words), limit: capacity}
}

// probes calls fn with the bit positions of a serial's nameHash h (the
// filter holds hashes: the schema-2 index, from which it is built, holds
// nothing else).
func (f *serialFilter) probes(h []byte, fn func(word int, mask uint64) bool) bool {
	x := maphash.Bytes(f.seed, h)
	h1, h2 := x, x>>32|x<<32|1
	m := uint64(len(f.bits) * 64)
	for i := range uint64(serialFilterProbes) {
		b := (h1 + i*h2) % m
		if !fn(int(b/64), 1<<(b%64)) {
			return false
		}
	}
	return true
}

func (f *serialFilter) add(h []byte) {
	f.probes(h, func(w int, mask uint64) bool { f.bits[w] |= mask; return true })
	f.n++
}

// mayHave reports false only for a hash that was never added.
func (f *serialFilter) mayHave(h []byte) bool {
	return f.probes(h, func(w int, mask uint64) bool { return f.bits[w]&mask != 0 })
}

// full reports whether the filter holds its capacity; it is then rebuilt
// twice as large.
func (f *serialFilter) full() bool { return f.n >= f.limit }

// buildSerialFilter reads every serial hash of a schema-2 serial index, of
// a log of size entries, into a filter with room for as many again.
func buildSerialFilter(idx *bolt.Bucket, size uint64) *serialFilter {
	f := newSerialFilter(2 * int(size))
	c := idx.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(k) == epochLen+nameHashLen+8 {
			f.add(k[epochLen : epochLen+nameHashLen])
		}
	}
	return f
}

// findSerial returns the issuance whose serial is serial: its seq and
// record, or found false. In schema 2 it looks in every epoch up to last,
// newest first, and reads the entries whose serial hash matches.
func findSerial(idx, entries *bolt.Bucket, serial string, epochs bool, last uint32) (seq uint64, rec []byte, found bool, err error) {
	if !epochs {
		v := idx.Get([]byte(serial))
		if v == nil {
			return 0, nil, false, nil
		}
		if len(v) != 8 {
			return 0, nil, false, fmt.Errorf("%w: serial index value %x", ErrCorrupt, v)
		}
		seq = binary.BigEndian.Uint64(v)
		if rec = entries.Get(v); rec == nil {
			return seq, nil, false, fmt.Errorf("%w: serial index points to missing entry %d", ErrCorrupt, seq)
		}
		return seq, rec, true, nil
	}
	c := idx.Cursor()
	prefix := epochKey(0, nameHash(serial))
	for e := int64(last); e >= 0; e-- {
		binary.BigEndian.PutUint32(prefix, uint32(e))
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if len(k) != len(prefix)+8 {
				return 0, nil, false, fmt.Errorf("%w: malformed serial index key %x", ErrCorrupt, k)
			}
			seq = binary.BigEndian.Uint64(k[len(prefix):])
			if rec = entries.Get(k[len(prefix):]); rec == nil {
				return seq, nil, false, fmt.Errorf("%w: serial index points to missing entry %d", ErrCorrupt, seq)
			}
			s, err := recordSerial(rec)
			if err != nil {
				return seq, nil, false, fmt.Errorf("entry %d: %w", seq, err)
			}
			if s == serial {
				return seq, rec, true, nil
			}
		}
	}
	return 0, nil, false, nil
}

// recordSerial returns the serial of an issuance record ("" for other
// kinds).
func recordSerial(rec []byte) (string, error) {
	e, err := decodeRecord(rec)
	if err != nil || e.Kind != KindIssuance {
		return "", err
	}
	return e.Serial, nil
}

// serialTaken reports whether serial is in the log, in the write
// transaction of the committer, whose next seq is seq. It builds the
// committer's filter when needed; the caller adds the serial (addSerial)
// once it is written.
func (l *Log) serialTaken(idx, entries *bolt.Bucket, serial string, seq uint64) (bool, error) {
	if !l.epochs {
		return idx.Get([]byte(serial)) != nil, nil
	}
	if l.serials == nil || l.serials.full() {
		l.serials = buildSerialFilter(idx, seq)
	}
	if !l.serials.mayHave(nameHash(serial)) {
		return false, nil
	}
	_, _, found, err := findSerial(idx, entries, serial, true, epochOf(seq))
	return found, err
}

// addSerial adds a serial the committer wrote to its filter.
func (l *Log) addSerial(serial string) {
	if l.serials != nil {
		l.serials.add(nameHash(serial))
	}
}
