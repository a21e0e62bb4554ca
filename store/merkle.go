package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	bolt "go.etcd.io/bbolt"
)

// hasher is the RFC 6962 SHA-256 tree hasher used for every tree.
var hasher = rfc6962.DefaultHasher

// rangeFactory builds compact ranges with the RFC 6962 hasher.
var rangeFactory = &compact.RangeFactory{Hash: hasher.HashChildren}

// leafHash returns SHA-256(0x00 || rec), the RFC 6962 leaf hash.
func leafHash(rec []byte) []byte { return hasher.HashLeaf(rec) }

// encodeTreeState encodes the compact range [0, size) stored under
// metaKeyTree: size (8 bytes big-endian) then the range's hashes, left to
// right, 32 bytes each.
func encodeTreeState(size uint64, hashes [][]byte) []byte {
	b := make([]byte, 0, 8+len(hashes)*sha256.Size)
	b = binary.BigEndian.AppendUint64(b, size)
	for _, h := range hashes {
		b = append(b, h...)
	}
	return b
}

func decodeTreeState(b []byte) (*compact.Range, error) {
	if len(b) < 8 || (len(b)-8)%sha256.Size != 0 {
		return nil, fmt.Errorf("%w: tree state of %d bytes is malformed", ErrCorrupt, len(b))
	}
	size := binary.BigEndian.Uint64(b)
	var hashes [][]byte
	for p := b[8:]; len(p) > 0; p = p[sha256.Size:] {
		hashes = append(hashes, append([]byte(nil), p[:sha256.Size]...))
	}
	r, err := rangeFactory.NewRange(0, size, hashes)
	if err != nil {
		return nil, fmt.Errorf("%w: tree state: %w", ErrCorrupt, err)
	}
	return r, nil
}

// readTree returns the tree state stored in tx.
func readTree(tx *bolt.Tx) (*compact.Range, error) {
	return decodeTreeState(tx.Bucket(bucketMeta).Get(metaKeyTree))
}

// rootOf returns the root hash of a compact range starting at 0.
func rootOf(r *compact.Range) []byte {
	if r.End() == 0 {
		return hasher.EmptyRoot()
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		panic(err) // unreachable: the range starts at 0
	}
	return root
}

func cloneRange(r *compact.Range) *compact.Range {
	hashes := append([][]byte(nil), r.Hashes()...)
	c, err := rangeFactory.NewRange(r.Begin(), r.End(), hashes)
	if err != nil {
		panic(err) // unreachable: copied from a valid range
	}
	return c
}

// storedNode reports whether bucketNodes holds the subtree at this level.
func storedNode(level uint) bool { return level > 0 && level%nodeStride == 0 }

// nodeHash returns the hash of the complete subtree at (level, index),
// reading at most 2^(nodeStride-1) stored hashes.
func nodeHash(tx *bolt.Tx, id compact.NodeID) ([]byte, error) {
	base := id.Level - id.Level%nodeStride // the nearest stored level below
	var b *bolt.Bucket
	var prefix []byte
	if base == 0 {
		b = tx.Bucket(bucketLeaves)
	} else {
		b = tx.Bucket(bucketNodes)
		prefix = []byte{byte(base)}
	}
	width := uint64(1) << (id.Level - base)
	first := id.Index << (id.Level - base)
	hashes := make([][]byte, 0, width)
	c := b.Cursor()
	k, v := c.Seek(binary.BigEndian.AppendUint64(append([]byte(nil), prefix...), first))
	for i := uint64(0); i < width; i++ {
		want := first + i
		if k == nil || len(k) != len(prefix)+8 || binary.BigEndian.Uint64(k[len(prefix):]) != want || (base > 0 && k[0] != byte(base)) {
			return nil, fmt.Errorf("%w: tree node (level %d, index %d) is missing", ErrCorrupt, base, want)
		}
		if len(v) != sha256.Size {
			return nil, fmt.Errorf("%w: tree node (level %d, index %d) has %d bytes", ErrCorrupt, base, want, len(v))
		}
		hashes = append(hashes, append([]byte(nil), v...))
		k, v = c.Next()
	}
	for len(hashes) > 1 {
		for i := 0; i < len(hashes)/2; i++ {
			hashes[i] = hasher.HashChildren(hashes[2*i], hashes[2*i+1])
		}
		hashes = hashes[:len(hashes)/2]
	}
	return hashes[0], nil
}

