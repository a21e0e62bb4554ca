package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/transitca/transitca/internal/atomicfile"
	"github.com/transitca/transitca/internal/daemon"
	"github.com/transitca/transitca/store"
)

// A signed report is a note (golang.org/x/mod/sumdb/note), signed with the
// log's checkpoint key, whose text ties the report's bytes to the logs it
// was made from:
//
//	transitca evidence report
//	sha256 <hex SHA-256 of the report file>
//	size <bytes>
//	log <checkpoint origin> <checkpoint size> <base64 root> <sha256 of the log file, or ->
//
// Its second line is not a tree size, so no such note can be taken for a
// checkpoint, which the same key signs.
const reportNoteHeader = "transitca evidence report"

// ErrReportChanged is returned by ca report verify for a report whose bytes
// are not those that were signed.
var ErrReportChanged = errors.New("the report was changed after it was signed")

// reportNoteText is the text signed for a report of data made from logs.
func reportNoteText(data []byte, logs []*evidenceLog) string {
	sum := sha256.Sum256(data)
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nsha256 %s\nsize %d\n", reportNoteHeader, hex.EncodeToString(sum[:]), len(data))
	for _, lg := range logs {
		cp, err := store.ParseCheckpoint(lg.Checkpoint)
		if err != nil {
			continue
		}
		file := lg.SHA256
		if file == "" {
			file = "-"
		}
		fmt.Fprintf(&b, "log %s %d %s %s\n", strings.ReplaceAll(cp.Origin, " ", "_"), cp.Size, strings.SplitN(lg.Checkpoint, "\n", 4)[2], file)
	}
	return b.String()
}

// signReport signs the report file at path with the log's checkpoint key,
// reached through the CA's configuration (cf), and writes the signature
// to path + ".sig".
func signReport(ctx context.Context, cf commonFlags, path string, logs []*evidenceLog) (string, error) {
	cfg, err := cf.load()
	if err != nil {
		return "", fmt.Errorf("--sign: %w", err)
	}
	b, err := daemon.OpenBackend(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return "", fmt.Errorf("--sign: key backend: %w", err)
	}
	if b.Transit != nil {
		defer b.Transit.Close()
	}
	signer, _, err := daemon.CheckpointSigner(ctx, cfg, b)
	if err != nil {
		return "", fmt.Errorf("--sign: %w", err)
	}
	data, err := os.ReadFile(path) //nolint:gosec // G304: the report this command just wrote, at the path --out named
	if err != nil {
		return "", err
	}
	sig, err := note.Sign(&note.Note{Text: reportNoteText(data, logs)}, signer)
	if err != nil {
		return "", fmt.Errorf("--sign: %w", err)
	}
	sigPath := path + ".sig"
	if err := atomicfile.Write(sigPath, sig, 0o644); err != nil {
		return "", err
	}
	return sigPath, nil
}

// reportVerify checks a report against its detached signature: signed by
// the key given, and byte for byte the report that was signed.
func reportVerify(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca report verify", stderr)
	sigFile := fs.String("sig", "", "the detached signature (default: the report's path with .sig appended)")
	lf := &logFlags{}
	fs.StringVar(&lf.verifierKey, "verifier-key", "", "the log's checkpoint verifier key you trust, or a file holding it (required)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ca report verify [--sig FILE] --verifier-key KEY REPORT")
		fs.PrintDefaults()
	}
	// The report may come before or after the flags.
	var report string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return errUsage
		}
		if fs.NArg() == 0 || report != "" {
			break
		}
		report, args = fs.Arg(0), fs.Args()[1:]
	}
	if report == "" || fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	if *sigFile == "" {
		*sigFile = report + ".sig"
	}
	vkey, err := lf.verifierKeyText()
	if err != nil {
		return err
	}
	if vkey == "" {
		return errors.New("--verifier-key is required: the key you trust, not one the report names")
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("--verifier-key: %w", err)
	}
	sig, err := os.ReadFile(*sigFile) //nolint:gosec // G304: the signature file the auditor named
	if err != nil {
		return err
	}
	data, err := os.ReadFile(report) //nolint:gosec // G304: the report the auditor named
	if err != nil {
		return err
	}
	want, err := checkReport(data, sig, v)
	if err != nil {
		return fmt.Errorf("%s (signature %s, key %s): %w", report, *sigFile, keyName(vkey), err)
	}
	fmt.Fprintf(stdout, "%s: signature verified with %s; the report is byte for byte the one signed (SHA-256 %s)\n", filepath.Base(report), keyName(vkey), want.sha256)
	for _, l := range want.logs {
		fmt.Fprintf(stdout, "made from %s\n", l)
	}
	return nil
}

// checkReport checks that sig, verified with v, is the signature of a
// report whose bytes are data.
func checkReport(data, sig []byte, v note.Verifier) (*reportNote, error) {
	n, err := note.Open(sig, note.VerifierList(v))
	if err != nil {
		return nil, fmt.Errorf("the signature does not verify: %w", err)
	}
	want, err := parseReportNote(n.Text)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != want.sha256 || int64(len(data)) != want.size {
		return nil, fmt.Errorf("%w: the file has SHA-256 %s and %d bytes; the signature is for SHA-256 %s and %d bytes",
			ErrReportChanged, got, len(data), want.sha256, want.size)
	}
	return want, nil
}

// reportNote is the signed text of a report.
type reportNote struct {
	sha256 string
	size   int64
	logs   []string
}

func parseReportNote(text string) (*reportNote, error) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 || lines[0] != reportNoteHeader {
		return nil, errors.New("not the signature of an evidence report")
	}
	r := &reportNote{}
	sum, ok := strings.CutPrefix(lines[1], "sha256 ")
	size, ok2 := strings.CutPrefix(lines[2], "size ")
	n, err := strconv.ParseInt(size, 10, 64)
	if !ok || !ok2 || err != nil || len(sum) != 64 {
		return nil, errors.New("the signed text of the report does not parse")
	}
	r.sha256, r.size = sum, n
	for _, l := range lines[3:] {
		if f := strings.Fields(l); len(f) == 5 && f[0] == "log" {
			what := fmt.Sprintf("log %s, checkpoint of size %s, root %s", f[1], f[2], f[3])
			if f[4] != "-" {
				what += ", file SHA-256 " + f[4]
			}
			r.logs = append(r.logs, what)
		}
	}
	return r, nil
}
