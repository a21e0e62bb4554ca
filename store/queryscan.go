package store

import (
	"bytes"
	"encoding/binary"
	"math"

	bolt "go.etcd.io/bbolt"
)

// planCursor walks the keys of a scan plan, oldest or newest first. In an
// epoch-prefixed index it visits, epoch after epoch, the keys that start
// with epoch || plan.inEpochs, and skips the rest with one seek per epoch,
// so a query costs at most a few seeks per epoch of the log on top of the
// keys it reads.
type planCursor struct {
	c    *bolt.Cursor
	p    *scanPlan
	back bool
}

func newPlanCursor(c *bolt.Cursor, p *scanPlan, newest bool) *planCursor {
	return &planCursor{c: c, p: p, back: newest}
}

// inRange reports whether k is a key of the plan not yet passed.
func (pc *planCursor) inRange(k []byte) bool {
	if k == nil {
		return false
	}
	if pc.back {
		return pc.p.lo == nil || bytes.Compare(k, pc.p.lo) >= 0
	}
	return pc.p.hi == nil || bytes.Compare(k, pc.p.hi) < 0
}

// first positions the cursor on the first key of the plan.
func (pc *planCursor) first() ([]byte, []byte) {
	var k, v []byte
	switch {
	case pc.back && pc.p.hi == nil:
		k, v = pc.c.Last()
	case pc.back:
		k, v = pc.seekBefore(pc.p.hi)
	case pc.p.lo == nil:
		k, v = pc.c.First()
	default:
		k, v = pc.c.Seek(pc.p.lo)
	}
	return pc.settle(k, v)
}

// next moves to the next key of the plan.
func (pc *planCursor) next() ([]byte, []byte) {
	if pc.back {
		return pc.settle(pc.c.Prev())
	}
	return pc.settle(pc.c.Next())
}

// seekBefore positions the cursor on the last key before x (nil: the last
// key).
func (pc *planCursor) seekBefore(x []byte) ([]byte, []byte) {
	if x == nil {
		return pc.c.Last()
	}
	if k, _ := pc.c.Seek(x); k == nil {
		return pc.c.Last()
	}
	return pc.c.Prev()
}

// settle moves the cursor from k, in the scan direction, to the nearest key
// that starts with epoch || plan.inEpochs for its epoch. Plans that do not
// scan epochs take k as it is.
func (pc *planCursor) settle(k, v []byte) ([]byte, []byte) {
	p := pc.p.inEpochs
	if p == nil {
		return k, v
	}
	for len(k) >= epochLen {
		e := binary.BigEndian.Uint32(k)
		start := epochKey(e, p)
		cmp := bytes.Compare(k, start)
		switch {
		case bytes.HasPrefix(k, start):
			return k, v
		case !pc.back && cmp < 0:
			k, v = pc.c.Seek(start)
		case !pc.back && e == math.MaxUint32:
			return nil, nil
		case !pc.back:
			k, v = pc.c.Seek(epochKey(e+1, p))
		case cmp > 0:
			k, v = pc.seekBefore(keySuccessor(start))
		case e == 0:
			return nil, nil
		default:
			k, v = pc.seekBefore(keySuccessor(epochKey(e-1, p)))
		}
	}
	return k, v
}
