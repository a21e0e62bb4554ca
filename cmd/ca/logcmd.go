package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/transitca/transitca/store"
)

func runLog(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	subs := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"query":      logQuery,
		"show":       logShow,
		"export":     logExport,
		"verify":     logVerify,
		"prove":      logProve,
		"checkpoint": logCheckpoint,
		"backup":     logBackup,

		"accept-damage": logAcceptDamage,
	}
	if len(args) == 0 || subs[args[0]] == nil {
		fmt.Fprintln(stderr, "usage: ca log query|show|export|verify|prove|checkpoint|backup|accept-damage [flags]")
		fmt.Fprintln(stderr, "\nReads the issuance log through a running daemon's admin API (--addr, with an admin")
		fmt.Fprintln(stderr, "client certificate) or from a file (--db). Run \"ca log <sub> -h\" for flags.")
		if len(args) == 0 {
			return errUsage
		}
		return fmt.Errorf("unknown log subcommand %q", args[0])
	}
	return withDamageHint(subs[args[0]](ctx, args[1:], stdout, stderr))
}

// withDamageHint adds to an error reporting a damaged meta page the
// command that accepts the loss.
func withDamageHint(err error) error {
	if me, ok := errors.AsType[*store.MetaDamageError](err); ok {
		return fmt.Errorf("%w\nreview what may be lost (the entries of the last transaction; if the machine stopped during that commit, they were never acknowledged to a caller); to accept the loss and append again: ca log accept-damage --db %s --confirm-txid %d", err, me.Path, me.MayBeLost)
	}
	return err
}
