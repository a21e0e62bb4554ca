package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// The layout of a bbolt meta page (go.etcd.io/bbolt internal/common: a
// 16-byte page header, then the meta struct in native byte order). It is
// read here, before bbolt sees the file, so that a damaged or truncated file
// is reported instead of crashing the process (bbolt maps the file and a
// truncated file faults on access) and is never written to.
const (
	boltMagic          = 0xED0CDAED
	boltVersion        = 2
	boltMetaOffset     = 16
	boltMetaChecksumAt = boltMetaOffset + 56 // magic..txid
	boltMetaEnd        = boltMetaChecksumAt + 8
)

type boltMeta struct {
	magicOK  bool
	valid    bool
	version  uint32
	pageSize uint32
	pgid     uint64
	txid     uint64
}

func parseBoltMeta(page []byte) boltMeta {
	var m boltMeta
	if len(page) < boltMetaEnd {
		return m
	}
	ne := binary.NativeEndian
	b := page[boltMetaOffset:]
	m.magicOK = ne.Uint32(b[0:]) == boltMagic
	m.version = ne.Uint32(b[4:])
	m.pageSize = ne.Uint32(b[8:])
	m.pgid = ne.Uint64(b[40:])
	m.txid = ne.Uint64(b[48:])
	h := fnv.New64a()
	h.Write(page[boltMetaOffset:boltMetaChecksumAt])
	m.valid = m.magicOK && m.version == boltVersion && h.Sum64() == ne.Uint64(page[boltMetaChecksumAt:]) &&
		m.pageSize >= 512 && m.pageSize <= 1<<20 && m.pageSize&(m.pageSize-1) == 0
	return m
}

// MetaDamageError reports that one of the two bbolt meta pages of a log
// file is damaged. bbolt silently falls back to the other page, that is to
// the state of one transaction earlier: if the damaged page was the newer
// one, the last committed transaction, with every entry and checkpoint it
// held, is gone from the file. A log with a damaged meta page is refused
// for appending and fails Verify until the loss is accepted with
// AcceptDamage. It wraps ErrCorrupt.
type MetaDamageError struct {
	// Path is the log file.
	Path string
	// Page is the damaged meta page, 0 or 1.
	Page int
	// Txid is the transaction of the intact page, the state bbolt uses.
	Txid uint64
	// MayBeLost is the transaction the damaged page held if it was the
	// newer one (Txid+1); it is what AcceptDamage must be told.
	MayBeLost uint64
}

// Error implements error.
func (e *MetaDamageError) Error() string {
	return fmt.Sprintf("log file %q: %v: bbolt meta page %d is damaged (checksum mismatch); the file falls back to meta page %d (transaction %d), so transaction %d, if it was the last one committed, is lost with every entry and checkpoint it held",
		e.Path, ErrCorrupt, e.Page, 1-e.Page, e.Txid, e.MayBeLost)
}

// Unwrap returns ErrCorrupt.
func (e *MetaDamageError) Unwrap() error { return ErrCorrupt }

// readMetas reads the two meta pages of a bbolt file. When page 0 is
// damaged, the page size (and so page 1) is found by trying the sizes
// bbolt uses.
func readMetas(f *os.File) (m0, m1 boltMeta) {
	readPage := func(off int64, n int) []byte {
		buf := make([]byte, n)
		k, _ := f.ReadAt(buf, off)
		return buf[:k]
	}
	m0 = parseBoltMeta(readPage(0, boltMetaEnd))
	if m0.valid {
		return m0, parseBoltMeta(readPage(int64(m0.pageSize), boltMetaEnd))
	}
	for _, ps := range []int64{4096, 8192, 16384, 65536, 1024, 2048, 512} {
		if m := parseBoltMeta(readPage(ps, boltMetaEnd)); m.valid && int64(m.pageSize) == ps {
			return m0, m
		}
	}
	return m0, boltMeta{}
}

// metaDamage returns the damage of one meta page, or nil when both are
// intact (or both damaged, which inspectFile reports).
func metaDamage(path string, m0, m1 boltMeta) *MetaDamageError {
	if m0.valid == m1.valid {
		return nil
	}
	e := &MetaDamageError{Path: path}
	if m0.valid {
		e.Page, e.Txid = 1, m0.txid
	} else {
		e.Page, e.Txid = 0, m1.txid
	}
	e.MayBeLost = e.Txid + 1
	return e
}

// checkMetaPages reads both meta pages of the log file and returns a
// *MetaDamageError if one is damaged. A page read while bbolt writes it can
// look damaged, so a damaged reading is retried before it is believed.
func checkMetaPages(path string) error {
	var dmg *MetaDamageError
	for try := range 3 {
		if try > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("log file %q: %w", path, err)
		}
		m0, m1 := readMetas(f)
		f.Close()
		if dmg = metaDamage(path, m0, m1); dmg == nil {
			return nil
		}
	}
	return dmg
}

