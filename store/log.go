package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/merkle/compact"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"

	"github.com/transitca/transitca/internal/atomicfile"
)

// Options configure Open. The zero value is a durable log without
// checkpoints.
type Options struct {
	// NoSync skips fsync. It breaks the durability promise and exists for
	// tests and benchmarks only.
	NoSync bool
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// Signer signs checkpoints; nil means no checkpoints are written.
	// NewNoteSigner adapts an Ed25519 crypto.Signer (such as a Vault
	// Transit key).
	Signer note.Signer
	// Verifiers check stored checkpoints on Open and in Verify. Default:
	// the signer's own verifier if Signer has a Verifier() method (as
	// *NoteSigner does). Without verifiers, checkpoint signatures are not
	// checked (their contents still are).
	Verifiers note.Verifiers
	// Origin is the first line of every checkpoint, the log's identity.
	// Default: Signer.Name().
	Origin string
	// CheckpointEvery writes a checkpoint once this many entries were
	// appended since the last one. Default 4096.
	CheckpointEvery int
	// CheckpointInterval writes a checkpoint this often when entries were
	// appended since the last one. Default 30s.
	CheckpointInterval time.Duration
	// ReadOnly opens the file for reading only (a shared lock, no writes,
	// no integrity check on open; run Verify). Append returns ErrReadOnly.
	ReadOnly bool
	// Witness, if set, keeps the latest checkpoint outside the file. Open
	// refuses (ErrRolledBack) a log that does not extend the witness's
	// checkpoint, and Verify fails on it; every checkpoint the log writes
	// is published to it. Publishing failures are logged, never returned
	// by Append.
	Witness Witness
	// WitnessTimeout bounds each call to the witness. Default 10s.
	WitnessTimeout time.Duration
	// CloseTimeout bounds how long Close waits for the final checkpoint
	// (signing it may need Vault). Default 5s.
	CloseTimeout time.Duration
	// LockTimeout bounds the wait for the file lock. Default 2s.
	LockTimeout time.Duration
	// RecoverInterval is the first wait before a Log whose commit failed
	// tries to reopen its file (see Recovered); the wait doubles after
	// each failed attempt, up to a minute. Default 2s.
	RecoverInterval time.Duration
	// Logger receives background errors (checkpoints). Default
	// slog.Default().
	Logger *slog.Logger

	// acceptLostTxid lets AcceptDamage open a file whose meta page that
	// may have held this transaction is damaged.
	acceptLostTxid uint64
}

const (
	defaultCheckpointEvery    = 4096
	defaultCheckpointInterval = 30 * time.Second
	defaultLockTimeout        = 2 * time.Second
	defaultCloseTimeout       = 5 * time.Second
	defaultWitnessTimeout     = 10 * time.Second
	defaultRecoverInterval    = 2 * time.Second

	// A commit takes at most this many entries or record bytes.
	maxBatchEntries = 4096
	maxBatchBytes   = 32 << 20

	// Group commit lingering, see committer.
	lingerMin = 4
	lingerMax = 500 * time.Microsecond
)

