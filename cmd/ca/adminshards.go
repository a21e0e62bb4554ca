package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// Each replica answers "root retire" and "revoke-intermediate" from its own
// log. Given every replica's --addr, "ca admin root retire" runs the step
// on the first and "revoke-intermediate" on the first whose log records
// the intermediate, and both search every replica's log: for the
// certificates under the root before retiring it, for those the
// intermediate signed after revoking it.

// several reports whether the flags name several daemons.
func (f *logFlags) several() bool { return f.single() != nil }

// clientFirst connects to the first daemon the flags name, and bounds the
// call by --timeout.
func (f *adminFlags) clientFirst(ctx context.Context) (adminv1.AdminServiceClient, context.Context, func(), error) {
	return f.clientAt(ctx, 0)
}

// clientAt connects to the i-th daemon the flags name, and bounds the call
// by --timeout.
func (f *adminFlags) clientAt(ctx context.Context, i int) (adminv1.AdminServiceClient, context.Context, func(), error) {
	if f.output != "text" && f.output != "json" {
		return nil, nil, nil, fmt.Errorf("-o %q: want text or json", f.output)
	}
	ts, err := f.conn.targets(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	if i >= len(ts) {
		return nil, nil, nil, fmt.Errorf("daemon %d of %d named", i+1, len(ts))
	}
	conn, err := f.conn.dialTarget(ts[i])
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, f.conn.timeout)
	return adminv1.NewAdminServiceClient(conn), ctx, func() { cancel(); conn.Close() }, nil
}

// checkRetireShards refuses the retirement of root version (0: the
// oldest root that is not active, as RetireRoot picks it) while the log of
// any replica named holds an unexpired certificate under it.
func (f *adminFlags) checkRetireShards(ctx context.Context, c adminv1.AdminServiceClient, version int64) error {
	if version == 0 {
		st, err := c.Status(ctx, &adminv1.StatusRequest{})
		if err != nil {
			return err
		}
		for _, r := range st.GetRoots() {
			if r.GetRole() == adminv1.RootRole_ROOT_ROLE_TRUSTED && (version == 0 || r.GetKeyVersion() < version) {
				version = r.GetKeyVersion()
			}
		}
		if version == 0 {
			return nil // the daemon says why there is nothing to retire
		}
	}
	shards, ctx, done, err := f.conn.openShards(ctx)
	if err != nil {
		return err
	}
	defer done()
	m, err := newMergedQuery(shards, &adminv1.QueryLogRequest{
		Kind: adminv1.Kind_KIND_ISSUANCE, ValidAt: timestamppb.Now(), Limit: 1000,
	}, "")
	if err != nil {
		return err
	}
	live := map[string]int{}
	var last time.Time
	for {
		e, from, err := m.Next(ctx)
		if err != nil {
			return err
		}
		if e == nil {
			break
		}
		if e.GetRootKeyVersion() == version {
			live[from.name]++
			if na := e.GetNotAfter().AsTime(); na.After(last) {
				last = na
			}
		}
	}
	if len(live) == 0 {
		return nil
	}
	var where []string
	n := 0
	for _, sh := range shards {
		if live[sh.name] > 0 {
			where = append(where, fmt.Sprintf("%d in %s", live[sh.name], sh.name))
			n += live[sh.name]
		}
	}
	return fmt.Errorf("%d unexpired certificates in the replicas' logs chain only to root version %d (%s); the last expires at %s; retire after that, or force with a reason",
		n, version, strings.Join(where, ", "), last.UTC().Format(time.RFC3339))
}

