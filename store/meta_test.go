package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// metaTxids returns the txid of each bbolt meta page of a file and its
// page size.
func metaTxids(t *testing.T, path string) (txids [2]uint64, valid [2]bool, pageSize int) {
	t.Helper()
	b := readFile(t, path)
	m0 := parseBoltMeta(b[:boltMetaEnd])
	if !m0.valid {
		t.Fatal("meta page 0 is not valid")
	}
	pageSize = int(m0.pageSize)
	m1 := parseBoltMeta(b[pageSize : pageSize+boltMetaEnd])
	return [2]uint64{m0.txid, m1.txid}, [2]bool{m0.valid, m1.valid}, pageSize
}

// damageMeta flips a bit in the txid of the newer (or older) meta page of
// the file, as a torn write or a bad sector would, and returns the page.
func damageMeta(t *testing.T, path string, newer bool) (page int, txids [2]uint64) {
	t.Helper()
	txids, _, pageSize := metaTxids(t, path)
	page = 0
	if (txids[1] > txids[0]) == newer {
		page = 1
	}
	b := readFile(t, path)
	b[page*pageSize+boltMetaOffset+48] ^= 0x40 // txid
	if err := writeFile(path, b); err != nil {
		t.Fatal(err)
	}
	return page, txids
}

// buildMetaLog writes a closed log of 20 entries with a checkpoint at 15;
// its last transaction holds entries 15..19.
func buildMetaLog(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "log.db")
	l := openTest(t, path, Options{Signer: testSigner(t), CheckpointEvery: 1 << 30})
	fillLog(t, l, 15)
	if _, err := l.WriteCheckpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openTest(t, path, Options{})
	fillLogBatched(t, l, 15, 5, 5, func(i int) *Entry { return testEntry(i, kindOf(i)) })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDamagedMetaPage(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		newer bool
	}{
		{"newer meta page", true},
		{"older meta page", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := buildMetaLog(t)
			page, txids := damageMeta(t, path, tc.newer)
			latest := max(txids[0], txids[1])
			damaged := readFile(t, path)

			// Open for appending refuses, naming the page and the
			// transaction at risk.
			_, err := Open(path, Options{Signer: testSigner(t)})
			var me *MetaDamageError
			if !errors.Is(err, ErrCorrupt) || !errors.As(err, &me) {
				t.Fatalf("Open: %v, want a *MetaDamageError", err)
			}
			if me.Page != page || me.MayBeLost != latest+boolInt(!tc.newer) {
				t.Fatalf("damage reported as page %d, transaction %d; damaged page %d, txids %v", me.Page, me.MayBeLost, page, txids)
			}
			for _, want := range []string{path, fmt.Sprintf("meta page %d", page), fmt.Sprint(me.MayBeLost)} {
				if !strings.Contains(err.Error(), want) {
					t.Fatalf("Open error %q does not say %q", err, want)
				}
			}

			// The fsck fails too, whatever bbolt falls back to.
			ro := openTest(t, path, Options{ReadOnly: true})
			if _, err := ro.Verify(ctx, nil); !errors.As(err, &me) {
				t.Fatalf("Verify: %v, want a *MetaDamageError", err)
			}
			_ = ro.Close()
			if !bytes.Equal(readFile(t, path), damaged) {
				t.Fatal("the damaged file was changed")
			}

			// Accepting another transaction than the one at risk changes nothing.
			if _, err := AcceptDamage(ctx, path, me.MayBeLost+1, "alice", Options{}); err == nil {
				t.Fatal("AcceptDamage with the wrong txid succeeded")
			}
			if !bytes.Equal(readFile(t, path), damaged) {
				t.Fatal("a refused AcceptDamage changed the file")
			}

			// Accepting it records what was accepted and repairs the page.
			e, err := AcceptDamage(ctx, path, me.MayBeLost, "alice", Options{})
			if err != nil {
				t.Fatalf("AcceptDamage: %v", err)
			}
			if _, valid, _ := metaTxids(t, path); !valid[0] || !valid[1] {
				t.Fatalf("meta pages valid after AcceptDamage: %v", valid)
			}
			l := openTest(t, path, Options{Signer: testSigner(t)})
			if _, err := l.Verify(ctx, nil); err != nil {
				t.Fatalf("Verify after AcceptDamage: %v", err)
			}
			got, err := l.Get(ctx, e.Seq)
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != KindAdmin || got.Action != "accept-damage" || got.Actor != "alice" ||
				!strings.Contains(got.Detail, fmt.Sprintf(`"meta_page":%d`, page)) || !strings.Contains(got.Detail, fmt.Sprintf(`"lost_txid":%d`, me.MayBeLost)) {
				t.Fatalf("recorded entry: %+v", got)
			}
			wantSize := uint64(20)
			if tc.newer {
				wantSize = 15 // the last transaction (entries 15..19) is gone
			}
			if e.Seq != wantSize {
				t.Fatalf("accept-damage entry at %d, want %d", e.Seq, wantSize)
			}
		})
	}
}

func boolInt(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

var _ = binary.BigEndian