// Log is an append-only, tamper-evident issuance log stored in one bbolt
// file. Its methods are safe for concurrent use.
type Log struct {
	path string
	// db is held shared (dbMu.RLock) while it is used, and exclusively
	// while recovery replaces it; nil only if recovery could not reopen
	// the file at all.
	dbMu      sync.RWMutex
	db        *bolt.DB
	snapMu    sync.Mutex // one Snapshot at a time
	opts      Options
	readOnly  bool
	origin    string
	verifiers note.Verifiers
	logger    *slog.Logger
	txid      int  // bbolt transaction id seen by newLog
	epochs    bool // schema 2 or later: epoch-prefixed index keys
	// serials is the committer's filter of the serials in a schema-2
	// log (see serialTaken); nil until the first append needs it.
	serials *serialFilter

	// Append → committer.
	reqs          chan *appendReq
	closing       chan struct{}
	closeMu       sync.RWMutex // held shared by senders on reqs
	closed        bool
	closeOnce     sync.Once
	closeErr      error
	committerDone chan struct{}

	mu         sync.Mutex
	tree       *compact.Range // committed tree, guarded by mu
	root       []byte         // root of tree, guarded by mu
	failed     error          // the commit failure that stopped appends, guarded by mu
	failedC    chan struct{}  // closed when failed is set, guarded by mu
	recoveredC chan struct{}  // closed when failed is cleared, guarded by mu
	commits    uint64         // guarded by mu
	// commitSizes and commitEntries are Stats.CommitSizes and
	// Stats.CommitEntries; guarded by mu.
	commitSizes   [CommitSizeBuckets]uint64
	commitEntries uint64
	size          atomic.Uint64 // tree.End()

	// Checkpoints.
	cpMu     sync.Mutex // serializes checkpoint writers; guards cpSigned
	cpSigned []byte
	// What the witness holds, as far as this Log knows; guarded by cpMu.
	witnessPrev  []byte
	witnessKnown bool
	cpSize       atomic.Uint64
	cpTime       atomic.Int64 // Unix nanoseconds: the last checkpoint stored, or Open
	cpKick       chan struct{}
	cpStop       chan struct{}
	cpDone       chan struct{}

	// witnessAtOpen is what the witness held when the log was opened
	// (nil: nothing); set once by Open.
	witnessAtOpen []byte
}

// Open opens the log file at path, creating it if it does not exist.
//
// Open inspects an existing file before writing anything: a file that is
// not a bbolt database, is truncated, belongs to another program, or has a
// newer schema is refused with an error naming the file (ErrNotALog,
// ErrCorrupt, ErrSchemaTooNew), and left byte-for-byte unchanged. A file
// locked by another process yields ErrInUse after Options.LockTimeout.
//
// Unless opts.ReadOnly, Open then checks the whole tree: it re-hashes every
// entry, compares with the stored leaf hashes, recomputes the root and
// compares it with every stored checkpoint and with the stored tree state.
// On a mismatch it refuses with a *VerifyError naming the first bad index.
// This reads the whole file: about 2.5 s per million entries on a 2-core
// machine. It also refuses a file with a damaged bbolt meta page
// (*MetaDamageError; see AcceptDamage) and, with Options.Witness, a log
// that does not extend the witness's checkpoint (ErrRolledBack) or whose
// witness cannot be read.
func Open(path string, opts Options) (*Log, error) {
	if err := opts.fill(); err != nil {
		return nil, fmt.Errorf("open log %q: %w", path, err)
	}
	exists, dmg, err := inspectFile(path)
	if err != nil {
		return nil, err
	}
	if dmg != nil && !opts.ReadOnly && dmg.MayBeLost != opts.acceptLostTxid {
		// bbolt would carry on from the older page: refuse, so that the
		// loss is seen and accepted (AcceptDamage), not silently built on.
		return nil, fmt.Errorf("refusing to open the log for appending: %w", dmg)
	}
	if !exists {
		if opts.ReadOnly {
			return nil, fmt.Errorf("log file %q does not exist or is empty: %w", path, ErrNotFound)
		}
		return create(path, opts)
	}

	// Look before writing: a read-only bbolt handle takes a shared lock and
	// never writes. The schema and the whole tree are checked through it.
	ro, err := openBolt(path, &opts, true)
	if err != nil {
		return nil, err
	}
	empty := false
	err = func() (err error) {
		defer recoverCorrupt(path, &err)
		return ro.View(func(tx *bolt.Tx) error {
			if empty = isEmptyDB(tx); empty {
				return nil
			}
			return checkSchema(tx, path)
		})
	}()
	if err == nil && empty && opts.ReadOnly {
		err = fmt.Errorf("log file %q is an empty bbolt database: %w", path, ErrNotFound)
	}
	if err != nil {
		_ = ro.Close()
		return nil, err
	}
	if empty {
		// bbolt initialized the file but the schema was never committed
		// (a crash during creation): there is nothing to lose.
		_ = ro.Close()
		return create(path, opts)
	}
	l, err := newLog(path, ro, opts)
	if err == nil && !opts.ReadOnly {
		err = l.checkOnOpen()
	}
	if err != nil || opts.ReadOnly {
		if err != nil {
			_ = ro.Close()
			return nil, err
		}
		return l, nil
	}
	checked := l.txid
	if err := ro.Close(); err != nil {
		return nil, fmt.Errorf("log file %q: %w", path, err)
	}

	db, err := openBolt(path, &opts, false)
	if err != nil {
		return nil, err
	}
	if l, err = newLog(path, db, opts); err == nil && l.txid != checked {
		// Changed between the two opens: check again.
		err = l.checkOnOpen()
	}
	return started(l, db, err)
}

