package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/daemon"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// logFlags are the flags every log subcommand takes: where the log is.
type logFlags struct {
	addr, cert, key, rootCert, serverName string
	db, verifierKey                       string
	timeout                               time.Duration
	// addrs and dbs are every --addr and --db given: several logs, one
	// per replica, for the commands that read several (logshards.go).
	addrs, dbs []string

	// witnessFile, with db, is a witness file the log is checked against;
	// with witnessNextToLog, each log file is checked against the witness
	// file next to it, if there is one.
	witnessFile      string
	witnessNextToLog bool
}

func (f *logFlags) register(fs *flag.FlagSet) {
	f.registerConn(fs)
	fs.Var(repeatable{&f.db, &f.dbs}, "db", "read a log file directly (a stopped daemon's, or a backup) instead of --addr; query, export and verify take several, one per replica")
	fs.StringVar(&f.verifierKey, "verifier-key", "", "checkpoint verifier key, or a file holding it (<data_dir>/log-verifier.vkey)")
}

// registerConn registers the flags that reach a running daemon's admin
// API ("ca log" and "ca admin" share them).
func (f *logFlags) registerConn(fs *flag.FlagSet) {
	f.addr = "127.0.0.1:15015"
	fs.Var(repeatable{&f.addr, &f.addrs}, "addr", "admin API address of a running daemon (default 127.0.0.1:15015); query, export and verify take several, one per replica, and dns:///NAME:PORT for every address of a headless Service")
	fs.StringVar(&f.cert, "cert", "", "client certificate chain (PEM) carrying an admin SPIFFE ID")
	fs.StringVar(&f.key, "key", "", "client private key (PEM)")
	fs.StringVar(&f.rootCert, "root-cert", "", "root bundle that verifies the daemon (PEM)")
	fs.StringVar(&f.serverName, "server-name", "", "name to verify in the daemon's certificate (default: the host of --addr)")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Minute, "time limit")
}

func (f *logFlags) open() (logAPI, func(), error) {
	if err := f.single(); err != nil {
		return nil, nil, err
	}
	if f.db != "" {
		return f.openDB(f.db, f.witnessFor(f.db))
	}
	return f.openRemote(target{addr: f.addr, serverName: f.serverName})
}

// openDB opens a log file read-only, checked against the witness file
// witness when it is not "".
func (f *logFlags) openDB(db, witness string) (logAPI, func(), error) {
	vs, err := f.verifiers()
	if err != nil {
		return nil, nil, err
	}
	opts := store.Options{ReadOnly: true, Verifiers: vs, Logger: slog.New(slog.DiscardHandler)}
	if witness != "" {
		opts.Witness = store.NewFileWitness(witness)
	}
	l, err := store.Open(db, opts)
	if err != nil {
		return nil, nil, err
	}
	vkey, _ := f.verifierKeyText()
	return localLog{AdminService: ca.NewAdminService(l, vkey, nil), l: l}, func() { _ = l.Close() }, nil
}

// witnessFor returns the witness file the log file db is checked against:
// --witness, or with witnessNextToLog the one next to it if present.
func (f *logFlags) witnessFor(db string) string {
	if f.witnessFile != "" {
		return f.witnessFile
	}
	if f.witnessNextToLog {
		if p := filepath.Join(filepath.Dir(db), daemon.WitnessFileName); fileExists(p) {
			return p
		}
	}
	return ""
}

func (f *logFlags) openRemote(t target) (logAPI, func(), error) {
	conn, err := f.dialTarget(t)
	if err != nil {
		return nil, nil, err
	}
	return remoteLog{c: adminv1.NewAdminServiceClient(conn)}, func() { conn.Close() }, nil
}

// dial connects to a running daemon's admin API with the client
// certificate of --cert and --key, verifying the daemon against
// --root-cert.
func (f *logFlags) dial() (*grpc.ClientConn, error) {
	if err := f.single(); err != nil {
		return nil, err
	}
	return f.dialTarget(target{addr: f.addr, serverName: f.serverName})
}

