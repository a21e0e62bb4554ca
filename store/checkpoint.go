package store

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/transparency-dev/merkle/proof"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"
)

// Checkpoint is the body of a signed checkpoint, in the transparency-log
// checkpoint format: the origin line, the tree size in decimal and the
// base64 root hash, each followed by a newline.
type Checkpoint struct {
	Origin string
	Size   uint64
	Root   []byte
}

// String returns the checkpoint text that is signed.
func (c Checkpoint) String() string {
	return fmt.Sprintf("%s\n%d\n%s\n", c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Root))
}

// ParseCheckpoint parses checkpoint text. Lines after the third (extension
// lines) are allowed and ignored, so the whole text of a signed checkpoint
// parses too; its signature is not checked (OpenCheckpoint does).
func ParseCheckpoint(text string) (Checkpoint, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint has fewer than 3 lines", ErrInvalidCheckpoint)
	}
	origin, sizeText, rootText := lines[0], lines[1], lines[2]
	if origin == "" {
		return Checkpoint{}, fmt.Errorf("%w: empty origin line", ErrInvalidCheckpoint)
	}
	size, err := strconv.ParseUint(sizeText, 10, 64)
	if err != nil || strconv.FormatUint(size, 10) != sizeText {
		return Checkpoint{}, fmt.Errorf("%w: bad tree size %q", ErrInvalidCheckpoint, sizeText)
	}
	root, err := base64.StdEncoding.DecodeString(rootText)
	if err != nil || len(root) != sha256.Size {
		return Checkpoint{}, fmt.Errorf("%w: bad root hash %q", ErrInvalidCheckpoint, rootText)
	}
	return Checkpoint{Origin: origin, Size: size, Root: root}, nil
}

// OpenCheckpoint checks the signature of a signed checkpoint (a note) with v
// and returns its body.
func OpenCheckpoint(signed []byte, v note.Verifier) (Checkpoint, error) {
	if v == nil {
		return Checkpoint{}, fmt.Errorf("%w: no verifier", ErrInvalidCheckpoint)
	}
	return openCheckpoint(signed, note.VerifierList(v))
}

func openCheckpoint(signed []byte, vs note.Verifiers) (Checkpoint, error) {
	n, err := note.Open(signed, vs)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: signature: %w", ErrInvalidCheckpoint, err)
	}
	return ParseCheckpoint(n.Text)
}

// VerifyInclusion checks, offline, that leaf (the record bytes of the entry,
// see Entry.MarshalBinary) is the entry at index in the tree that the signed
// checkpoint commits to. It needs nothing but the checkpoint, the log's
// verifier and the proof from InclusionProof. It returns the verified
// checkpoint, whose Origin the caller should compare with the log it
// expects.
func VerifyInclusion(checkpoint []byte, v note.Verifier, leaf []byte, index uint64, inclusion [][]byte) (Checkpoint, error) {
	cp, err := OpenCheckpoint(checkpoint, v)
	if err != nil {
		return Checkpoint{}, err
	}
	if index >= cp.Size {
		return cp, fmt.Errorf("%w: index %d is not in a tree of size %d", ErrInvalidProof, index, cp.Size)
	}
	if seq, ok := recordSeq(leaf); !ok || seq != index {
		return cp, fmt.Errorf("%w: leaf is not the record of entry %d", ErrInvalidProof, index)
	}
	if err := proof.VerifyInclusion(hasher, index, cp.Size, leafHash(leaf), inclusion, cp.Root); err != nil {
		return cp, fmt.Errorf("%w: inclusion of entry %d in tree of size %d: %w", ErrInvalidProof, index, cp.Size, err)
	}
	return cp, nil
}

// VerifyConsistency checks, offline, that the tree of the newer signed
// checkpoint extends the tree of the older one (same origin, append-only),
// given the proof from ConsistencyProof(older size, newer size).
func VerifyConsistency(older, newer []byte, v note.Verifier, consistency [][]byte) error {
	cp1, err := OpenCheckpoint(older, v)
	if err != nil {
		return fmt.Errorf("older checkpoint: %w", err)
	}
	cp2, err := OpenCheckpoint(newer, v)
	if err != nil {
		return fmt.Errorf("newer checkpoint: %w", err)
	}
	if cp1.Origin != cp2.Origin {
		return fmt.Errorf("%w: checkpoints are of different logs (%q, %q)", ErrInvalidProof, cp1.Origin, cp2.Origin)
	}
	if err := proof.VerifyConsistency(hasher, cp1.Size, cp2.Size, consistency, cp1.Root, cp2.Root); err != nil {
		return fmt.Errorf("%w: consistency between sizes %d and %d: %w", ErrInvalidProof, cp1.Size, cp2.Size, err)
	}
	return nil
}