// create creates a new log file (or initializes an empty one).
func create(path string, opts Options) (*Log, error) {
	db, err := openBolt(path, &opts, false)
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if isEmptyDB(tx) {
			return initSchema(tx, opts.Now())
		}
		return checkSchema(tx, path) // created by someone else meanwhile
	})
	if err == nil && !opts.NoSync {
		// Make the new directory entry durable too.
		err = atomicfile.SyncDir(filepath.Dir(path))
	}
	var l *Log
	if err == nil {
		l, err = newLog(path, db, opts)
	}
	if err == nil {
		err = l.checkOnOpen()
	}
	return started(l, db, err)
}

// started finishes opening a checked log: it checks the log against its
// witness, if it has one, and starts the log's goroutines. If err (what
// came before) or the witness check fails, it closes db.
func started(l *Log, db *bolt.DB, err error) (*Log, error) {
	if err == nil && l.opts.Witness != nil {
		err = l.openWitness()
	}
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	l.start()
	return l, nil
}

func (o *Options) fill() error {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = defaultCheckpointEvery
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = defaultCheckpointInterval
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = defaultLockTimeout
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = defaultCloseTimeout
	}
	if o.WitnessTimeout <= 0 {
		o.WitnessTimeout = defaultWitnessTimeout
	}
	if o.RecoverInterval <= 0 {
		o.RecoverInterval = defaultRecoverInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Signer != nil {
		if o.Origin == "" {
			o.Origin = o.Signer.Name()
		}
		if strings.ContainsAny(o.Origin, "\n\r") {
			return fmt.Errorf("checkpoint origin %q contains a newline", o.Origin)
		}
		if o.Verifiers == nil {
			if s, ok := o.Signer.(interface{ Verifier() note.Verifier }); ok {
				o.Verifiers = note.VerifierList(s.Verifier())
			}
		}
	}
	return nil
}

func newLog(path string, db *bolt.DB, opts Options) (*Log, error) {
	l := &Log{
		path:          path,
		db:            db,
		opts:          opts,
		readOnly:      opts.ReadOnly,
		origin:        opts.Origin,
		verifiers:     opts.Verifiers,
		logger:        opts.Logger,
		reqs:          make(chan *appendReq, maxBatchEntries),
		closing:       make(chan struct{}),
		committerDone: make(chan struct{}),
		failedC:       make(chan struct{}),
		recoveredC:    closedChan(),
		cpKick:        make(chan struct{}, 1),
		cpStop:        make(chan struct{}),
		cpDone:        make(chan struct{}),
	}
	l.cpTime.Store(time.Now().UnixNano())
	err := func() (err error) {
		defer recoverCorrupt(path, &err)
		return db.View(func(tx *bolt.Tx) error {
			l.txid = tx.ID()
			l.epochs = storedSchema(tx) >= schemaEpochs
			tree, err := readTree(tx)
			if err != nil {
				return fmt.Errorf("log file %q: %w", path, err)
			}
			l.tree, l.root = tree, rootOf(tree)
			l.size.Store(tree.End())
			if k, v := tx.Bucket(bucketCheckpoints).Cursor().Last(); k != nil {
				l.cpSize.Store(binary.BigEndian.Uint64(k))
				l.cpSigned = bytes.Clone(v)
			}
			return nil
		})
	}()
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Log) start() {
	go l.committer()
	if l.opts.Signer != nil {
		if l.Size() > l.cpSize.Load() || l.witnessLags() {
			// Entries beyond the last checkpoint (a close that could not
			// sign, a crash): cover them now rather than at the next tick.
			l.cpKick <- struct{}{}
		}
		go l.checkpointLoop()
	} else {
		close(l.cpDone)
	}
}