// proofHashes fetches and rehashes the nodes of an inclusion or consistency
// proof.
func proofHashes(tx *bolt.Tx, nodes proof.Nodes) ([][]byte, error) {
	hashes := make([][]byte, 0, len(nodes.IDs))
	for _, id := range nodes.IDs {
		h, err := nodeHash(tx, id)
		if err != nil {
			return nil, err
		}
		hashes = append(hashes, h)
	}
	return nodes.Rehash(hashes, hasher.HashChildren)
}

// InclusionProof returns the RFC 6962 inclusion proof of the entry at seq in
// the tree of size treeSize, which must not exceed Size(). Verify it with
// VerifyInclusion against a checkpoint of that size.
func (l *Log) InclusionProof(ctx context.Context, seq, treeSize uint64) ([][]byte, error) {
	if err := l.readable(ctx); err != nil {
		return nil, err
	}
	var out [][]byte
	err := l.view(func(tx *bolt.Tx) error {
		tree, err := readTree(tx)
		if err != nil {
			return err
		}
		if treeSize > tree.End() {
			return fmt.Errorf("inclusion proof: tree size %d is larger than the log (%d): %w", treeSize, tree.End(), ErrNotFound)
		}
		if seq >= treeSize {
			return fmt.Errorf("inclusion proof: entry %d is not in a tree of size %d: %w", seq, treeSize, ErrNotFound)
		}
		nodes, err := proof.Inclusion(seq, treeSize)
		if err != nil {
			return err
		}
		out, err = proofHashes(tx, nodes)
		return err
	})
	return out, err
}

// ConsistencyProof returns the RFC 6962 consistency proof between the trees
// of size1 and size2 (size1 <= size2 <= Size()). Verify it with
// VerifyConsistency against checkpoints of those sizes.
func (l *Log) ConsistencyProof(ctx context.Context, size1, size2 uint64) ([][]byte, error) {
	if err := l.readable(ctx); err != nil {
		return nil, err
	}
	var out [][]byte
	err := l.view(func(tx *bolt.Tx) error {
		var err error
		out, err = consistencyProof(tx, size1, size2)
		return err
	})
	return out, err
}

func consistencyProof(tx *bolt.Tx, size1, size2 uint64) ([][]byte, error) {
	tree, err := readTree(tx)
	if err != nil {
		return nil, err
	}
	if size2 > tree.End() {
		return nil, fmt.Errorf("consistency proof: tree size %d is larger than the log (%d): %w", size2, tree.End(), ErrNotFound)
	}
	if size1 > size2 {
		return nil, fmt.Errorf("consistency proof: size1 %d > size2 %d: %w", size1, size2, ErrInvalidQuery)
	}
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return proofHashes(tx, nodes)
}

// treeBuilder recomputes a tree from leaf hashes and, optionally, checks
// the stored subtree hashes it passes.
type treeBuilder struct {
	r       *compact.Range
	nodes   *bolt.Bucket // nil: don't check
	bad     *VerifyError
	checked uint64 // stored nodes compared
}

func newTreeBuilder(nodes *bolt.Bucket) *treeBuilder {
	return &treeBuilder{r: rangeFactory.NewEmptyRange(0), nodes: nodes}
}

func (t *treeBuilder) append(leaf []byte) {
	if t.nodes == nil {
		_ = t.r.Append(leaf, nil)
		return
	}
	_ = t.r.Append(leaf, t.visit)
}

func (t *treeBuilder) visit(id compact.NodeID, hash []byte) {
	if !storedNode(id.Level) || t.bad != nil {
		return
	}
	t.checked++
	got := t.nodes.Get(nodeKey(id.Level, id.Index))
	if string(got) != string(hash) {
		begin, _ := id.Coverage()
		what := "does not match the leaves"
		if got == nil {
			what = "is missing"
		}
		t.bad = verifyErrorf(begin, "stored tree node (level %d, index %d) %s", id.Level, id.Index, what)
	}
}

// storedNodeCount returns how many stored subtree nodes a tree of size n has.
func storedNodeCount(n uint64) uint64 {
	var c uint64
	for level := uint(nodeStride); level < 64; level += nodeStride {
		c += n >> level
	}
	return c
}