// algEd25519 is the note signature algorithm byte of Ed25519.
const algEd25519 = 1

// noteKeyHash is the note key hash: the first 4 bytes (big-endian) of
// SHA-256(name || "\n" || 0x01 || public key).
func noteKeyHash(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte("\n"))
	h.Write([]byte{algEd25519})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

func validNoteName(name string) error {
	if name == "" || !utf8.ValidString(name) || strings.IndexFunc(name, unicode.IsSpace) >= 0 || strings.Contains(name, "+") {
		return fmt.Errorf("invalid key name %q: it must be non-empty, without spaces or '+'", name)
	}
	return nil
}

// NoteSigner is a note.Signer backed by an Ed25519 crypto.Signer. It
// checks every signature it returns against the public key, so that a
// remote signer that signs with another key (for example after a key
// rotation) fails loudly instead of producing checkpoints nobody can verify.
type NoteSigner struct {
	name   string
	hash   uint32
	pub    ed25519.PublicKey
	signer crypto.Signer
}

// NewNoteSigner wraps an Ed25519 crypto.Signer (s.Public() must be an
// ed25519.PublicKey) as a note signer named name. The signer is called with
// crypto.Hash(0), i.e. pure Ed25519 over the checkpoint text.
func NewNoteSigner(name string, s crypto.Signer) (*NoteSigner, error) {
	if err := validNoteName(name); err != nil {
		return nil, err
	}
	if s == nil {
		return nil, errors.New("nil signer")
	}
	pub, ok := s.Public().(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("checkpoint signer key is %T, want an Ed25519 key", s.Public())
	}
	return &NoteSigner{name: name, hash: noteKeyHash(name, pub), pub: pub, signer: s}, nil
}

// Name implements note.Signer.
func (s *NoteSigner) Name() string { return s.name }

// KeyHash implements note.Signer.
func (s *NoteSigner) KeyHash() uint32 { return s.hash }

// Sign implements note.Signer.
func (s *NoteSigner) Sign(msg []byte) ([]byte, error) {
	sig, err := s.signer.Sign(rand.Reader, msg, crypto.Hash(0))
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	if !ed25519.Verify(s.pub, msg, sig) {
		return nil, errors.New("sign checkpoint: the signature does not verify with the signer's public key")
	}
	return sig, nil
}

// Verifier returns the note verifier of this signer's key.
func (s *NoteSigner) Verifier() note.Verifier {
	v, err := NewNoteVerifier(s.name, s.pub)
	if err != nil {
		panic(err) // unreachable: name and key were checked by NewNoteSigner
	}
	return v
}

// VerifierKey returns the standard note verifier key text of the signer.
func (s *NoteSigner) VerifierKey() string {
	k, err := VerifierKey(s.name, s.pub)
	if err != nil {
		panic(err) // unreachable
	}
	return k
}

// NewNoteVerifier returns the note verifier of an Ed25519 public key.
func NewNoteVerifier(name string, pub ed25519.PublicKey) (note.Verifier, error) {
	vkey, err := VerifierKey(name, pub)
	if err != nil {
		return nil, err
	}
	return note.NewVerifier(vkey)
}

// VerifierKey returns the verifier key text "<name>+<hash>+<base64(0x01 ||
// pub)>" that note.NewVerifier and transparency-log tooling accept.
func VerifierKey(name string, pub ed25519.PublicKey) (string, error) {
	if err := validNoteName(name); err != nil {
		return "", err
	}
	if len(pub) != ed25519.PublicKeySize {
		return "", fmt.Errorf("public key has %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	return fmt.Sprintf("%s+%08x+%s", name, noteKeyHash(name, pub),
		base64.StdEncoding.EncodeToString(append([]byte{algEd25519}, pub...))), nil
}

// LatestCheckpoint returns the newest stored signed checkpoint, or an error
// wrapping ErrNotFound if there is none.
func (l *Log) LatestCheckpoint(ctx context.Context) ([]byte, error) {
	if err := l.readable(ctx); err != nil {
		return nil, err
	}
	var out []byte
	err := l.view(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bucketCheckpoints).Cursor().Last()
		if k == nil {
			return fmt.Errorf("no checkpoint in log %q: %w", l.path, ErrNotFound)
		}
		out = bytes.Clone(v)
		return nil
	})
	return out, err
}