// Path returns the log file's path.
func (l *Log) Path() string { return l.path }

// Size returns the number of committed entries (the tree size).
func (l *Log) Size() uint64 { return l.size.Load() }

// Root returns the committed tree size and root hash.
func (l *Log) Root() (size uint64, root []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tree.End(), bytes.Clone(l.root)
}

// CommitSizeBuckets is the number of buckets of Stats.CommitSizes: one
// per power of two up to the most entries one group commit takes
// (maxBatchEntries, 2^12), and a last one for larger commits.
const CommitSizeBuckets = 14

// Stats are counters of a Log, for metrics.
type Stats struct {
	Size    uint64 // committed entries
	Commits uint64 // bbolt commits of entries since Open
	// CommitSizes counts those commits by the appends each carried:
	// CommitSizes[0] the commits of one append, CommitSizes[i] those of
	// more than 2^(i-1) and at most 2^i, the last bucket those of more
	// than maxBatchEntries (a batch handed to commit directly, never the
	// group commit). A lone append commits by itself;
	// appends that queue while a commit is under way share the next.
	CommitSizes [CommitSizeBuckets]uint64
	// CommitEntries is the number of appends those commits carried (a
	// duplicate serial refused within a commit included).
	CommitEntries  uint64
	CheckpointSize uint64 // size of the latest stored checkpoint
	Failed         bool   // a commit failed; Append returns ErrFailed
	// CheckpointTime is when this Log last stored a checkpoint, or when it
	// was opened if it has stored none since.
	CheckpointTime time.Time
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{Size: l.tree.End(), Commits: l.commits, CommitSizes: l.commitSizes, CommitEntries: l.commitEntries,
		CheckpointSize: l.cpSize.Load(), Failed: l.failed != nil, CheckpointTime: time.Unix(0, l.cpTime.Load())}
}

// Close stops accepting appends, commits those already queued, writes a
// final checkpoint if entries were added since the last one, and closes the
// file. It waits at most Options.CloseTimeout for the checkpoint signer: if
// it does not answer (Vault unreachable), Close logs it and closes the file
// without the checkpoint, which the next Open writes.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		close(l.closing)
		l.closeMu.Lock()
		l.closed = true
		if !l.readOnly {
			close(l.reqs)
		}
		l.closeMu.Unlock()
		var errs []error
		if !l.readOnly {
			<-l.committerDone
			l.finalCheckpoint()
		}
		l.dbMu.Lock()
		if l.db != nil {
			if err := l.db.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close log %q: %w", l.path, err))
			}
		}
		l.dbMu.Unlock()
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}

// finalCheckpoint stops the checkpoint loop and writes a checkpoint of
// what it did not cover, waiting at most Options.CloseTimeout for both:
// signing needs Vault, and a shutdown must not hang on an unreachable
// Vault. A checkpoint not written now is written soon after the next Open.
func (l *Log) finalCheckpoint() {
	// Close takes no context: nothing of the caller's applies.
	ctx := context.Background()
	close(l.cpStop)
	timer := time.NewTimer(l.opts.CloseTimeout)
	defer timer.Stop()
	select {
	case <-l.cpDone:
	case <-timer.C:
		l.logger.WarnContext(ctx, "issuance log: closing without a final checkpoint: the checkpoint signer did not answer; the checkpoint will be written at the next start",
			slog.String("path", l.path), slog.Uint64("size", l.Size()), slog.Uint64("checkpoint_size", l.cpSize.Load()), slog.Duration("timeout", l.opts.CloseTimeout))
		return
	}
	l.cpMu.Lock()
	lags := l.witnessLags()
	l.cpMu.Unlock()
	if l.opts.Signer == nil || (l.Size() <= l.cpSize.Load() && !lags) {
		return
	}
	done := make(chan error, 1)
	go func() {
		_, err := l.writeCheckpoint()
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-timer.C:
		err = fmt.Errorf("the checkpoint signer did not answer within %v", l.opts.CloseTimeout)
	}
	if err != nil && !errors.Is(err, ErrFailed) {
		l.logger.WarnContext(ctx, "issuance log: closing without a final checkpoint; it will be written at the next start",
			slog.String("path", l.path), slog.Uint64("size", l.Size()), slog.Uint64("checkpoint_size", l.cpSize.Load()), slog.Any("error", err))
	}
}

