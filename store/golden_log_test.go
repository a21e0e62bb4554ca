package store

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The golden log pins what a log file holds: the record encoding, the
// Merkle tree (leaf hashes, stored subtree nodes, tree state), the signed
// checkpoints and every index. testdata/golden-log.db is a small log built
// by buildGoldenLog; testdata/golden-log.dump is its canonical dump
// (dumpLog). A change to any of these shows up as a diff of the dump, and
// a log file an earlier version wrote must still open and verify.
//
// The dump, not the file's bytes, is compared: bbolt's pages (free lists,
// page allocation, transaction ids) are not part of what the log promises
// and need not be byte-for-byte reproducible.
//
// To regenerate after an intended change: go test ./store -run TestGoldenLog -update
// (an intended change to a format that signed checkpoints commit to also
// needs a migration: existing logs must keep verifying).

const (
	goldenLogFile = "golden-log.db"
	goldenLogDump = "golden-log.dump"
	// goldenLogSize is past 256 so that a level-8 subtree node is stored.
	goldenLogSize = 260
)

// goldenCheckpoints are the sizes checkpointed while the log is built;
// Close adds one of the final size.
var goldenCheckpoints = map[int]bool{100: true, 200: true}

// goldenEntry is entry i of the golden log: testEntry with a short
// certificate, to keep the file small.
func goldenEntry(i int) *Entry {
	e := testEntry(i, kindOf(i))
	if e.Certificate != nil {
		e.Certificate = fakeCert(i, 24)
	}
	return e
}

// buildGoldenLog writes the golden log at path from fixed inputs: fixed
// entries and times, the fixed test checkpoint key, checkpoints only where
// asked for.
func buildGoldenLog(t *testing.T, path string) {
	t.Helper()
	l, err := Open(path, Options{
		NoSync:             true, // generation only: the file is copied, never crashed
		Signer:             testSigner(t),
		Now:                func() time.Time { return testEpoch },
		CheckpointEvery:    1 << 30,
		CheckpointInterval: 24 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range goldenLogSize {
		if _, err := l.Append(ctx, goldenEntry(i)); err != nil {
			t.Fatalf("Append(%d): %v", i, err)
		}
		if goldenCheckpoints[i+1] {
			if _, err := l.WriteCheckpoint(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// writeGoldenLog builds the golden log and writes a compacted copy of it
// (bbolt's Compact: the same buckets, keys and values, no free pages) to
// path, to keep the committed file small.
func writeGoldenLog(t *testing.T, path string) {
	t.Helper()
	built := filepath.Join(t.TempDir(), "log.db")
	buildGoldenLog(t, built)
	src, err := bolt.Open(built, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	dst, err := bolt.Open(path, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bolt.Compact(dst, src, 0); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// dumpLog returns every bucket of the log file at path, nested buckets
// included, with every key and value in hex, in bbolt's key order.
func dumpLog(t *testing.T, path string) string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sb strings.Builder
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			dumpBucket(&sb, "", name, b)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return sb.String()
}

func dumpBucket(sb *strings.Builder, indent string, name []byte, b *bolt.Bucket) {
	fmt.Fprintf(sb, "%sbucket %q\n", indent, name)
	_ = b.ForEach(func(k, v []byte) error {
		if v == nil {
			if nested := b.Bucket(k); nested != nil {
				dumpBucket(sb, indent+"  ", k, nested)
				return nil
			}
		}
		fmt.Fprintf(sb, "%s  %x %x\n", indent, k, v)
		return nil
	})
}

// firstDifference describes where two dumps part: the line number, the
// bucket it is in and both lines.
func firstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	bucket := ""
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d, in %s:\n got: %.200s\nwant: %.200s", i+1, bucket, gl, wl)
		}
		if strings.HasPrefix(strings.TrimLeft(gl, " "), "bucket ") {
			bucket = strings.TrimLeft(gl, " ")
		}
	}
	return "no difference"
}

func TestGoldenLog(t *testing.T) {
	golden := filepath.Join("testdata", goldenLogFile)
	dumpPath := filepath.Join("testdata", goldenLogDump)
	if *update {
		writeGoldenLog(t, golden)
		if err := os.WriteFile(dumpPath, []byte(dumpLog(t, golden)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := string(readFile(t, dumpPath))
	ctx := context.Background()

	t.Run("the committed log verifies", func(t *testing.T) {
		l := openTest(t, copyFile(t, golden), Options{ReadOnly: true, Verifiers: noteVerifiers(testVerifier(t))})
		res, err := l.Verify(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Size != goldenLogSize || res.Checkpoints != len(goldenCheckpoints)+1 {
			t.Fatalf("Verify: %d entries and %d checkpoints, want %d and %d", res.Size, res.Checkpoints, goldenLogSize, len(goldenCheckpoints)+1)
		}
		signed, err := l.LatestCheckpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cp, err := OpenCheckpoint(signed, testVerifier(t))
		if err != nil {
			t.Fatal(err)
		}
		if cp.Origin != testOrigin || cp.Size != goldenLogSize || !bytes.Equal(cp.Root, res.Root) {
			t.Fatalf("latest checkpoint %+v does not commit to the verified tree (size %d, root %x)", cp, res.Size, res.Root)
		}
		// The signed text parses as it is, signature lines and all.
		if body, err := ParseCheckpoint(string(signed)); err != nil || body.String() != cp.String() {
			t.Fatalf("ParseCheckpoint(signed) = %+v, %v; want %+v", body, err, cp)
		}
		// Opening it for appending checks it again, and accepts it.
		w := openTest(t, copyFile(t, golden), Options{Signer: testSigner(t)})
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the committed log holds its dump", func(t *testing.T) {
		if got := dumpLog(t, copyFile(t, golden)); got != want {
			t.Fatalf("%s and %s disagree; regenerate both with -update\n%s", golden, dumpPath, firstDifference(got, want))
		}
	})

	t.Run("rebuilding gives the same log", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "log.db")
		buildGoldenLog(t, path)
		if got := dumpLog(t, path); got != want {
			t.Fatalf("the same entries make a different log file: the tree, the checkpoints or an index changed\n%s\n"+
				"if intended, run go test ./store -run TestGoldenLog -update, and make sure existing logs still verify", firstDifference(got, want))
		}
	})
}
