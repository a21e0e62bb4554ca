package store

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"
)

// Bucket names. Every bucket is created when a log file is created; a file
// that lacks one of them is corrupt.
var (
	// bucketMeta holds the magic, the schema version and the Merkle tree
	// state (see metaKey*).
	bucketMeta = []byte("meta")
	// bucketEntries maps seq (8 bytes, big-endian) to the record bytes.
	bucketEntries = []byte("entries")
	// bucketLeaves maps seq to the entry's 32-byte RFC 6962 leaf hash.
	bucketLeaves = []byte("leaves")
	// bucketNodes maps (level byte, index 8 bytes) to the hash of every
	// complete Merkle subtree whose level is a positive multiple of
	// nodeStride, so that any subtree hash needs at most 2^(nodeStride-1)
	// reads.
	bucketNodes = []byte("nodes")
	// bucketCheckpoints maps a tree size (8 bytes) to a signed checkpoint.
	bucketCheckpoints = []byte("checkpoints")

	// Index buckets. Except for the serial index of schema 1, keys end in
	// the 8-byte seq of the entry and values are empty. In schema 2 the
	// keys of the serial, SPIFFE ID and namespace indexes start with the
	// 4-byte epoch of the entry (see epochOf).

	// bucketBySerial: in schema 1 it maps an issuance's serial (hex) to
	// its seq; in schema 2 its keys are epoch || nameHash(serial) || seq.
	bucketBySerial = []byte("idx_serial")
	// bucketBySPIFFEID: SPIFFE ID || 0x00 || seq in schema 1,
	// epoch || nameHash(SPIFFE ID) || seq in schema 2; for every kind.
	bucketBySPIFFEID = []byte("idx_spiffe_id")
	// bucketByNamespace: [epoch (schema 2) ||] namespace || 0x00 || seq,
	// for every kind.
	bucketByNamespace = []byte("idx_namespace")
	// bucketByTime: time key of Entry.Time || seq, for every entry.
	bucketByTime = []byte("idx_time")
	// bucketByIssuer: issuer fingerprint (32 raw bytes; the first 8 in
	// schema 2) || seq.
	bucketByIssuer = []byte("idx_issuer")
	// bucketByNotAfter: time key of NotAfter || seq, for issuances.
	bucketByNotAfter = []byte("idx_not_after")
)

// Keys in bucketMeta.
var (
	metaKeyMagic   = []byte("magic")
	metaKeySchema  = []byte("schema")
	metaKeyTree    = []byte("tree")
	metaKeyCreated = []byte("created")
	// metaKeyMaxValidity holds the longest NotAfter - NotBefore of any
	// issuance (8 bytes big-endian nanoseconds), which bounds the NotAfter
	// range a ValidAt query scans.
	metaKeyMaxValidity = []byte("max_validity")
)

// logMagic identifies a file as an issuance log.
const logMagic = "transitca issuance log"

// schemaVersion is the schema this build writes into a new file and the
// newest it reads. Bump it (and keep reading older versions) when the
// bucket layout changes. Schema 1 (no epoch prefix in the index keys) is
// still read and appended to in its own layout.
const schemaVersion = 2

// SchemaVersion is the schema of the log files this build creates.
const SchemaVersion = schemaVersion

// schemaEpochs is the first schema whose serial, SPIFFE ID and namespace
// index keys start with the entry's epoch.
const schemaEpochs = 2

// An epoch is 1<<epochBits consecutive sequence numbers. Prefixing an index
// key with the epoch keeps the keys an append writes inside the part of
// the index that belongs to the last epoch, whatever their values.
const (
	epochBits = 16
	epochLen  = 4
)

// epochOf returns the epoch of sequence number seq.
func epochOf(seq uint64) uint32 { return uint32(seq >> epochBits) }

// epochKey returns epoch || k.
func epochKey(epoch uint32, k []byte) []byte {
	return append(binary.BigEndian.AppendUint32(make([]byte, 0, epochLen+len(k)), epoch), k...)
}

// nameHashLen is the length of nameHash.
const nameHashLen = 8

// nameHash is the key of a serial or SPIFFE ID in a schema-2 index: the
// first 8 bytes of its SHA-256. Two names may share it; a query reads the
// entries and keeps those that match.
func nameHash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:nameHashLen]
}

// nodeStride is the level spacing of the stored subtree hashes.
const nodeStride = 8

type indexID uint8

const (
	idxSerial indexID = iota
	idxSPIFFEID
	idxNamespace
	idxTime
	idxIssuer
	idxNotAfter
	numIndexes
)

var indexBuckets = [numIndexes][]byte{
	idxSerial:    bucketBySerial,
	idxSPIFFEID:  bucketBySPIFFEID,
	idxNamespace: bucketByNamespace,
	idxTime:      bucketByTime,
	idxIssuer:    bucketByIssuer,
	idxNotAfter:  bucketByNotAfter,
}

