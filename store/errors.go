package store

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors returned by this package wrap one of these (test
// with errors.Is) and, where a file is involved, name the file.
var (
	// ErrNotFound is returned when a requested entry, checkpoint or file
	// does not exist.
	ErrNotFound = errors.New("not found")

	// ErrCorrupt is returned when the log file is damaged or its contents
	// fail an integrity check: a truncated file, a record that does not
	// decode, a leaf hash or Merkle root that does not match the entries.
	// A *VerifyError wraps ErrCorrupt and names the first bad index.
	ErrCorrupt = errors.New("log is corrupt")

	// ErrSchemaTooNew is returned by Open when the file was written by a
	// newer version of this package, with a schema this build cannot read.
	// The file is left untouched.
	ErrSchemaTooNew = errors.New("log schema is newer than this build supports")

	// ErrNotALog is returned by Open when the file is not a bbolt database,
	// or is a bbolt database that was not created by this package. The file
	// is left untouched.
	ErrNotALog = errors.New("not an issuance log")

	// ErrInUse is returned by Open when another process (or another Log in
	// this process) holds the file's lock.
	ErrInUse = errors.New("log file is in use by another process")

	// ErrClosed is returned by operations on a closed Log.
	ErrClosed = errors.New("log is closed")

	// ErrReadOnly is returned by Append and WriteCheckpoint on a Log opened
	// with Options.ReadOnly.
	ErrReadOnly = errors.New("log is open read-only")

	// ErrFailed is returned by Append after a commit failed. The outcome of
	// a failed commit on disk is unknown (an fsync error may or may not have
	// persisted the data), so the Log refuses further appends until it
	// has reopened and re-checked the file by itself (Log.Recovered).
	ErrFailed = errors.New("log stopped accepting appends after a failed commit")

	// ErrInvalidEntry is returned by Append for an entry that fails
	// validation. Nothing is written.
	ErrInvalidEntry = errors.New("invalid entry")

	// ErrDuplicateSerial is returned by Append for an issuance whose serial
	// number is already in the log. Nothing is written for that entry.
	ErrDuplicateSerial = errors.New("serial number already in the log")

	// ErrInvalidQuery is returned by Query for a malformed query or page
	// token.
	ErrInvalidQuery = errors.New("invalid query")

	// ErrInvalidCheckpoint is returned when a checkpoint does not parse or
	// its signature does not verify.
	ErrInvalidCheckpoint = errors.New("invalid checkpoint")

	// ErrRolledBack is returned by Open and Verify when the log's tree is
	// smaller than, or does not extend, a checkpoint the log published
	// earlier (to its Witness, or kept by an auditor): entries that were
	// acknowledged are gone, or were replaced.
	ErrRolledBack = errors.New("log is behind or diverges from a checkpoint it published")

	// ErrNoSpace is returned by Snapshot when the copy would leave too
	// little free space for the log to go on appending. Nothing is
	// written.
	ErrNoSpace = errors.New("not enough free space for a snapshot")

	// ErrInvalidProof is returned when an inclusion or consistency proof
	// does not verify against a checkpoint.
	ErrInvalidProof = errors.New("invalid proof")

	// ErrWrongKey is returned by Open and Verify, given Options.Verifiers,
	// when no stored checkpoint is signed by any of them: the key is that
	// of another log or CA (or the whole log was re-signed), which says
	// nothing about the entries.
	ErrWrongKey = errors.New("the verifier key does not match the log's checkpoints")
)

// VerifyError reports the first index at which a log failed an integrity
// check. It wraps ErrCorrupt.
type VerifyError struct {
	// Index is the lowest leaf index found to be bad.
	Index uint64
	// Reason says what is wrong, in words.
	Reason string
	// Err is the error that revealed the problem (a signature, proof or
	// decoding error), when there is one.
	Err error
}

// Error implements error.
func (e *VerifyError) Error() string {
	return fmt.Sprintf("log is corrupt at index %d: %s", e.Index, e.Reason)
}

// Unwrap returns ErrCorrupt and Err.
func (e *VerifyError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrCorrupt}
	}
	return []error{ErrCorrupt, e.Err}
}

// verifyErrorf formats the reason like fmt.Errorf; the error a %w verb
// names becomes Err.
func verifyErrorf(index uint64, format string, args ...any) *VerifyError {
	err := fmt.Errorf(format, args...)
	return &VerifyError{Index: index, Reason: err.Error(), Err: errors.Unwrap(err)}
}
