package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"
)

// tamperLogSize is above 256 so that stored level-8 subtree nodes exist.
const tamperLogSize = 300

// buildTamperLog writes a closed log of tamperLogSize entries with signed
// checkpoints at 100, 200 and 300.
func buildTamperLog(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "log.db")
	l := openTest(t, path, Options{Signer: testSigner(t), CheckpointEvery: 1 << 30})
	for i := 0; i < tamperLogSize; i += 100 {
		fillLogBatched(t, l, i, 100, 100, func(i int) *Entry { return testEntry(i, kindOf(i)) })
		if _, err := l.WriteCheckpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// tamper opens a copy of the file with bbolt directly and changes it.
func tamper(t *testing.T, path string, fn func(tx *bolt.Tx) error) string {
	t.Helper()
	cp := copyFile(t, path)
	db, err := bolt.Open(cp, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	return cp
}

func mustGet(t *testing.T, b *bolt.Bucket, key []byte) []byte {
	t.Helper()
	v := b.Get(key)
	if v == nil {
		t.Fatalf("key %x missing", key)
	}
	return bytes.Clone(v)
}

func TestTamperDetection(t *testing.T) {
	orig := buildTamperLog(t)
	for _, tc := range []struct {
		name      string
		tamper    func(t *testing.T, tx *bolt.Tx) error
		wantIndex uint64
		// openFails: Open checks entries, leaf hashes, tree and
		// checkpoints but not the indexes (only Verify does).
		openFails bool
		reason    string
		// cause, when set, is a pointer to the type of error the
		// VerifyError wraps besides ErrCorrupt: the one that revealed the
		// damage.
		cause any
	}{
		{
			name: "change a byte of an entry",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				b := tx.Bucket(bucketEntries)
				v := mustGet(t, b, seqKey(123))
				v[len(v)-3] ^= 0x01
				return b.Put(seqKey(123), v)
			},
			wantIndex: 123, openFails: true, reason: "leaf hash",
		},
		{
			name: "delete an entry",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				return tx.Bucket(bucketEntries).Delete(seqKey(77))
			},
			wantIndex: 77, openFails: true, reason: "missing",
		},
		{
			name: "swap two entries",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				b := tx.Bucket(bucketEntries)
				a, c := mustGet(t, b, seqKey(10)), mustGet(t, b, seqKey(200))
				if err := b.Put(seqKey(10), c); err != nil {
					return err
				}
				return b.Put(seqKey(200), a)
			},
			wantIndex: 10, openFails: true, reason: "swapped",
		},
		{
			name: "swap two entries and their leaf hashes",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				for _, name := range [][]byte{bucketEntries, bucketLeaves} {
					b := tx.Bucket(name)
					a, c := mustGet(t, b, seqKey(10)), mustGet(t, b, seqKey(200))
					if err := b.Put(seqKey(10), c); err != nil {
						return err
					}
					if err := b.Put(seqKey(200), a); err != nil {
						return err
					}
				}
				return nil
			},
			wantIndex: 10, openFails: true, reason: "swapped",
		},
		{
			name: "append an entry behind the log's back",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				e := testEntry(tamperLogSize, KindIssuance)
				e.Seq = tamperLogSize
				rec, err := e.MarshalBinary()
				if err != nil {
					return err
				}
				key := seqKey(tamperLogSize)
				if err := tx.Bucket(bucketEntries).Put(key, rec); err != nil {
					return err
				}
				if err := tx.Bucket(bucketLeaves).Put(key, leafHash(rec)); err != nil {
					return err
				}
				for _, p := range indexPuts(e, tamperLogSize, true, nil) {
					if err := tx.Bucket(indexBuckets[p.idx]).Put(p.key, p.val); err != nil {
						return err
					}
				}
				_, err = tx.Bucket(bucketEntries).NextSequence()
				return err
			},
			wantIndex: tamperLogSize, openFails: true, reason: "beyond the Merkle tree",
		},
		{
			name: "change a stored leaf hash",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				b := tx.Bucket(bucketLeaves)
				v := mustGet(t, b, seqKey(50))
				v[0] ^= 0xff
				return b.Put(seqKey(50), v)
			},
			wantIndex: 50, openFails: true, reason: "leaf hash",
		},
		{
			name: "change a stored subtree node",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				b := tx.Bucket(bucketNodes)
				v := mustGet(t, b, nodeKey(8, 0))
				v[0] ^= 0xff
				return b.Put(nodeKey(8, 0), v)
			},
			wantIndex: 0, openFails: true, reason: "tree node",
		},
		{
			name: "rewrite an entry and every hash derived from it",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				// A thorough forger: change entry 150 and recompute its
				// leaf hash, the stored nodes and the tree state. Only the
				// signed checkpoints at 200 and 300 can catch this.
				entries := tx.Bucket(bucketEntries)
				e, err := decodeRecord(mustGet(t, entries, seqKey(150)))
				if err != nil {
					return err
				}
				e.CallerSubject = "someone-else"
				rec := appendRecord(nil, e)
				if err := entries.Put(seqKey(150), rec); err != nil {
					return err
				}
				leaves, nodes := tx.Bucket(bucketLeaves), tx.Bucket(bucketNodes)
				if err := leaves.Put(seqKey(150), leafHash(rec)); err != nil {
					return err
				}
				tb := newTreeBuilder(nil)
				c := leaves.Cursor()
				for k, v := c.First(); k != nil; k, v = c.Next() {
					if err := tb.r.Append(bytes.Clone(v), func(id nodeID, h []byte) {
						if storedNode(id.Level) {
							_ = nodes.Put(nodeKey(id.Level, id.Index), h)
						}
					}); err != nil {
						return err
					}
				}
				return tx.Bucket(bucketMeta).Put(metaKeyTree, encodeTreeState(tb.r.End(), tb.r.Hashes()))
			},
			wantIndex: 100, openFails: true, reason: "checkpoint of size 200",
		},
		{
			name: "forge a checkpoint signature",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				b := tx.Bucket(bucketCheckpoints)
				v := mustGet(t, b, seqKey(200))
				v[len(v)-5] ^= 0x01
				return b.Put(seqKey(200), v)
			},
			wantIndex: 100, openFails: true, reason: "signature", cause: new(*note.InvalidSignatureError),
		},
		{
			name: "remove the newest entries and rewind the tree",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				for i := uint64(250); i < tamperLogSize; i++ {
					if err := tx.Bucket(bucketEntries).Delete(seqKey(i)); err != nil {
						return err
					}
					if err := tx.Bucket(bucketLeaves).Delete(seqKey(i)); err != nil {
						return err
					}
				}
				tb := newTreeBuilder(nil)
				c := tx.Bucket(bucketLeaves).Cursor()
				for k, v := c.First(); k != nil; k, v = c.Next() {
					tb.append(bytes.Clone(v))
				}
				if err := tx.Bucket(bucketEntries).SetSequence(250); err != nil {
					return err
				}
				return tx.Bucket(bucketMeta).Put(metaKeyTree, encodeTreeState(tb.r.End(), tb.r.Hashes()))
			},
			wantIndex: 250, openFails: true, reason: "beyond the tree",
		},
		{
			name: "point a serial at another entry",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				k := indexKeyOf(testEntry(5, KindIssuance), 5, idxSerial)
				if err := tx.Bucket(bucketBySerial).Delete(k); err != nil {
					return err
				}
				binary.BigEndian.PutUint64(k[len(k)-8:], 6)
				return tx.Bucket(bucketBySerial).Put(k, nil)
			},
			wantIndex: 5, reason: "serial index",
		},
		{
			name: "drop an entry from the SPIFFE ID index",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				return tx.Bucket(bucketBySPIFFEID).Delete(indexKeyOf(testEntry(42, kindOf(42)), 42, idxSPIFFEID))
			},
			wantIndex: 42, reason: "missing from the SPIFFE ID index",
		},
		{
			name: "move an index record to another epoch",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				k := indexKeyOf(testEntry(42, kindOf(42)), 42, idxSPIFFEID)
				b := tx.Bucket(bucketBySPIFFEID)
				if err := b.Delete(k); err != nil {
					return err
				}
				return b.Put(epochKey(epochOf(42)+1, k[epochLen:]), nil)
			},
			wantIndex: 42, reason: "does not match entry 42",
		},
		{
			name: "a serial record without its epoch",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				k := indexKeyOf(testEntry(5, KindIssuance), 5, idxSerial)
				return tx.Bucket(bucketBySerial).Put(k[epochLen:], nil)
			},
			wantIndex: 5, reason: "serial index record",
		},
		{
			name: "lower the stored maximum validity",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Put(metaKeyMaxValidity, binary.BigEndian.AppendUint64(nil, uint64(3*time.Hour+30*time.Minute)))
			},
			wantIndex: 4, reason: "maximum validity",
		},
		{
			name: "index record pointing past the end",
			tamper: func(t *testing.T, tx *bolt.Tx) error {
				return tx.Bucket(bucketByNamespace).Put(stringSeqKey("ns-1", 5000), nil)
			},
			wantIndex: 5000, reason: "beyond the log",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tamper(t, orig, func(tx *bolt.Tx) error { return tc.tamper(t, tx) })
			before := readFile(t, path)

			// Verify through a read-only handle names the first bad index.
			ro := openTest(t, path, Options{ReadOnly: true, Verifiers: noteVerifiers(testVerifier(t))})
			_, err := ro.Verify(context.Background(), nil)
			checkVerifyError(t, "Verify", err, tc.wantIndex, tc.reason)
			if tc.cause != nil && !errors.As(err, tc.cause) {
				t.Errorf("Verify: %v does not wrap a %T", err, tc.cause)
			}
			if err := ro.Close(); err != nil {
				t.Fatal(err)
			}

			l, err := Open(path, Options{Signer: testSigner(t)})
			if !tc.openFails {
				if err != nil {
					t.Fatalf("Open: %v (index damage must not stop the log)", err)
				}
				_ = l.Close()
				return
			}
			if err == nil {
				_ = l.Close()
				t.Fatal("Open accepted a tampered log")
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("Open error %q does not name the file", err)
			}
			checkVerifyError(t, "Open", err, tc.wantIndex, "")
			if !bytes.Equal(before, readFile(t, path)) {
				t.Error("Open modified the refused file")
			}
		})
	}
}

