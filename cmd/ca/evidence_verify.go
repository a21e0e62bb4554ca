package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// States of a log in the report.
const (
	// logVerified: every entry verified and under a signed checkpoint.
	logVerified = "verified"
	// logPartial: every entry verified, the last ones after the latest
	// signed checkpoint (not yet covered by a signature).
	logPartial = "partial"
	// logFailed: the log failed verification (changed, damaged, rolled
	// back, or signed by another key): no figure of it is evidence.
	logFailed = "failed"
)

// evidenceLog is what proves a log the figures come from: its
// verification and the signed checkpoint that covers the period.
type evidenceLog struct {
	// Shard is the address or file the log was read from.
	Shard string `json:"shard"`
	// SHA256 is the SHA-256 of the log file read (with --db), so that the
	// report is tied to its input; "" for a log read through the admin
	// API.
	SHA256 string `json:"sha256,omitempty"`
	// State is logVerified, logPartial or logFailed.
	State       string `json:"state"`
	Verified    bool   `json:"verified"`
	VerifyError string `json:"verify_error,omitempty"`
	// FailedAt is the first entry that failed verification, -1 when the
	// failure names none.
	FailedAt       int64  `json:"failed_at"`
	Entries        uint64 `json:"entries"`
	Root           string `json:"root"`
	Checkpoint     string `json:"checkpoint"`
	CheckpointSize uint64 `json:"checkpoint_size"`
	// AfterCheckpoint is how many entries follow the latest signed
	// checkpoint.
	AfterCheckpoint uint64 `json:"after_checkpoint"`
	VerifierKey     string `json:"verifier_key"`
	// KeySource says where the key the checkpoint was checked with came
	// from.
	KeySource string `json:"key_source"`
	// LastSeqInPeriod is the sequence number of the period's last entry
	// (-1: no entry); CoversPeriod is whether the checkpoint's tree holds it.
	LastSeqInPeriod int64  `json:"last_seq_in_period"`
	CoversPeriod    bool   `json:"covers_period"`
	CheckpointError string `json:"checkpoint_error,omitempty"`
	// Since is the --since checkpoint file the log was checked to extend,
	// SinceSize its size.
	Since     string `json:"since,omitempty"`
	SinceSize uint64 `json:"since_size,omitempty"`
}

// Failure is the one-line reason a failed log failed.
func (lg *evidenceLog) Failure() string {
	if lg.FailedAt >= 0 {
		return fmt.Sprintf("log failed verification at entry %d: %s", lg.FailedAt, lg.VerifyError)
	}
	return "log failed verification: " + lg.VerifyError
}

// corruptAt finds the entry a store.VerifyError names in its text (the
// error may have crossed the admin API as a status message).
var corruptAt = regexp.MustCompile(`corrupt at index ([0-9]+)`)

// fileSHA256 is the hex SHA-256 of the file at path.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path) //nolint:gosec // G304: a log file the auditor named with --db
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// logProof fills lg: the file's hash, the log verified end to end, the
// latest signed checkpoint checked with the verifier key (--verifier-key,
// else the daemon's own), and, with --since, that the log extends the
// checkpoint kept. Failures are reported in the report, not hidden.
func logProof(ctx context.Context, s shard, lf *logFlags, o evidenceOptions, lg *evidenceLog) {
	fail := func(err error) {
		if lg.State == logFailed {
			return // the first failure is the one to show
		}
		lg.State, lg.VerifyError = logFailed, err.Error()
		if m := corruptAt.FindStringSubmatch(err.Error()); m != nil {
			lg.FailedAt, _ = strconv.ParseInt(m[1], 10, 64)
		}
	}
	if len(lf.dbs) > 0 {
		sum, err := fileSHA256(s.name)
		if err != nil {
			fail(err)
		}
		lg.SHA256 = sum
	}
	v, err := s.api.VerifyLog(ctx, &adminv1.VerifyLogRequest{})
	if err != nil {
		fail(err)
	} else {
		lg.Entries, lg.Root = v.GetTreeSize(), fmt.Sprintf("%x", v.GetRootHash())
	}
	cp, err := s.api.GetCheckpoint(ctx, &adminv1.GetCheckpointRequest{})
	if err != nil {
		lg.CheckpointError = err.Error()
	} else {
		lg.Checkpoint, lg.VerifierKey = string(cp.GetCheckpoint()), cp.GetVerifierKey()
		if parsed, err := store.ParseCheckpoint(lg.Checkpoint); err == nil {
			lg.CheckpointSize = parsed.Size
		}
		lg.KeySource = "the daemon's own (pass --verifier-key to check against a key you trust)"
		vkey := lg.VerifierKey
		if o.vkey != "" {
			vkey, lg.KeySource = o.vkey, "--verifier-key"
			lg.VerifierKey = o.vkey
		}
		if err := checkLatest(ctx, s, vkey, cp.GetCheckpoint(), lg, o.since); err != nil {
			fail(err)
		}
	}
	lg.CoversPeriod = lg.Checkpoint != "" && int64(lg.CheckpointSize) > lg.LastSeqInPeriod
	if lg.State == logFailed {
		return
	}
	lg.Verified = true
	lg.State = logVerified
	if lg.CheckpointSize < lg.Entries {
		lg.State, lg.AfterCheckpoint = logPartial, lg.Entries-lg.CheckpointSize
	}
}