var indexNames = [numIndexes]string{
	idxSerial:    "serial",
	idxSPIFFEID:  "SPIFFE ID",
	idxNamespace: "namespace",
	idxTime:      "time",
	idxIssuer:    "issuer",
	idxNotAfter:  "NotAfter",
}

// allBuckets lists every bucket of the schema.
var allBuckets = [][]byte{
	bucketMeta, bucketEntries, bucketLeaves, bucketNodes, bucketCheckpoints,
	bucketBySerial, bucketBySPIFFEID, bucketByNamespace, bucketByTime, bucketByIssuer, bucketByNotAfter,
}

// indexPut is one index record of an entry. The seq is the value of a
// schema-1 serial record (seqInVal) and the last 8 bytes of every other
// key. When epoch is set the key starts with the epoch of the seq.
type indexPut struct {
	idx      indexID
	epoch    bool
	seqInVal bool
	key      []byte
	val      []byte
}

// indexPuts returns the index records of e for sequence number seq, in the
// layout of a file with (epochs) or without epoch-prefixed keys.
func indexPuts(e *Entry, seq uint64, epochs bool, dst []indexPut) []indexPut {
	// In schema 2 a serial or SPIFFE ID record is epoch || nameHash || seq.
	hashed := func(id indexID, s string) {
		k := append(epochKey(epochOf(seq), nameHash(s)), make([]byte, 8)...)
		binary.BigEndian.PutUint64(k[len(k)-8:], seq)
		dst = append(dst, indexPut{idx: id, epoch: true, key: k})
	}
	if e.Kind == KindIssuance && e.Serial != "" {
		if epochs {
			hashed(idxSerial, e.Serial)
		} else {
			dst = append(dst, indexPut{idx: idxSerial, seqInVal: true, key: []byte(e.Serial), val: seqKey(seq)})
		}
	}
	if e.SPIFFEID != "" {
		if epochs {
			hashed(idxSPIFFEID, e.SPIFFEID)
		} else {
			dst = append(dst, indexPut{idx: idxSPIFFEID, key: stringSeqKey(e.SPIFFEID, seq)})
		}
	}
	if e.Namespace != "" {
		k := stringSeqKey(e.Namespace, seq)
		if epochs {
			k = epochKey(epochOf(seq), k)
		}
		dst = append(dst, indexPut{idx: idxNamespace, epoch: epochs, key: k})
	}
	dst = append(dst, indexPut{idx: idxTime, key: timeSeqKey(e.Time, seq)})
	if e.IssuerFingerprint != "" {
		k := issuerKey(e.IssuerFingerprint, epochs)
		dst = append(dst, indexPut{idx: idxIssuer, key: binary.BigEndian.AppendUint64(k, seq)})
	}
	if e.Kind == KindIssuance && !e.NotAfter.IsZero() {
		dst = append(dst, indexPut{idx: idxNotAfter, key: timeSeqKey(e.NotAfter, seq)})
	}
	return dst
}

// issuerKey is the issuer index key prefix of a fingerprint (hex, checked):
// its 32 bytes in schema 1, its first nameHashLen bytes in schema 2 (a
// query reads the entries and keeps those that match).
func issuerKey(fp string, epochs bool) []byte {
	k := make([]byte, sha256.Size, sha256.Size+8)
	_, _ = hex.Decode(k, []byte(fp))
	if epochs {
		k = k[:nameHashLen]
	}
	return k
}

// setSeq rewrites the seq (and the epoch) carried by an index record.
func (p *indexPut) setSeq(seq uint64) {
	if p.epoch {
		binary.BigEndian.PutUint32(p.key, epochOf(seq))
	}
	if p.seqInVal {
		binary.BigEndian.PutUint64(p.val, seq)
		return
	}
	binary.BigEndian.PutUint64(p.key[len(p.key)-8:], seq)
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq) }

func stringSeqKey(s string, seq uint64) []byte {
	k := make([]byte, 0, len(s)+9)
	k = append(append(k, s...), 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

// timeKey encodes t as 8 big-endian bytes of its Unix nanoseconds with the
// sign bit flipped, so that byte order is time order.
func timeKey(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 16), uint64(t.UnixNano())^(1<<63))
}

func timeSeqKey(t time.Time, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(timeKey(t), seq)
}

// nodeKey is the bucketNodes key of the subtree at (level, index).
func nodeKey(level uint, index uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{byte(level)}, index)
}

// keySuccessor returns the smallest key greater than every key that has
// prefix p, or nil if there is none.
func keySuccessor(p []byte) []byte {
	s := append([]byte(nil), p...)
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] != 0xff {
			s[i]++
			return s[:i+1]
		}
	}
	return nil
}