// Checkpoints returns the sizes of all stored checkpoints, oldest first.
func (l *Log) Checkpoints(ctx context.Context) ([]uint64, error) {
	if err := l.readable(ctx); err != nil {
		return nil, err
	}
	var sizes []uint64
	err := l.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCheckpoints).ForEach(func(k, _ []byte) error {
			sizes = append(sizes, binary.BigEndian.Uint64(k))
			return nil
		})
	})
	return sizes, err
}

// CheckpointAt returns the stored signed checkpoint of the given tree size,
// or an error wrapping ErrNotFound.
func (l *Log) CheckpointAt(ctx context.Context, size uint64) ([]byte, error) {
	return l.value(ctx, bucketCheckpoints, seqKey(size), fmt.Sprintf("no checkpoint of size %d", size))
}

// WriteCheckpoint signs and stores a checkpoint of the current tree now,
// unless one of that size exists, and returns it. It needs Options.Signer.
func (l *Log) WriteCheckpoint(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if l.readOnly {
		return nil, ErrReadOnly
	}
	if l.isClosed() {
		return nil, ErrClosed
	}
	return l.writeCheckpoint()
}

func (l *Log) writeCheckpoint() ([]byte, error) {
	if l.opts.Signer == nil {
		return nil, errors.New("no checkpoint signer configured")
	}
	l.cpMu.Lock()
	defer l.cpMu.Unlock()
	l.mu.Lock()
	size, root, failed := l.tree.End(), l.root, l.failed
	l.mu.Unlock()
	if failed != nil {
		return nil, fmt.Errorf("checkpoint: %w", ErrFailed)
	}
	if size == 0 {
		return nil, fmt.Errorf("checkpoint: the log is empty: %w", ErrNotFound)
	}
	if size == l.cpSize.Load() {
		l.publishLocked()
		return bytes.Clone(l.cpSigned), nil
	}
	cp := Checkpoint{Origin: l.origin, Size: size, Root: root}
	signed, err := note.Sign(&note.Note{Text: cp.String()}, l.opts.Signer)
	if err != nil {
		return nil, fmt.Errorf("checkpoint of size %d: %w", size, err)
	}
	if l.verifiers != nil {
		if _, err := openCheckpoint(signed, l.verifiers); err != nil {
			return nil, fmt.Errorf("checkpoint of size %d does not verify: %w", size, err)
		}
	}
	err = l.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCheckpoints)
		b.FillPercent = 1
		return b.Put(seqKey(size), signed)
	})
	if err != nil {
		// A failed commit leaves bbolt's state unknown, as for entries.
		return nil, l.fail(fmt.Errorf("store checkpoint of size %d: commit failed: %w (%w)", size, err, ErrFailed))
	}
	l.cpSigned = signed
	l.cpSize.Store(size)
	l.cpTime.Store(time.Now().UnixNano())
	l.publishLocked()
	return bytes.Clone(signed), nil
}

// checkpointLoop writes checkpoints when kicked by the committer (every
// CheckpointEvery entries) or on the CheckpointInterval ticker.
func (l *Log) checkpointLoop() {
	defer close(l.cpDone)
	t := time.NewTicker(l.opts.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-l.cpStop:
			return
		case <-l.cpKick:
		case <-t.C:
		}
		l.cpMu.Lock()
		lags := l.witnessLags()
		l.cpMu.Unlock()
		if l.Size() == l.cpSize.Load() && !lags {
			continue
		}
		if _, err := l.writeCheckpoint(); err != nil {
			// The loop outlives every request: no caller's context applies.
			l.logger.ErrorContext(context.Background(), "issuance log: checkpoint failed",
				slog.String("path", l.path), slog.Uint64("size", l.Size()), slog.Any("error", err))
		}
	}
}