// inspectFile checks, reading only, that path is absent or empty (a new
// log) or a complete bbolt database. It returns whether the file holds
// data, and the damage of one meta page (which bbolt would hide by falling
// back to the other).
func inspectFile(path string) (exists bool, dmg *MetaDamageError, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil, nil
	}
	if err != nil {
		return false, nil, fmt.Errorf("log file %q: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, nil, fmt.Errorf("log file %q: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return false, nil, fmt.Errorf("log file %q: %w: not a regular file", path, ErrNotALog)
	}
	size := fi.Size()
	if size == 0 {
		return false, nil, nil
	}
	m0, m1 := readMetas(f)
	best := m0
	if m1.valid && (!best.valid || m1.txid > best.txid) {
		best = m1
	}
	if !best.valid {
		switch {
		case m0.magicOK && m0.version != boltVersion:
			return true, nil, fmt.Errorf("log file %q: %w: bbolt file format version %d is not supported", path, ErrNotALog, m0.version)
		case m0.magicOK:
			return true, nil, fmt.Errorf("log file %q: %w: both bbolt meta pages are damaged (checksum mismatch)", path, ErrCorrupt)
		case size < boltMetaEnd:
			return true, nil, fmt.Errorf("log file %q: %w: %d bytes is too short to be a bbolt database", path, ErrNotALog, size)
		default:
			return true, nil, fmt.Errorf("log file %q: %w: not a bbolt database (no bbolt header)", path, ErrNotALog)
		}
	}
	if need := int64(best.pgid) * int64(best.pageSize); size < need {
		return true, nil, fmt.Errorf("log file %q: %w: file is truncated: it has %d bytes but its bbolt header says the data extends to %d bytes", path, ErrCorrupt, size, need)
	}
	return true, metaDamage(path, m0, m1), nil
}

func boltOptions(opts *Options, readOnly bool) *bolt.Options {
	return &bolt.Options{
		Timeout:         opts.LockTimeout,
		ReadOnly:        readOnly,
		NoSync:          opts.NoSync,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: initialMmapSize,
	}
}

// initialMmapSize is large so that the file is rarely re-mapped: bbolt
// re-maps under a lock that waits for every open read transaction, so a
// long Verify or WriteTo would otherwise stall appends when the file grows.
const initialMmapSize = 1 << 30

// openBolt opens the bbolt file and maps bbolt's errors to this package's.
func openBolt(path string, opts *Options, readOnly bool) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, boltOptions(opts, readOnly))
	if err == nil {
		return db, nil
	}
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("log file %q is in use by another process (no lock within %v): %w", path, opts.LockTimeout, ErrInUse)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, fmt.Errorf("log file %q: %w: %w", path, ErrNotALog, err)
	case errors.Is(err, berrors.ErrChecksum):
		return nil, fmt.Errorf("log file %q: %w: %w", path, ErrCorrupt, err)
	}
	return nil, fmt.Errorf("log file %q: open: %w", path, err)
}

// checkSchema checks that tx is a log this build can read. It only reads.
func checkSchema(tx *bolt.Tx, path string) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return fmt.Errorf("log file %q: %w: it is a bbolt database without a %q bucket (a file of some other program?)", path, ErrNotALog, bucketMeta)
	}
	if got := meta.Get(metaKeyMagic); string(got) != logMagic {
		return fmt.Errorf("log file %q: %w: bucket %q has magic %q, want %q", path, ErrNotALog, bucketMeta, got, logMagic)
	}
	v := meta.Get(metaKeySchema)
	if len(v) != 4 {
		return fmt.Errorf("log file %q: %w: schema version key is missing or malformed", path, ErrCorrupt)
	}
	switch ver := binary.BigEndian.Uint32(v); {
	case ver > schemaVersion:
		return fmt.Errorf("log file %q has schema version %d, this build reads up to version %d: %w", path, ver, schemaVersion, ErrSchemaTooNew)
	case ver < 1:
		return fmt.Errorf("log file %q: %w: schema version %d is invalid", path, ErrCorrupt, ver)
	}
	for _, name := range allBuckets {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("log file %q: %w: bucket %q is missing", path, ErrCorrupt, name)
		}
	}
	return nil
}

// storedSchema returns the schema version of a log that checkSchema
// accepted.
func storedSchema(tx *bolt.Tx) uint32 {
	if v := tx.Bucket(bucketMeta).Get(metaKeySchema); len(v) == 4 {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

// newFileSchema is the schema of the files this build creates: a variable
// for tests, which also create schema-1 files.
var newFileSchema uint32 = schemaVersion

// initSchema creates the buckets and meta keys of a new log.
func initSchema(tx *bolt.Tx, now time.Time) error {
	for _, name := range allBuckets {
		if _, err := tx.CreateBucket(name); err != nil {
			return fmt.Errorf("create bucket %q: %w", name, err)
		}
	}
	meta := tx.Bucket(bucketMeta)
	puts := []struct{ k, v []byte }{
		{metaKeyMagic, []byte(logMagic)},
		{metaKeySchema, binary.BigEndian.AppendUint32(nil, newFileSchema)},
		{metaKeyCreated, []byte(now.UTC().Format(time.RFC3339Nano))},
		{metaKeyTree, encodeTreeState(0, nil)},
		{metaKeyMaxValidity, binary.BigEndian.AppendUint64(nil, 0)},
	}
	for _, p := range puts {
		if err := meta.Put(p.k, p.v); err != nil {
			return err
		}
	}
	return nil
}

// isEmptyDB reports whether a bbolt database has no buckets at all (a file
// bbolt initialized, e.g. after a crash during creation).
func isEmptyDB(tx *bolt.Tx) bool {
	k, _ := tx.Cursor().First()
	return k == nil
}

// recoverCorrupt turns a panic raised by bbolt on a damaged page into an
// ErrCorrupt error.
func recoverCorrupt(path string, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("log file %q: %w: bbolt failed reading the file: %v", path, ErrCorrupt, r)
	}
}