// indexKeyOf returns the key of the index id record of entry e at seq, in
// the layout of a new file.
func indexKeyOf(e *Entry, seq uint64, id indexID) []byte {
	for _, p := range indexPuts(e, seq, newFileSchema >= schemaEpochs, nil) {
		if p.idx == id {
			return p.key
		}
	}
	return nil
}

func checkVerifyError(t *testing.T, what string, err error, wantIndex uint64, reason string) {
	t.Helper()
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("%s: %v, want a *VerifyError", what, err)
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("%s: error does not wrap ErrCorrupt", what)
	}
	if ve.Index != wantIndex {
		t.Errorf("%s: first bad index %d (%s), want %d", what, ve.Index, ve.Reason, wantIndex)
	}
	if reason != "" && !strings.Contains(ve.Error(), reason) {
		t.Errorf("%s: reason %q does not mention %q", what, ve.Reason, reason)
	}
}

func TestVerifyIntactLog(t *testing.T) {
	path := buildTamperLog(t)
	l := openTest(t, path, Options{Signer: testSigner(t)})
	var calls []uint64
	res, err := l.Verify(context.Background(), func(done uint64) { calls = append(calls, done) })
	if err != nil {
		t.Fatal(err)
	}
	size, root := l.Root()
	if res.Size != tamperLogSize || res.Size != size || !bytes.Equal(res.Root, root) {
		t.Fatalf("Verify = %+v; log size %d root %x", res, size, root)
	}
	if res.Checkpoints != 3 || res.SignaturesVerified != 3 {
		t.Errorf("checkpoints checked %d, signatures %d; want 3, 3", res.Checkpoints, res.SignaturesVerified)
	}
	if res.Issuances+res.Denials+res.Admin != tamperLogSize || res.Denials == 0 || res.Admin == 0 {
		t.Errorf("kind counts %d/%d/%d", res.Issuances, res.Denials, res.Admin)
	}
	if res.IndexKeys == 0 {
		t.Error("no index keys checked")
	}
	if len(calls) == 0 || calls[len(calls)-1] != tamperLogSize {
		t.Errorf("progress calls %v, want the last to be %d", calls, tamperLogSize)
	}
	if got := binary.BigEndian.Uint64(seqKey(7)); got != 7 {
		t.Fatal(got)
	}
}

