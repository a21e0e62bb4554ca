package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// Several replicas each keep their own issuance log, a shard. "ca log
// query", "export" and "verify" read every shard named by a repeated
// --addr (or --db), or by one --addr dns:///NAME:PORT that stands for every
// address of a headless Service; query and export merge the shards' entries
// by time.

// repeatable is a flag that may be given several times. first holds the
// first value (or the default, when the flag is not given), which is what
// commands that read one log use; all holds every value given.
type repeatable struct {
	first *string
	all   *[]string
}

func (r repeatable) String() string {
	if r.first == nil {
		return ""
	}
	return *r.first
}

func (r repeatable) Set(v string) error {
	if len(*r.all) == 0 {
		*r.first = v
	}
	*r.all = append(*r.all, v)
	return nil
}

// dnsScheme prefixes an --addr that stands for every address its name
// resolves to, as in gRPC's target syntax.
const dnsScheme = "dns:///"

// target is one daemon's admin API: the address to dial and the name to
// verify in its certificate.
type target struct{ addr, serverName string }

// lookupHost resolves a host name; tests replace it.
var lookupHost = net.DefaultResolver.LookupHost

// targets returns the daemons the --addr flags name, with each
// dns:///NAME:PORT resolved to all its addresses (sorted, so that the
// shards keep their order from one run to the next), each address once.
// A plain NAME:PORT that resolves to several addresses beyond loopback is
// refused: gRPC would read one of them, and so one replica's shard.
func (f *logFlags) targets(ctx context.Context) ([]target, error) {
	addrs := f.addrs
	if len(addrs) == 0 {
		addrs = []string{f.addr}
	}
	var out []target
	for _, a := range addrs {
		name, ok := strings.CutPrefix(a, dnsScheme)
		host, port, err := net.SplitHostPort(name)
		if err != nil {
			return nil, fmt.Errorf("--addr %q: %w", a, err)
		}
		if !ok {
			if n := remoteAddrs(ctx, host); n > 1 {
				return nil, fmt.Errorf("--addr %q: %s has %d addresses, each perhaps a replica with its own log: read them all with --addr %s%s, or name one", a, host, n, dnsScheme, a)
			}
			out = append(out, target{addr: a, serverName: f.serverName})
			continue
		}
		ips, err := lookupHost(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("--addr %q: %w", a, err)
		}
		slices.Sort(ips)
		sn := f.serverName
		if sn == "" {
			sn = host
		}
		for _, ip := range ips {
			out = append(out, target{addr: net.JoinHostPort(ip, port), serverName: sn})
		}
	}
	// The same address named twice is one log.
	seen := map[string]bool{}
	return slices.DeleteFunc(out, func(t target) bool {
		dup := seen[t.addr]
		seen[t.addr] = true
		return dup
	}), nil
}

// remoteAddrs returns how many addresses beyond loopback host resolves
// to, in the IP family with more of them (a dual-stack Service has one of
// each): 0 for an IP address or a name that does not resolve (dialing it
// says what is wrong).
func remoteAddrs(ctx context.Context, host string) int {
	if net.ParseIP(host) != nil {
		return 0
	}
	ips, err := lookupHost(ctx, host)
	if err != nil {
		return 0
	}
	v4, v6 := 0, 0
	for _, ip := range ips {
		switch p := net.ParseIP(ip); {
		case p == nil || p.IsLoopback():
		case p.To4() != nil:
			v4++
		default:
			v6++
		}
	}
	return max(v4, v6)
}

// single fails when several logs are named to a command that reads one.
func (f *logFlags) single() error {
	if len(f.addrs) > 1 || len(f.dbs) > 1 || strings.HasPrefix(f.addr, dnsScheme) {
		return errors.New("this command reads one log, of one daemon: give one --addr or --db (ca log query, export and verify, ca report rollout, ca admin root retire, revoke-intermediate and affected take several)")
	}
	return nil
}

// shard is one replica's log.
type shard struct {
	name       string // the address or file it was read from
	serverName string // for an address: the name to verify in the daemon's certificate ("" is the host of name)
	api        logAPI
}

// openShards opens every log the flags name and bounds the work on them
// by --timeout; done releases them all.
func (f *logFlags) openShards(ctx context.Context) ([]shard, context.Context, func(), error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	var (
		shards  []shard
		closers []func()
	)
	done := func() {
		cancel()
		for _, c := range closers {
			c()
		}
	}
	add := func(name, serverName string, api logAPI, closer func(), err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		shards = append(shards, shard{name: name, serverName: serverName, api: api})
		closers = append(closers, closer)
		return nil
	}
	var err error
	if len(f.dbs) > 0 {
		for _, db := range f.dbs {
			api, closer, oerr := f.openDB(db, f.witnessFor(db))
			if err = add(db, "", api, closer, oerr); err != nil {
				break
			}
		}
	} else {
		var ts []target
		if ts, err = f.targets(ctx); err == nil {
			for _, t := range ts {
				api, closer, oerr := f.openRemote(t)
				if err = add(t.addr, t.serverName, api, closer, oerr); err != nil {
					break
				}
			}
		}
	}
	if err != nil {
		done()
		return nil, nil, nil, err
	}
	return shards, ctx, done, nil
}

