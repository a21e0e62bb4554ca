package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// adminFlags are the flags of every "ca admin" subcommand: where the
// daemon is, who is calling, and how to print.
type adminFlags struct {
	conn   logFlags
	output string
}

func newAdminFlagSet(name string, stderr io.Writer) (*flag.FlagSet, *adminFlags) {
	fs := newFlagSet(name, stderr)
	af := &adminFlags{}
	af.conn.registerConn(fs)
	fs.StringVar(&af.output, "o", "text", "output: text or json")
	return fs, af
}

// connect parses args into fs (which holds f's flags), then connects as
// client does.
func (f *adminFlags) connect(ctx context.Context, fs *flag.FlagSet, args []string) (adminv1.AdminServiceClient, context.Context, func(), error) {
	if err := parse(fs, args); err != nil {
		return nil, nil, nil, err
	}
	return f.client(ctx)
}

// client connects and bounds the call by --timeout.
func (f *adminFlags) client(ctx context.Context) (adminv1.AdminServiceClient, context.Context, func(), error) {
	if f.output != "text" && f.output != "json" {
		return nil, nil, nil, fmt.Errorf("-o %q: want text or json", f.output)
	}
	conn, err := f.conn.dial()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, f.conn.timeout)
	return adminv1.NewAdminServiceClient(conn), ctx, func() { cancel(); conn.Close() }, nil
}

// print writes m as JSON (one line) or as text.
func (f *adminFlags) print(w io.Writer, m proto.Message, text func(io.Writer)) error {
	if f.output == "json" {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			return err
		}
		var compact json.RawMessage = b
		out, err := json.Marshal(compact)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(out))
		return err
	}
	text(w)
	return nil
}

func runAdmin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	subs := []struct {
		name, summary string
		run           runFunc
	}{
		{"status", "the roots in the bundle, the issuing intermediate, the rotation state, the last drill", adminStatus},
		{"rotate-intermediate", "replace the issuing intermediate now", adminRotateIntermediate},
		{"root", "staged root rotation: root prepare | activate [--force --reason R] | retire [--key-version N] [--force --reason R] [--compromised]; retire with every replica's --addr checks every replica's log", adminRoot},
		{"revoke-intermediate", "mark an intermediate compromised, rotate, and list the workloads it signed for (JSON lines; with every replica's --addr, from every replica's log once all follow)", adminRevokeIntermediate},
		{"affected", "list the workloads a revoked intermediate signed for (JSON lines), from every replica's --addr once all follow the revocation", adminAffected},
		{"drill", "rehearse rotation on the running daemon and report each step (--root: a full root cycle, staging only)", adminDrill},
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stderr, "usage: ca admin <command> [flags]")
		fmt.Fprintln(stderr, "\nRotates the CA's keys and rehearses it through the admin API of a running daemon.\ncommands:")
		for _, s := range subs {
			fmt.Fprintf(stderr, "  %-20s %s\n", s.name, s.summary)
		}
		if len(args) == 0 {
			return errUsage
		}
		return flag.ErrHelp
	}
	for _, s := range subs {
		if s.name == args[0] {
			return s.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "ca admin: unknown command %q\n", args[0])
	return errUsage
}

func adminStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, af := newAdminFlagSet("ca admin status", stderr)
	c, ctx, done, err := af.connect(ctx, fs, args)
	if err != nil {
		return err
	}
	defer done()
	st, err := c.Status(ctx, &adminv1.StatusRequest{})
	if err != nil {
		return err
	}
	return af.print(stdout, st, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ROOT\tROLE\tNOT AFTER\tFINGERPRINT")
		for _, r := range st.GetRoots() {
			fmt.Fprintf(tw, "v%d\t%s\t%s\t%s\n", r.GetKeyVersion(), roleText(r.GetRole()), timeText(r.GetNotAfter().AsTime()), r.GetFingerprint())
		}
		_ = tw.Flush()
		in := st.GetIntermediate()
		fmt.Fprintf(w, "\nissuing intermediate %s (%s mode, key version %d, under root v%d)\n  not after %s, renews at %s\n",
			in.GetFingerprint(), in.GetMode(), in.GetKeyVersion(), in.GetRootKeyVersion(), timeText(in.GetNotAfter().AsTime()), timeText(in.GetRenewAt().AsTime()))
		if st.GetPreparedAt() != nil {
			fmt.Fprintf(w, "prepared root in the bundle since %s; activation allowed from %s (min overlap %s)\n",
				timeText(st.GetPreparedAt().AsTime()), timeText(st.GetActivateAllowedAt().AsTime()), st.GetMinOverlap().AsDuration())
		}
		for _, fp := range st.GetCompromisedIntermediates() {
			fmt.Fprintf(w, "compromised intermediate %s: never used again\n", fp)
		}
		fmt.Fprintf(w, "issuance log: %d entries\n", st.GetLogSize())
		if d := st.GetLastDrill(); d != nil {
			fmt.Fprintf(w, "last drill %s: %s\n", timeText(d.GetStarted().AsTime()), passText(d.GetPassed()))
		} else {
			fmt.Fprintln(w, "no drill run since the daemon started")
		}
	})
}