// A schema-1 file keeps its own index layout, and Verify checks it.
func TestTamperDetectionSchema1(t *testing.T) {
	withFileSchema(t, 1)
	orig := buildTamperLog(t)
	for _, tc := range []struct {
		name      string
		tamper    func(tx *bolt.Tx) error
		wantIndex uint64
		reason    string
	}{
		{"point a serial at another entry", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketBySerial).Put([]byte(testEntry(5, KindIssuance).Serial), seqKey(6))
		}, 5, "serial index"},
		{"drop an entry from the SPIFFE ID index", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketBySPIFFEID).Delete(indexKeyOf(testEntry(42, kindOf(42)), 42, idxSPIFFEID))
		}, 42, "missing from the SPIFFE ID index"},
		{"a record with an epoch in a schema-1 index", func(tx *bolt.Tx) error {
			k := indexKeyOf(testEntry(42, kindOf(42)), 42, idxSPIFFEID)
			return tx.Bucket(bucketBySPIFFEID).Put(epochKey(0, k), nil)
		}, 42, "does not match entry 42"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tamper(t, orig, tc.tamper)
			l := openTest(t, path, Options{ReadOnly: true, Verifiers: noteVerifiers(testVerifier(t))})
			_, err := l.Verify(context.Background(), nil)
			checkVerifyError(t, "Verify", err, tc.wantIndex, tc.reason)
		})
	}
}
