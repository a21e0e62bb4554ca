package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"

	"golang.org/x/mod/sumdb/note"

	"github.com/transitca/transitca/internal/atomicfile"
	"github.com/transitca/transitca/store"
)

// logAcceptDamage accepts the possible loss a damaged bbolt meta page
// stands for, with an admin entry that records it.
func logAcceptDamage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca log accept-damage", stderr)
	db := fs.String("db", "", "the log file (the daemon must be stopped) (required)")
	txid := fs.Uint64("confirm-txid", 0, "the transaction that may be lost, as \"ca log verify\" names it (required)")
	actor := fs.String("actor", currentUser(), "who accepts the loss, recorded in the log (default: the user running ca)")
	vkeyFlag := fs.String("verifier-key", "", "checkpoint verifier key, or a file holding it, to check checkpoint signatures while opening")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *db == "" || *txid == 0 {
		return errors.New("--db and --confirm-txid are required")
	}
	vs, err := (&logFlags{verifierKey: *vkeyFlag}).verifiers()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	e, err := store.AcceptDamage(ctx, *db, *txid, *actor, store.Options{Verifiers: vs, Logger: log})
	if err != nil {
		return err
	}
	log.WarnContext(ctx, "accepted a damaged bbolt meta page of the issuance log", slog.String("path", *db),
		slog.Uint64("lost_txid", *txid), slog.String("actor", *actor), slog.Uint64("entry", e.Seq))
	fmt.Fprintf(stdout, "accepted: transaction %d of %s may be lost; recorded as entry %d (%s); the log has %d entries\n", *txid, *db, e.Seq, e.Detail, e.Seq+1)
	return nil
}

// currentUser names the user running ca: $USER, else the account of the
// process's user ID (containers and service shells often set no $USER),
// else "uid <n>".
func currentUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return fmt.Sprintf("uid %d", os.Getuid())
}

func logBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log backup", stderr)
	out := fs.String("out", "", "file to write the snapshot to (required)")
	api, ctx, done, err := lf.connect(ctx, fs, args, func() error {
		if *out == "" {
			return errors.New("--out is required")
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer done()
	// A failed or interrupted backup never leaves a partial file behind, and
	// the file appears under its name only once it verified: a damaged log
	// (bbolt copies pages as they are) makes no backup.
	tmp := *out + ".unverified"
	defer os.Remove(tmp)
	n, err := atomicfile.WriteFrom(tmp, 0o600, func(w io.Writer) error { return api.Backup(ctx, w) })
	if err != nil {
		return err
	}
	vs, err := lf.verifiers()
	if err != nil {
		return err
	}
	res, err := verifyFile(ctx, tmp, vs)
	if err != nil {
		return fmt.Errorf("the backup does not verify, not writing %s: %w", *out, err)
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup written to %s (%d bytes, %d entries, verified)\n", *out, n, res.Size)
	return nil
}

// verifyFile runs the full check of a log file, read-only.
func verifyFile(ctx context.Context, path string, vs note.Verifiers) (store.VerifyResult, error) {
	l, err := store.Open(path, store.Options{ReadOnly: true, Verifiers: vs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return store.VerifyResult{}, err
	}
	defer func() { _ = l.Close() }()
	return l.Verify(ctx, nil)
}
