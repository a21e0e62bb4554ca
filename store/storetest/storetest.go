// Package storetest damages issuance log files the way disks and
// operators do, for tests of the commands and the daemon that must refuse
// them.
package storetest

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// DamageNewerMeta flips a bit in the newer of the two bbolt meta pages of
// a copy of db (bbolt layout: a 16-byte page header, then magic, version,
// page size, flags, root bucket (16 bytes), freelist, pgid, txid,
// checksum) and returns the copy, the page and the newer txid.
func DamageNewerMeta(tb testing.TB, db string) (copyPath string, page int, txid uint64) {
	tb.Helper()
	b, err := os.ReadFile(db)
	if err != nil {
		tb.Fatal(err)
	}
	le := binary.LittleEndian
	pageSize := int(le.Uint32(b[16+8:]))
	tx0, tx1 := le.Uint64(b[16+48:]), le.Uint64(b[pageSize+16+48:])
	page, txid = 0, tx0
	if tx1 > tx0 {
		page, txid = 1, tx1
	}
	b[page*pageSize+16+48] ^= 0x40
	copyPath = filepath.Join(tb.TempDir(), "rolled-back.db")
	// b is the log file's content, not a path: G703 follows it from
	// os.ReadFile into the data argument.
	if err := os.WriteFile(copyPath, b, 0o600); err != nil { //nolint:gosec // G703: see above
		tb.Fatal(err)
	}
	return copyPath, page, txid
}