func adminRotateIntermediate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, af := newAdminFlagSet("ca admin rotate-intermediate", stderr)
	reason := fs.String("reason", "", "why, recorded in the log")
	c, ctx, done, err := af.connect(ctx, fs, args)
	if err != nil {
		return err
	}
	defer done()
	resp, err := c.RotateIntermediate(ctx, &adminv1.RotateIntermediateRequest{Reason: *reason})
	if err != nil {
		return err
	}
	return af.print(stdout, resp, func(w io.Writer) {
		fmt.Fprintf(w, "issuing intermediate rotated: %s → %s (not after %s)\n",
			resp.GetPrevious().GetFingerprint(), resp.GetCurrent().GetFingerprint(), timeText(resp.GetCurrent().GetNotAfter().AsTime()))
	})
}

func adminRoot(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "usage: ca admin root prepare|activate|retire [flags]")
		return errUsage
	}
	step, args := args[0], args[1:]
	fs, af := newAdminFlagSet("ca admin root "+step, stderr)
	reason := fs.String("reason", "", "why, recorded in the log (required with --force)")
	var force, compromised *bool
	var version *int64
	switch step {
	case "prepare":
	case "activate":
		force = fs.Bool("force", false, "activate before rotation.min_overlap has passed (needs --reason)")
	case "retire":
		force = fs.Bool("force", false, "retire although unexpired certificates chain to it (needs --reason)")
		compromised = fs.Bool("compromised", false, "also mark the root compromised: never trusted again")
		version = fs.Int64("key-version", 0, "root key version to retire (default: the oldest root that is not active)")
	default:
		fmt.Fprintf(stderr, "ca admin root: unknown step %q (prepare, activate, retire)\n", step)
		return errUsage
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if force != nil && *force && strings.TrimSpace(*reason) == "" {
		return errors.New("--force needs --reason: the override is recorded in the log")
	}
	client := af.client
	if step == "retire" && af.conn.several() {
		client = af.clientFirst // the step runs on the first replica named
	}
	c, ctx, done, err := client(ctx)
	if err != nil {
		return err
	}
	defer done()
	switch step {
	case "prepare":
		resp, err := c.PrepareRoot(ctx, &adminv1.PrepareRootRequest{Reason: *reason})
		if err != nil {
			return err
		}
		return af.print(stdout, resp, func(w io.Writer) {
			fmt.Fprintf(w, "root v%d prepared and added to the trust bundle (%s, not after %s)\nissuance stays under the active root; activate from %s\n",
				resp.GetPrepared().GetKeyVersion(), resp.GetPrepared().GetFingerprint(), timeText(resp.GetPrepared().GetNotAfter().AsTime()),
				timeText(resp.GetActivateAllowedAt().AsTime()))
		})
	case "activate":
		resp, err := c.ActivateRoot(ctx, &adminv1.ActivateRootRequest{Force: *force, Reason: *reason})
		if err != nil {
			return err
		}
		return af.print(stdout, resp, func(w io.Writer) {
			fmt.Fprintf(w, "root v%d active; issuing intermediate %s\nthe old root stays in the bundle until \"ca admin root retire\"\n",
				resp.GetActive().GetKeyVersion(), resp.GetIntermediate().GetFingerprint())
		})
	default:
		if af.conn.several() && !*force && !*compromised {
			if err := af.checkRetireShards(ctx, c, *version); err != nil {
				return err
			}
		}
		resp, err := c.RetireRoot(ctx, &adminv1.RetireRootRequest{KeyVersion: *version, Force: *force, Reason: *reason, Compromised: *compromised})
		if err != nil {
			return err
		}
		if *compromised {
			fmt.Fprintf(stderr, "root v%d retired as compromised: never trusted again; %d unexpired certificates of %d workloads chained to it: restart those workloads\n",
				resp.GetRetired().GetKeyVersion(), resp.GetLiveCertificates(), len(resp.GetAffected()))
			return writeAffected(stdout, resp.GetAffected())
		}
		return af.print(stdout, resp, func(w io.Writer) {
			how := "retired"
			if resp.GetRetired().GetRole() == adminv1.RootRole_ROOT_ROLE_COMPROMISED {
				how = "retired as compromised: never trusted again"
			}
			fmt.Fprintf(w, "root v%d removed from the trust bundle (%s)", resp.GetRetired().GetKeyVersion(), how)
			if n := resp.GetLiveCertificates(); n > 0 {
				fmt.Fprintf(w, "; %d unexpired certificates still chained to it", n)
			}
			fmt.Fprintln(w)
		})
	}
}