// revokeTarget returns which of the daemons named (their order in
// openShards) a revocation of the intermediate fp runs on: the first whose
// log records it (in the memory mode, the replica that issued it: the
// only one that can tell the CA did), else the first.
func (f *adminFlags) revokeTarget(ctx context.Context, fp string) (int, error) {
	if fp == "" {
		return 0, nil
	}
	shards, ctx, done, err := f.conn.openShards(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	for i, sh := range shards {
		resp, err := sh.api.QueryLog(ctx, &adminv1.QueryLogRequest{Issuer: strings.ToLower(fp), Limit: 1})
		if err != nil {
			return 0, fmt.Errorf("%s: look up intermediate %s: %w", sh.name, fp, err)
		}
		if len(resp.GetEntries()) > 0 {
			return i, nil
		}
	}
	return 0, nil
}

// errOwnCertRevoked means the caller's own admin certificate chains
// through the intermediate it revoked: the replicas refuse it from then
// on, so it cannot search their logs.
var errOwnCertRevoked = errors.New("the revoked intermediate signed your admin certificate, which every replica refuses from now on")

// waitRevoked waits until every daemon the flags name has followed the
// revocation of the intermediate fp: its status lists fp as compromised
// and another intermediate as current, so that it signs nothing more with
// it and its log holds all it signed. A daemon that refuses the caller's
// certificate because its chain passes through a compromised intermediate
// has followed it too, but cannot be searched with that certificate
// (errOwnCertRevoked).
// A fingerprint no daemon lists as compromised is an error at once.
func (f *adminFlags) waitRevoked(ctx context.Context, fp string) error {
	ts, err := f.conn.targets(ctx)
	if err != nil {
		return err
	}
	clients := make([]adminv1.AdminServiceClient, len(ts))
	for i, t := range ts {
		conn, err := f.conn.dialTarget(t)
		if err != nil {
			return err
		}
		defer conn.Close()
		clients[i] = adminv1.NewAdminServiceClient(conn)
	}
	known := false
	for _, c := range clients {
		st, err := c.Status(ctx, &adminv1.StatusRequest{})
		if err != nil || slices.Contains(st.GetCompromisedIntermediates(), fp) {
			known = true // a refusal is looked at below
			break
		}
	}
	if !known {
		return fmt.Errorf("no daemon named lists intermediate %s as compromised: revoke it first (ca admin revoke-intermediate)", fp)
	}
	for i, c := range clients {
		if err := waitFollowed(ctx, c, fp); errors.Is(err, errOwnCertRevoked) {
			return err
		} else if err != nil {
			return fmt.Errorf("%s: %w", ts[i].addr, err)
		}
	}
	return nil
}

// waitFollowed polls one daemon's status until it has followed the
// revocation of fp.
func waitFollowed(ctx context.Context, c adminv1.AdminServiceClient, fp string) error {
	for {
		st, err := c.Status(ctx, &adminv1.StatusRequest{})
		switch {
		case err == nil && slices.Contains(st.GetCompromisedIntermediates(), fp) && st.GetIntermediate().GetFingerprint() != fp:
			return nil
		case status.Code(err) == codes.Unauthenticated && strings.Contains(status.Convert(err).Message(), "compromised"):
			return errOwnCertRevoked
		case err != nil:
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("it has not followed the revocation of %s (rotation.state_poll_interval): %w", fp, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// signedByInShards returns the unexpired certificates the intermediate
// with fingerprint fp signed, in every replica's log, grouped by workload
// as the daemon groups them, and their number.
func (f *adminFlags) signedByInShards(ctx context.Context, fp string) ([]*adminv1.AffectedWorkload, int, error) {
	shards, ctx, done, err := f.conn.openShards(ctx)
	if err != nil {
		return nil, 0, err
	}
	defer done()
	m, err := newMergedQuery(shards, &adminv1.QueryLogRequest{
		Kind: adminv1.Kind_KIND_ISSUANCE, Issuer: fp, ValidAt: timestamppb.Now(), Limit: 1000,
	}, "")
	if err != nil {
		return nil, 0, err
	}
	byID := map[string]*adminv1.AffectedWorkload{}
	var ids []string
	n := 0
	for {
		e, _, err := m.Next(ctx)
		if err != nil {
			return nil, 0, err
		}
		if e == nil {
			break
		}
		g := byID[e.GetSpiffeId()]
		if g == nil {
			g = &adminv1.AffectedWorkload{Namespace: e.GetNamespace(), ServiceAccount: e.GetServiceAccount(), SpiffeId: e.GetSpiffeId()}
			byID[e.GetSpiffeId()] = g
			ids = append(ids, e.GetSpiffeId())
		}
		g.Serials = append(g.Serials, e.GetSerial())
		if g.LastNotAfter == nil || e.GetNotAfter().AsTime().After(g.LastNotAfter.AsTime()) {
			g.LastNotAfter = e.GetNotAfter()
		}
		n++
	}
	slices.Sort(ids)
	groups := make([]*adminv1.AffectedWorkload, 0, len(ids))
	for _, id := range ids {
		groups = append(groups, byID[id])
	}
	return groups, n, nil
}