func (l *Log) isClosed() bool {
	select {
	case <-l.closing:
		return true
	default:
		return false
	}
}

// readable checks that the log can serve a read.
func (l *Log) readable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.isClosed() {
		return ErrClosed
	}
	return nil
}

// Get returns the entry at seq, or an error wrapping ErrNotFound.
func (l *Log) Get(ctx context.Context, seq uint64) (*Entry, error) {
	if err := l.readable(ctx); err != nil {
		return nil, err
	}
	var e *Entry
	err := l.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketEntries).Get(seqKey(seq))
		if v == nil {
			return fmt.Errorf("entry %d: %w", seq, ErrNotFound)
		}
		var err error
		e, err = decodeStored(v, seq)
		return err
	})
	return e, err
}

// LeafData returns the stored record bytes of the entry at seq: the Merkle
// leaf data that VerifyInclusion takes.
func (l *Log) LeafData(ctx context.Context, seq uint64) ([]byte, error) {
	return l.value(ctx, bucketEntries, seqKey(seq), fmt.Sprintf("entry %d", seq))
}

// value returns a copy of what bucket holds under key, or an error wrapping
// ErrNotFound that begins with missing.
func (l *Log) value(ctx context.Context, bucket, key []byte, missing string) ([]byte, error) {
	if err := l.readable(ctx); err != nil {
		return nil, err
	}
	var out []byte
	err := l.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucket).Get(key)
		if v == nil {
			return fmt.Errorf("%s: %w", missing, ErrNotFound)
		}
		out = bytes.Clone(v)
		return nil
	})
	return out, err
}

// view runs fn in a read transaction. bbolt panics when it meets a
// damaged page; view turns that into an error wrapping ErrCorrupt that
// names the file, so that no command and no request crashes on a damaged
// log.
func (l *Log) view(fn func(tx *bolt.Tx) error) (err error) {
	l.dbMu.RLock()
	defer l.dbMu.RUnlock()
	if l.db == nil {
		return l.noFile()
	}
	defer recoverCorrupt(l.path, &err)
	return l.db.View(fn)
}

// update is view for a read-write transaction (rolled back on a panic by
// bbolt).
func (l *Log) update(fn func(tx *bolt.Tx) error) (err error) {
	l.dbMu.RLock()
	defer l.dbMu.RUnlock()
	if l.db == nil {
		return l.noFile()
	}
	defer recoverCorrupt(l.path, &err)
	return l.db.Update(fn)
}

// decodeStored decodes the record stored under seq into an entry that owns
// its memory.
func decodeStored(v []byte, seq uint64) (*Entry, error) {
	e, err := decodeRecord(v)
	if err != nil {
		return nil, fmt.Errorf("entry %d: %w", seq, err)
	}
	if e.Seq != seq {
		return nil, fmt.Errorf("entry %d: %w: record carries seq %d", seq, ErrCorrupt, e.Seq)
	}
	e.Certificate = bytes.Clone(e.Certificate)
	return e, nil
}

var _ io.WriterTo = (*Log)(nil)

// WriteTo writes a consistent snapshot of the log file (a bbolt database
// that Open accepts) to w, for backups. Appends continue meanwhile, but
// the read transaction it holds until w has taken everything keeps bbolt
// from reusing pages: w must be as fast as a local file. For a reader of
// its own pace, use Snapshot.
func (l *Log) WriteTo(w io.Writer) (int64, error) {
	if l.isClosed() {
		return 0, ErrClosed
	}
	var n int64
	err := l.view(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}
