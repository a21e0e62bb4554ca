package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// ActionAcceptDamage is the Action of the admin entry AcceptDamage appends.
const ActionAcceptDamage = "accept-damage"

// AcceptDamage accepts, after review, the possible loss that a damaged
// bbolt meta page of the log at path stands for (see MetaDamageError), so
// that the log can be opened for appending again.
//
// lostTxid must be the MayBeLost of the damage found now: it confirms that
// the caller reviewed this damage and not another. AcceptDamage opens the
// log (checking the whole tree, as Open does), appends an admin entry
// recording who accepted what (the damaged page, the transaction bbolt fell
// back to, the one that may be lost, the tree and checkpoint sizes that
// remain) and closes it. That commit rewrites the damaged meta page (bbolt
// writes the meta page of transaction N to page N%2, and the next
// transaction is MayBeLost), and AcceptDamage checks that both meta pages
// are intact afterwards. It returns the entry it appended.
//
// opts are the Options of Open (Signer, Verifiers, Witness...); ReadOnly is
// ignored.
func AcceptDamage(ctx context.Context, path string, lostTxid uint64, actor string, opts Options) (*Entry, error) {
	if actor == "" {
		return nil, errors.New("accept damage: the actor is required")
	}
	_, dmg, err := inspectFile(path)
	if err != nil {
		return nil, err
	}
	if dmg == nil {
		return nil, fmt.Errorf("log file %q: both bbolt meta pages are intact: there is no damage to accept", path)
	}
	if dmg.MayBeLost != lostTxid {
		return nil, fmt.Errorf("accept damage: the damage found is to transaction %d, not %d (nothing changed): %w", dmg.MayBeLost, lostTxid, dmg)
	}
	opts.ReadOnly = false
	opts.acceptLostTxid = lostTxid
	l, err := Open(path, opts)
	if err != nil {
		return nil, err
	}
	size, _ := l.Root()
	detail, _ := json.Marshal(map[string]any{
		"meta_page":       dmg.Page,
		"fallback_txid":   dmg.Txid,
		"lost_txid":       dmg.MayBeLost,
		"tree_size":       size,
		"checkpoint_size": l.cpSize.Load(),
	})
	e := &Entry{Kind: KindAdmin, Action: ActionAcceptDamage, Actor: actor, Detail: string(detail)}
	_, err = l.Append(ctx, e)
	if cerr := l.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("accept damage of log file %q: %w", path, err)
	}
	if _, dmg, err := inspectFile(path); err != nil || dmg != nil {
		return nil, fmt.Errorf("log file %q: the meta page is still damaged after the accepting commit: %w", path, errors.Join(err, dmgErr(dmg)))
	}
	return e, nil
}

func dmgErr(d *MetaDamageError) error {
	if d == nil {
		return nil
	}
	return d
}