func (f *logFlags) dialTarget(t target) (*grpc.ClientConn, error) {
	if f.cert == "" || f.key == "" || f.rootCert == "" {
		return nil, errors.New("to reach a running daemon, --cert, --key and --root-cert are required (or read a file with --db)")
	}
	pair, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	roots, err := os.ReadFile(f.rootCert) //nolint:gosec // G703: --root-cert names a file of the operator running ca, read with the operator's own rights
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		return nil, fmt.Errorf("%s holds no PEM certificates", f.rootCert)
	}
	name := t.serverName
	if name == "" {
		host, _, err := net.SplitHostPort(t.addr)
		if err != nil {
			return nil, fmt.Errorf("--addr %q: %w", t.addr, err)
		}
		name = host
	}
	return grpc.NewClient(t.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: name, MinVersion: tls.VersionTLS12,
	})), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(ca.MaxAdminMessageBytes)))
}

// connect parses args into fs (which holds f's flags), runs prepare (the
// command's own checks of its flags, before any log is opened; nil for
// none), then opens the log and bounds the work on it by --timeout; done
// releases both.
func (f *logFlags) connect(ctx context.Context, fs *flag.FlagSet, args []string, prepare func() error) (logAPI, context.Context, func(), error) {
	if err := parsePrepare(fs, args, prepare); err != nil {
		return nil, nil, nil, err
	}
	api, closeAPI, err := f.open()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	return api, ctx, func() { cancel(); closeAPI() }, nil
}

// connectShards is connect for the commands that read every log named,
// one per replica (see openShards).
func (f *logFlags) connectShards(ctx context.Context, fs *flag.FlagSet, args []string, prepare func() error) ([]shard, context.Context, func(), error) {
	if err := parsePrepare(fs, args, prepare); err != nil {
		return nil, nil, nil, err
	}
	return f.openShards(ctx)
}

// parsePrepare parses args into fs, then runs prepare unless it is nil.
func parsePrepare(fs *flag.FlagSet, args []string, prepare func() error) error {
	if err := parse(fs, args); err != nil {
		return err
	}
	if prepare == nil {
		return nil
	}
	return prepare()
}

// newLogFlagSet is the flag set of a log subcommand, with the flags that say
// where the log is.
func newLogFlagSet(name string, stderr io.Writer) (*flag.FlagSet, *logFlags) {
	fs := newFlagSet(name, stderr)
	lf := &logFlags{}
	lf.register(fs)
	return fs, lf
}

// verifierKeyText returns the verifier key that --verifier-key names, as
// text or in a file, checked to be a note verifier key; "" when the flag is
// not set.
func (f *logFlags) verifierKeyText() (string, error) {
	v := f.verifierKey
	if v == "" {
		return "", nil
	}
	b, ferr := os.ReadFile(v) //nolint:gosec // G703: --verifier-key names a file of the operator running ca, read with the operator's own rights
	if ferr == nil {
		text := strings.TrimSpace(string(b))
		if _, err := note.NewVerifier(text); err != nil {
			return "", fmt.Errorf("--verifier-key: file %s does not hold a checkpoint verifier key: %w", v, err)
		}
		return text, nil
	}
	if _, err := note.NewVerifier(v); err != nil {
		return "", fmt.Errorf("--verifier-key %s: not a readable file (%w) nor a verifier key", v, ferr)
	}
	return v, nil
}

// verifiers returns the verifier of --verifier-key, nil when it is not set.
func (f *logFlags) verifiers() (note.Verifiers, error) {
	text, err := f.verifierKeyText()
	if err != nil || text == "" {
		return nil, err
	}
	v, err := note.NewVerifier(text)
	if err != nil {
		return nil, fmt.Errorf("--verifier-key: %w", err)
	}
	return note.VerifierList(v), nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p) //nolint:gosec // G703: p is next to the log file the operator named with --db; only whether it exists is read
	return err == nil
}
