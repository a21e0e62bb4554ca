package store

import (
	"encoding/binary"
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

// probes calls fn with the bit positions of serial.
func (f *serialFilter) probes(serial []byte, fn func(word int, mask uint64) bool) bool {
	h := maphash.Bytes(f.seed, serial)
	h1, h2 := h, h>>32|h<<32|1
	m := uint64(len(f.bits) * 64)
	for i := range uint64(serialFilterProbes) {
		b := (h1 + i*h2) % m
		if !fn(int(b/64), 1<<(b%64)) {
			return false
		}
	}
	return true
}

func (f *serialFilter) add(serial []byte) {
	f.probes(serial, func(w int, mask uint64) bool { f.bits[w] |= mask; return true })
	f.n++
}

// mayHave reports false only for a serial that was never added.
func (f *serialFilter) mayHave(serial []byte) bool {
	return f.probes(serial, func(w int, mask uint64) bool { return f.bits[w]&mask != 0 })
}

// full reports whether the filter holds its capacity; it is then rebuilt
// twice as large.
func (f *serialFilter) full() bool { return f.n >= f.limit }

// buildSerialFilter reads every serial of a schema-2 serial index, of a log
// of size entries, into a filter with room for as many again.
func buildSerialFilter(b *bolt.Bucket, size uint64) *serialFilter {
	f := newSerialFilter(2 * int(size))
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(k) > epochLen {
			f.add(k[epochLen:])
		}
	}
	return f
}

// findSerial returns the serial index value (the seq) of serial, looking
// in every epoch up to last, newest first, or nil. Without epochs it is a
// single lookup.
func findSerial(b *bolt.Bucket, serial []byte, epochs bool, last uint32) []byte {
	if !epochs {
		return b.Get(serial)
	}
	key := epochKey(0, serial)
	for e := int64(last); e >= 0; e-- {
		binary.BigEndian.PutUint32(key, uint32(e))
		if v := b.Get(key); v != nil {
			return v
		}
	}
	return nil
}

// serialTaken reports whether serial is in the serial index of the write
// transaction of the committer, whose next seq is seq. It maintains the
// committer's filter; the caller adds the serial once it is written.
func (l *Log) serialTaken(b *bolt.Bucket, serial []byte, seq uint64) bool {
	if !l.epochs {
		return b.Get(serial) != nil
	}
	if l.serials == nil || l.serials.full() {
		l.serials = buildSerialFilter(b, seq)
	}
	if !l.serials.mayHave(serial) {
		return false
	}
	return findSerial(b, serial, true, epochOf(seq)) != nil
}
