package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/transitca/transitca/internal/daemon"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// logVerify checks every log named (one per replica) in full, each on its
// own, and that no two of them are the same log.
func logVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log verify", stderr)
	since := fs.String("since", "", "also check that the log extends this signed checkpoint kept earlier (a file saved from \"ca log checkpoint\")")
	fs.StringVar(&lf.witnessFile, "witness", "", "with --db: check the log against this witness file (default: "+daemon.WitnessFileName+" next to the log file, if present)")
	var vkey string
	shards, ctx, done, err := lf.connectShards(ctx, fs, args, func() (err error) {
		if len(lf.dbs) > 1 && lf.witnessFile != "" {
			return errors.New("--witness names the witness of one log; with several --db, each is checked against the " + daemon.WitnessFileName + " next to it")
		}
		lf.witnessNextToLog = true
		vkey, err = lf.verifierKeyText()
		return err
	})
	if err != nil {
		return err
	}
	defer done()
	if len(shards) == 1 {
		_, err := verifyShard(ctx, lf, shards[0], vkey, *since, stdout, stderr)
		return err
	}
	if *since != "" {
		return errors.New("--since is a checkpoint of one log: verify that replica's log alone")
	}
	var failed []string
	origins := map[string]string{} // checkpoint origin → shard
	for _, sh := range shards {
		fmt.Fprintf(stdout, "%s: ", sh.name)
		origin, err := verifyShard(ctx, lf, sh, vkey, "", stdout, stderr)
		if err != nil {
			fmt.Fprintf(stdout, "%v\n", err)
			failed = append(failed, sh.name)
			continue
		}
		if other, ok := origins[origin]; ok && origin != "" {
			fmt.Fprintf(stdout, "%s: the same log as %s (origin %q): the same replica named twice, or replicas without distinct log.shard names\n", sh.name, other, origin)
			failed = append(failed, sh.name)
		}
		origins[origin] = sh.name
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d logs do not verify: %s", len(failed), len(shards), strings.Join(failed, ", "))
	}
	if lf.db != "" && vkey == "" {
		fmt.Fprintf(stdout, "all %d logs' structure verified, checkpoint signatures NOT checked (no --verifier-key)\n", len(shards))
		return nil
	}
	fmt.Fprintf(stdout, "all %d logs verified\n", len(shards))
	return nil
}

// verifyShard runs the full check of one log and prints the result; it
// returns the origin of the log's latest checkpoint ("" when it has none).
func verifyShard(ctx context.Context, lf *logFlags, sh shard, vkey, since string, stdout, stderr io.Writer) (string, error) {
	api, local := sh.api, lf.db != ""
	witnessFile := ""
	if local {
		witnessFile = lf.witnessFor(sh.name)
	}
	start := time.Now()
	unsigned := local && vkey == ""
	resp, err := api.VerifyLog(ctx, &adminv1.VerifyLogRequest{})
	if errors.Is(err, store.ErrWrongKey) || status.Code(err) != codes.OK && strings.Contains(err.Error(), store.ErrWrongKey.Error()) {
		return "", fmt.Errorf("--verifier-key %s: %w", keyName(vkey), err)
	}
	if err != nil {
		return "", fmt.Errorf("log does not verify: %w", err)
	}
	cp, err := api.GetCheckpoint(ctx, &adminv1.GetCheckpointRequest{})
	if errors.Is(err, store.ErrNotFound) || status.Code(err) == codes.NotFound {
		if since != "" {
			return "", err
		}
		switch {
		case vkey != "":
			fmt.Fprintln(stderr, "note: the log holds no checkpoint yet, so no signature was checked")
		case local:
			fmt.Fprintln(stderr, "note: no --verifier-key given, so checkpoint signatures were not checked")
		}
		return "", printVerified(stdout, resp, start, "", 0, witnessFile, unsigned)
	}
	if err != nil {
		return "", err
	}
	origin, _, _ := strings.Cut(string(cp.GetCheckpoint()), "\n")
	var sinceSize uint64
	if vkey != "" || since != "" {
		if vkey == "" {
			if local {
				return "", errors.New("--since needs --verifier-key to check the checkpoint's signature")
			}
			vkey = cp.GetVerifierKey()
			fmt.Fprintln(stderr, "note: verifier key taken from the server; pass --verifier-key to check against a key you trust")
		}
		v, err := note.NewVerifier(vkey)
		if err != nil {
			return "", fmt.Errorf("verifier key: %w", err)
		}
		// The signature of the latest checkpoint is checked here too, so
		// that --verifier-key means the same through a daemon.
		latest, err := store.OpenCheckpoint(cp.GetCheckpoint(), v)
		if err != nil {
			return "", fmt.Errorf("log does not verify: latest checkpoint: %w", err)
		}
		if since != "" {
			if sinceSize, err = checkSince(ctx, api, v, since, resp.GetTreeSize(), cp.GetCheckpoint(), latest); err != nil {
				return "", fmt.Errorf("log does not verify: %w", err)
			}
		}
	}
	if local && vkey == "" {
		fmt.Fprintln(stderr, "note: no --verifier-key given, so checkpoint signatures were not checked")
	}
	return origin, printVerified(stdout, resp, start, since, sinceSize, witnessFile, unsigned)
}