// checkLatest checks the latest checkpoint's signature with vkey and,
// when one of the --since files is of this log, that the log extends it.
func checkLatest(ctx context.Context, s shard, vkey string, signed []byte, lg *evidenceLog, since []string) error {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("verifier key: %w", err)
	}
	latest, err := store.OpenCheckpoint(signed, v)
	if err != nil {
		return fmt.Errorf("the latest checkpoint is not signed by the verifier key %s: %w", v.Name(), err)
	}
	for _, file := range since {
		old, err := os.ReadFile(file) //nolint:gosec // G304: a checkpoint file the auditor named with --since
		if err != nil {
			return err
		}
		oldCP, err := store.ParseCheckpoint(string(old))
		if err != nil {
			return fmt.Errorf("--since %s: %w", file, err)
		}
		if oldCP.Origin != latest.Origin {
			continue
		}
		size, err := checkSince(ctx, s.api, v, file, lg.Entries, signed, latest)
		if err != nil {
			return err
		}
		lg.Since, lg.SinceSize = file, size
	}
	return nil
}

// unmatchedSince returns an error naming a --since file that is the
// checkpoint of none of the logs read.
func unmatchedSince(since []string, logs []*evidenceLog) error {
	for _, file := range since {
		matched := false
		for _, lg := range logs {
			if lg.Since == file {
				matched = true
			}
		}
		if matched {
			continue
		}
		old, err := os.ReadFile(file) //nolint:gosec // G304: a checkpoint file the auditor named with --since
		if err != nil {
			return err
		}
		cp, err := store.ParseCheckpoint(string(old))
		if err != nil {
			return fmt.Errorf("--since %s: %w", file, err)
		}
		var origins []string
		for _, lg := range logs {
			if c, err := store.ParseCheckpoint(lg.Checkpoint); err == nil {
				origins = append(origins, c.Origin)
			}
		}
		if len(logs) > 0 && logs[0].State == logFailed && len(logs) == 1 {
			continue // the failure is the report's
		}
		return fmt.Errorf("--since %s is a checkpoint of log %q, which is not among the logs read (%s)", file, cp.Origin, strings.Join(origins, ", "))
	}
	return nil
}

// cannotShow is what the report cannot show, whatever its figures say.
func cannotShow(r *evidenceReport) []string {
	out := []string{
		"That traffic used mutual TLS on the wire: the log shows which certificates were issued, not how they were used. Check that PeerAuthentication is STRICT in every namespace (kubectl get peerauthentication -A) and the rollout report (ca report rollout).",
		"That no key could leave Vault beyond what Vault itself reported: the log keeps Vault's answers (exportable, allow_plaintext_backup, deletion_allowed) at each start and drill, not who could change them in between. Vault's audit log and policies show that.",
		"Downtime outside the log: starts, stops and the gaps between are shown, but not a time when the CA ran and could not be reached, nor requests that never reached it (see monitoring).",
		"Certificates that other CAs trusted by the mesh issued, or that were signed with a copy of a key outside transitca.",
		"That the CA's clock was right: every time is the CA's own.",
		"What happened to a certificate after it was issued (use, revocation, compromise of its key).",
	}
	if r.Dev {
		out = append(out, "Anything about key protection for this log: it was written by a dev-mode CA whose keys were local files.")
	}
	if r.Verification == logPartial {
		out = append(out, "That the entries after the latest signed checkpoint are the ones the CA wrote: they are hash-checked, but no signature covers them yet.")
	}
	sinceGiven := false
	for _, lg := range r.Logs {
		sinceGiven = sinceGiven || lg.Since != ""
	}
	if !sinceGiven {
		out = append(out, "That the log was not rolled back to an earlier copy: give --since with a checkpoint you kept from an earlier audit to check it.")
	}
	return out
}
