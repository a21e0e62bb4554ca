package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/transitca/transitca/store"
)

func runLog(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	subs := map[string]runFunc{
		"query":      logQuery,
		"show":       logShow,
		"export":     logExport,
		"verify":     logVerify,
		"prove":      logProve,
		"checkpoint": logCheckpoint,
		"backup":     logBackup,

		"accept-damage": logAcceptDamage,
	}
	return runLogSubcommand(ctx, args, stdout, stderr, subs, "log subcommand", `usage: ca log query|show|export|verify|prove|checkpoint|backup|accept-damage [flags]

Reads the issuance log through a running daemon's admin API (--addr, with an admin
client certificate) or from a file (--db). Run "ca log <sub> -h" for flags.
`)
}

// runLogSubcommand runs the subcommand of ca log or ca report that args[0]
// names in subs, adding to its error the command that accepts a damaged
// log; without a subcommand, or with one it does not know (what names the
// kind), it prints usage and fails.
func runLogSubcommand(ctx context.Context, args []string, stdout, stderr io.Writer, subs map[string]runFunc, what, usage string) error {
	if len(args) == 0 || subs[args[0]] == nil {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return errUsage
		}
		return fmt.Errorf("unknown %s %q", what, args[0])
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