// keyName is the name+hash of a verifier key, the part that names it.
func keyName(vkey string) string {
	name, rest, _ := strings.Cut(vkey, "+")
	hash, _, _ := strings.Cut(rest, "+")
	return name + "+" + hash
}

// printVerified says what was verified. unsigned: the structure only (a
// file read without --verifier-key), which anyone who rewrote the file
// could have made consistent.
func printVerified(stdout io.Writer, resp *adminv1.VerifyLogResponse, start time.Time, since string, sinceSize uint64, witnessFile string, unsigned bool) error {
	what, checkpoints := "log verified", "checkpoints checked"
	if unsigned {
		what, checkpoints = "log structure verified, checkpoint signatures NOT checked (no --verifier-key)", "checkpoints' roots checked"
	}
	fmt.Fprintf(stdout, "%s: %d entries, root %s, %d %s (%v)\n",
		what, resp.GetTreeSize(), hex.EncodeToString(resp.GetRootHash()), resp.GetCheckpointsChecked(), checkpoints, time.Since(start).Round(time.Millisecond))
	if since != "" {
		fmt.Fprintf(stdout, "the log extends the checkpoint of size %d in %s (consistency proof verified)\n", sinceSize, since)
	}
	if witnessFile != "" {
		fmt.Fprintf(stdout, "checked against the witness file %s\n", witnessFile)
	}
	return nil
}

// checkSince checks that the log extends the signed checkpoint kept in
// file: the tree and its latest checkpoint are no smaller, and a
// consistency proof from it to the latest checkpoint verifies.
func checkSince(ctx context.Context, api logAPI, v note.Verifier, file string, treeSize uint64, latestSigned []byte, latest store.Checkpoint) (uint64, error) {
	old, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	oldCP, err := store.OpenCheckpoint(old, v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	if oldCP.Size > treeSize {
		return 0, fmt.Errorf("%w: it has %d entries, but the checkpoint in %s says the log had %d: entries were lost (an older file or backup put back?)",
			store.ErrRolledBack, treeSize, file, oldCP.Size)
	}
	if oldCP.Size > latest.Size {
		return 0, fmt.Errorf("%w: its latest checkpoint is of size %d, older than the checkpoint of size %d in %s: checkpoints were lost",
			store.ErrRolledBack, latest.Size, oldCP.Size, file)
	}
	cr, err := api.GetConsistencyProof(ctx, &adminv1.GetConsistencyProofRequest{FromSize: oldCP.Size, ToSize: latest.Size})
	if err != nil {
		return 0, err
	}
	if err := store.VerifyConsistency(old, latestSigned, v, cr.GetProof()); err != nil {
		return 0, fmt.Errorf("%w: the log does not extend the checkpoint of size %d in %s: %w", store.ErrRolledBack, oldCP.Size, file, err)
	}
	return oldCP.Size, nil
}