func adminRevokeIntermediate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, af := newAdminFlagSet("ca admin revoke-intermediate", stderr)
	fp := fs.String("fingerprint", "", "hex SHA-256 of the intermediate (default: the current one); it must be one the CA issued, never a root's")
	reason := fs.String("reason", "", "why, recorded in the log")
	force := fs.Bool("force", false, "revoke a fingerprint no replica named can show the CA issued (needs --reason)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *force && strings.TrimSpace(*reason) == "" {
		return errors.New("--force needs --reason: the override is recorded in the log")
	}
	client := af.client
	if af.conn.several() {
		// The step runs on the first replica whose log records the
		// intermediate, else on the first named.
		at, err := af.revokeTarget(ctx, *fp)
		if err != nil {
			return err
		}
		client = func(ctx context.Context) (adminv1.AdminServiceClient, context.Context, func(), error) {
			return af.clientAt(ctx, at)
		}
	}
	c, ctx, done, err := client(ctx)
	if err != nil {
		return err
	}
	defer done()
	stream, err := c.RevokeIntermediate(ctx, &adminv1.RevokeIntermediateRequest{Fingerprint: *fp, Reason: *reason, Force: *force})
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "intermediate %s revoked: never used again; issuing intermediate now %s\n",
		first.GetRevoked().GetFingerprint(), first.GetCurrent().GetFingerprint())
	var groups []*adminv1.AffectedWorkload
	certs := 0
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		groups = append(groups, m.GetAffected())
		certs += len(m.GetAffected().GetSerials())
	}
	if af.conn.several() {
		// The other replicas sign with it until they follow the
		// revocation: the list is complete only after that.
		revoked := first.GetRevoked().GetFingerprint()
		err := af.waitRevoked(ctx, revoked)
		if errors.Is(err, errOwnCertRevoked) {
			return fmt.Errorf("intermediate revoked, but %w: get a new one (ca request) and list what it signed with: ca admin affected --fingerprint %s and every replica's --addr", err, revoked)
		}
		if err == nil {
			groups, certs, err = af.signedByInShards(ctx, revoked)
		}
		if err != nil {
			return fmt.Errorf("intermediate revoked, but the replicas' logs could not be searched for what it signed: %w", err)
		}
	}
	fmt.Fprintf(stderr, "%d unexpired certificates of %d workloads were signed by it: restart those workloads\n", certs, len(groups))
	return writeAffected(stdout, groups)
}

// adminAffected lists what a revoked intermediate signed, from every
// replica's log, once every replica named has followed the revocation.
func adminAffected(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, af := newAdminFlagSet("ca admin affected", stderr)
	fp := fs.String("fingerprint", "", "hex SHA-256 of the revoked intermediate (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	revoked := strings.ToLower(strings.TrimSpace(*fp))
	if revoked == "" {
		return errors.New("--fingerprint is required: the intermediate revoke-intermediate revoked")
	}
	ctx, cancel := context.WithTimeout(ctx, af.conn.timeout)
	defer cancel()
	if err := af.waitRevoked(ctx, revoked); err != nil {
		return err
	}
	groups, certs, err := af.signedByInShards(ctx, revoked)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "%d unexpired certificates of %d workloads were signed by %s: restart those workloads\n", certs, len(groups), revoked)
	return writeAffected(stdout, groups)
}

// writeAffected writes the affected workloads, one JSON line each,
// whatever -o says: it is what operators feed to the restart.
func writeAffected(w io.Writer, groups []*adminv1.AffectedWorkload) error {
	enc := json.NewEncoder(w)
	for _, g := range groups {
		if err := enc.Encode(map[string]any{
			"namespace": g.GetNamespace(), "service_account": g.GetServiceAccount(), "spiffe_id": g.GetSpiffeId(),
			"certificates": len(g.GetSerials()), "serials": g.GetSerials(), "last_not_after": g.GetLastNotAfter().AsTime().UTC().Format(time.RFC3339),
		}); err != nil {
			return err
		}
	}
	return nil
}

func adminDrill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, af := newAdminFlagSet("ca admin drill", stderr)
	root := fs.Bool("root", false, "also run a full root prepare and activate cycle (needs rotation.allow_root_drill: staging only)")
	c, ctx, done, err := af.connect(ctx, fs, args)
	if err != nil {
		return err
	}
	defer done()
	resp, err := c.Drill(ctx, &adminv1.DrillRequest{Root: *root})
	if err != nil {
		return err
	}
	rep := resp.GetReport()
	if err := af.print(stdout, rep, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "STEP\tRESULT\tTIME\tDETAIL")
		for _, s := range rep.GetSteps() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.GetName(), passText(s.GetPassed()), s.GetDuration().AsDuration().Round(time.Millisecond), s.GetDetail())
		}
		_ = tw.Flush()
		fmt.Fprintf(w, "drill %s\n", passText(rep.GetPassed()))
	}); err != nil {
		return err
	}
	if !rep.GetPassed() {
		return errors.New("the drill failed: see the steps above; the daemon is still serving")
	}
	return nil
}

func roleText(r adminv1.RootRole) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "ROOT_ROLE_"))
}

func passText(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func timeText(t time.Time) string { return t.UTC().Format(time.RFC3339) }