// mergedQuery reads the entries a query selects from every shard, in
// time order (newest first with NewestFirst), a page of each shard at a
// time.
type mergedQuery struct {
	streams []*shardStream
	newest  bool
}

// shardStream is one shard's side of a mergedQuery: the page it is in and
// its position there.
type shardStream struct {
	shard
	req   *adminv1.QueryLogRequest
	page  []*adminv1.Entry
	pos   int
	token string // the page token that fetched page
	next  string // the next page's token, "" at the end
	// fetched: page was fetched. skip entries of the first page fetched
	// are skipped (a cursor from an earlier page of the merge).
	fetched bool
	skip    int
}

// shardCursor is where a shard's stream stands: the page token of its
// page and how many entries of it were read; Done at its end.
type shardCursor struct {
	Shard string `json:"shard"`
	Token string `json:"token,omitempty"`
	Skip  int    `json:"skip,omitempty"`
	Done  bool   `json:"done,omitempty"`
}

// mergedTokenPrefix marks a page token of a merge; a token without it is
// a daemon's own, valid with one shard.
const mergedTokenPrefix = "shards."

func newMergedQuery(shards []shard, req *adminv1.QueryLogRequest, pageToken string) (*mergedQuery, error) {
	m := &mergedQuery{newest: req.GetNewestFirst()}
	var cursors []shardCursor
	switch {
	case pageToken == "":
	case strings.HasPrefix(pageToken, mergedTokenPrefix):
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(pageToken, mergedTokenPrefix))
		if err == nil {
			err = json.Unmarshal(b, &cursors)
		}
		if err != nil {
			return nil, fmt.Errorf("--page-token: %w", err)
		}
		if len(cursors) != len(shards) {
			return nil, fmt.Errorf("--page-token is of %d logs, %d are named", len(cursors), len(shards))
		}
	case len(shards) == 1:
		cursors = []shardCursor{{Shard: shards[0].name, Token: pageToken}}
	default:
		return nil, errors.New("--page-token is of one log, several are named")
	}
	for i, sh := range shards {
		s := &shardStream{shard: sh, req: proto.CloneOf(req)}
		if cursors != nil {
			c := cursors[i]
			if c.Shard != sh.name {
				return nil, fmt.Errorf("--page-token is of the log at %s, not %s: name the logs in the same order", c.Shard, sh.name)
			}
			s.token, s.skip = c.Token, c.Skip
			s.fetched = c.Done
		}
		m.streams = append(m.streams, s)
	}
	return m, nil
}

// head returns the stream's next entry without taking it; nil at the end.
func (s *shardStream) head(ctx context.Context) (*adminv1.Entry, error) {
	for s.pos >= len(s.page) {
		if s.fetched && s.next == "" {
			return nil, nil
		}
		if s.fetched {
			s.token = s.next
		}
		s.req.PageToken = s.token
		resp, err := s.api.QueryLog(ctx, s.req)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		s.page, s.next, s.fetched = resp.GetEntries(), resp.GetNextPageToken(), true
		s.pos, s.skip = min(s.skip, len(s.page)), 0
	}
	return s.page[s.pos], nil
}

// Next returns the next entry in time order and the shard it is from; nil
// when every shard is read.
func (m *mergedQuery) Next(ctx context.Context) (*adminv1.Entry, *shardStream, error) {
	var (
		best  *adminv1.Entry
		from  *shardStream
		bestT int64
	)
	for _, s := range m.streams {
		e, err := s.head(ctx)
		if err != nil {
			return nil, nil, err
		}
		if e == nil {
			continue
		}
		t := e.GetTime().AsTime().UnixNano()
		if best == nil || (!m.newest && t < bestT) || (m.newest && t > bestT) {
			best, from, bestT = e, s, t
		}
	}
	if from != nil {
		from.pos++
	}
	return best, from, nil
}

// PageToken returns the token that continues the merge where it stands, ""
// when every shard is read to its end. It fetches no page.
func (m *mergedQuery) PageToken() (string, error) {
	var (
		cursors []shardCursor
		more    bool
	)
	for _, s := range m.streams {
		c := shardCursor{Shard: s.name}
		switch {
		case !s.fetched:
			c.Token, c.Skip, more = s.token, s.skip, true
		case s.pos < len(s.page):
			c.Token, c.Skip, more = s.token, s.pos, true
		case s.next != "":
			c.Token, more = s.next, true
		default:
			c.Done = true
		}
		cursors = append(cursors, c)
	}
	if !more {
		return "", nil
	}
	if len(cursors) == 1 && cursors[0].Skip == 0 {
		return cursors[0].Token, nil
	}
	b, err := json.Marshal(cursors)
	if err != nil {
		return "", err
	}
	return mergedTokenPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}
