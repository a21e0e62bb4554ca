package e2e

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/istio/security/pkg/pki/util"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// metricAdminRefused is the daemon's count of admin calls refused, by
// reason.
const metricAdminRefused = "transitca_admin_refused_total"

// startAdminDevCA starts "ca serve --dev" with the admin listener open to
// adminID and metrics on; adminExtra is added under admin: (indented by
// two spaces). It returns the daemon and the admin address.
func startAdminDevCA(t *testing.T, adminExtra string) (*caServer, string) {
	t.Helper()
	s := startDevCA(t, t.TempDir())
	adminAddr := freeAddr(t)
	s.MetricsAddr = freeAddr(t)
	cfg := readFile(t, s.Config)
	cfg = strings.Replace(cfg, "admin:\n  listen: \"\"\n", fmt.Sprintf("admin:\n  listen: %s\n  identities: [%s]\n%s", adminAddr, adminID, adminExtra), 1)
	cfg = strings.Replace(cfg, `metrics_listen: ""`, fmt.Sprintf("metrics_listen: %q", s.MetricsAddr), 1)
	if err := os.WriteFile(s.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	return s, adminAddr
}

// adminConn connects to the admin port, with the client certificate in
// certDir (key.pem, cert-chain.pem) when certDir is not empty.
func adminConn(t *testing.T, s *caServer, addr, certDir string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: rootPool(t, readFile(t, s.RootFile)), ServerName: "localhost"}
	if certDir != "" {
		c, err := tls.LoadX509KeyPair(filepath.Join(certDir, "cert-chain.pem"), filepath.Join(certDir, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// metricValue is a series of /metrics as a number; 0 when absent.
func (s *caServer) metricValue(t *testing.T, series string) float64 {
	t.Helper()
	v := s.metric(t, series)
	if v == "" {
		return 0
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		t.Fatalf("%s = %q: %v", series, v, err)
	}
	return f
}

// TestUnauthenticatedAdminFloodIsAggregated sends 5,000 admin calls
// without a client certificate to "ca serve": each is refused, the
// refusals are counted in transitca_admin_refused_total, and the log
// records them the way it records refused certificate requests (one
// entry each within the per-peer rate, counted into aggregated denial
// entries beyond it), so it grows by a bounded number of entries of
// bounded size and still accounts for every call. (Before, each call was
// one fsynced admin entry: 5,000 entries.)
func TestUnauthenticatedAdminFloodIsAggregated(t *testing.T) {
	const (
		calls   = 5000
		workers = 16
	)
	s, adminAddr := startAdminDevCA(t, "")
	db := filepath.Join(s.DataDir, "issuance.db")
	before, extentBefore := fileSize(t, db), boltExtent(t, db)
	startEntries := len(exportLogLive(t, s, db))
	c := adminv1.NewAdminServiceClient(adminConn(t, s, adminAddr, ""))

	var refused, other, next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= calls {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := c.Status(ctx, &adminv1.StatusRequest{})
				cancel()
				if status.Code(err) == codes.Unauthenticated {
					refused.Add(1)
				} else {
					other.Add(1)
					t.Logf("admin call without a certificate not refused as Unauthenticated: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	counted := s.metricValue(t, metricAdminRefused+`{reason="unauthenticated"}`)
	s.stop() // writes what is still counted

	entries := exportLog(t, s, db)[startEntries:]
	var accounted, aggregated int64
	for _, e := range entries {
		switch {
		case e.Kind == "denial" && strings.Contains(e.Detail, "class=admin_unauthenticated"):
			n := denialCount(t, e)
			accounted += n
			if n > 1 {
				aggregated++
			}
		case e.Kind == "admin" && e.Action == "admin-call" && strings.Contains(e.Detail, "outcome=Unauthenticated"):
			accounted++
		case e.Kind == "admin" && e.Action == "stop":
			// the daemon's clean stop
		default:
			t.Errorf("unexpected %s entry %d: %+v", e.Kind, e.Seq, e)
		}
	}
	growth, extent := fileSize(t, db)-before, boltExtent(t, db)-extentBefore
	t.Logf("%d admin calls without a certificate in %v: %d refused, %d other; metric %v; "+
		"log: %d entries (%d aggregated) accounting for %d calls, data +%d bytes (%.0f per entry), file +%d bytes",
		calls, took.Round(time.Millisecond), refused.Load(), other.Load(), counted,
		len(entries), aggregated, accounted, extent, float64(extent)/float64(max(len(entries), 1)), growth)

	if refused.Load() != calls {
		t.Errorf("%d of %d calls refused as Unauthenticated, want all", refused.Load(), calls)
	}
	if counted != calls {
		t.Errorf("%s{reason=\"unauthenticated\"} = %v, want %d", metricAdminRefused, counted, calls)
	}
	if accounted != calls {
		t.Errorf("the log accounts for %d refused calls, want %d", accounted, calls)
	}
	// Defaults: 20 at once and 5 a second per peer individually, the rest
	// aggregated once per 10 s window and at shutdown.
	maxEntries := 20 + int(5*took.Seconds()+1) + 2*int(took/(10*time.Second)+1)
	if len(entries) > maxEntries {
		t.Errorf("the flood wrote %d entries, more than the %d the per-peer rate allows", len(entries), maxEntries)
	}
	if limit := int64(len(entries))*maxDenialFileBytes + 64<<10; extent > limit {
		t.Errorf("the log's data grew by %d bytes for %d entries, more than %d", extent, len(entries), limit)
	}
	if limit := int64(len(entries))*maxDenialFileBytes + 64<<10; growth > limit {
		t.Errorf("the log file grew by %d bytes for %d entries, more than %d", growth, len(entries), limit)
	}
}

// rawCodec sends and receives bytes as they are, under the name of the
// proto codec: a client that puts anything in a message.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = slices.Clone(data)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// TestAdminPortCountsWhatGRPCRefuses sends the admin port, with a real
// gRPC client, calls that gRPC refuses before any handler runs (unknown
// services and methods, a malformed method name, messages that are not
// protobuf, messages beyond the size limit) and the same inside a Backup
// stream of an admin; each is refused and counted by reason in
// transitca_admin_refused_total.
func TestAdminPortCountsWhatGRPCRefuses(t *testing.T) {
	s, adminAddr := startAdminDevCA(t, "")
	adminDir := t.TempDir()
	requestCert(t, s, "security", "auditor", adminDir)
	anon := adminConn(t, s, adminAddr, "")
	admin := adminConn(t, s, adminAddr, adminDir)
	garbage := []byte{0xff, 0xff, 0xff, 0xff} // field 0 of an unknown wire type: not protobuf
	big := make([]byte, 64<<10)               // beyond the admin port's 16 KiB message limit

	unary := func(conn *grpc.ClientConn, method string, msg []byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var out []byte
		return conn.Invoke(ctx, method, msg, &out, grpc.ForceCodec(rawCodec{}))
	}
	backup := func(msg []byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := admin.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/transitca.admin.v1.AdminService/Backup", grpc.ForceCodec(rawCodec{}))
		if err != nil {
			return err
		}
		if err := st.SendMsg(msg); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if err := st.CloseSend(); err != nil {
			return err
		}
		for {
			var out []byte
			if err := st.RecvMsg(&out); err != nil {
				return err
			}
		}
	}
	cases := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason string
	}{
		{"unknown method", func() error {
			return anon.Invoke(context.Background(), "/transitca.admin.v1.AdminService/DeleteEntry", &emptypb.Empty{}, &emptypb.Empty{})
		}, codes.Unimplemented, "unknown_method"},
		{"unknown method of an admin", func() error {
			return admin.Invoke(context.Background(), "/transitca.admin.v1.AdminService/DeleteEntry", &emptypb.Empty{}, &emptypb.Empty{})
		}, codes.Unimplemented, "unknown_method"},
		{"unknown service", func() error {
			return anon.Invoke(context.Background(), "/istio.v1.auth.IstioCertificateService/CreateCertificate", &emptypb.Empty{}, &emptypb.Empty{})
		}, codes.Unimplemented, "unknown_method"},
		{"malformed method name", func() error { return unary(anon, "QueryLog", []byte{}) }, codes.Unimplemented, "unknown_method"},
		{"not protobuf", func() error { return unary(anon, "/transitca.admin.v1.AdminService/QueryLog", garbage) }, codes.Internal, "malformed"},
		{"not protobuf from an admin", func() error { return unary(admin, "/transitca.admin.v1.AdminService/Status", garbage) }, codes.Internal, "malformed"},
		{"not protobuf in a Backup stream of an admin", func() error { return backup(garbage) }, codes.Internal, "malformed"},
		{"oversize", func() error { return unary(anon, "/transitca.admin.v1.AdminService/QueryLog", big) }, codes.ResourceExhausted, "oversize"},
		{"oversize from an admin", func() error { return unary(admin, "/transitca.admin.v1.AdminService/GetEntry", big) }, codes.ResourceExhausted, "oversize"},
		{"oversize in a Backup stream of an admin", func() error { return backup(big) }, codes.ResourceExhausted, "oversize"},
	}
	want := map[string]float64{}
	for _, tc := range cases {
		err := tc.call()
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.code)
		}
		want[tc.reason]++
		// gRPC may answer before the call has ended on the server (a
		// stream's status goes out as its message fails to read).
		series := metricAdminRefused + `{reason="` + tc.reason + `"}`
		got := s.metricValue(t, series)
		for deadline := time.Now().Add(5 * time.Second); got < want[tc.reason] && time.Now().Before(deadline); got = s.metricValue(t, series) {
			time.Sleep(20 * time.Millisecond)
		}
		if got != want[tc.reason] {
			t.Errorf("after %s (%v): %s{reason=%q} = %v, want %v", tc.name, status.Code(err), metricAdminRefused, tc.reason, got, want[tc.reason])
		}
	}
	// A well-formed call of an admin is not counted.
	if _, err := adminv1.NewAdminServiceClient(admin).Status(context.Background(), &adminv1.StatusRequest{}); err != nil {
		t.Fatalf("Status of an admin: %v", err)
	}
	for reason, n := range want {
		if got := s.metricValue(t, metricAdminRefused+`{reason="`+reason+`"}`); got != n {
			t.Errorf("at the end: %s{reason=%q} = %v, want %v", metricAdminRefused, reason, got, n)
		}
	}
}

// fillLog has n certificates issued by s, from 8 clients at once, so that
// the log outgrows a Backup's first message and the transport's windows.
func fillLog(t *testing.T, s *caServer, n int64) {
	t.Helper()
	tok, err := s.Minter.Mint("default", "web", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ok, failed atomic.Int64
	wait := runLoad(ctx, t, s, 8, tok, spiffeID("default", "web"), func(r issued) {
		if r.err != nil {
			failed.Add(1)
			return
		}
		if ok.Add(1) >= n {
			cancel()
		}
	})
	wait()
	if failed.Load() > 0 || ok.Load() < n {
		t.Fatalf("filling the log: %d issued, %d failed", ok.Load(), failed.Load())
	}
}

// smallWindows makes a client's HTTP/2 windows fixed at 64 KiB (no
// growth with the bandwidth-delay estimate): a client that stops reading
// stops the server's sends soon.
var smallWindows = []grpc.DialOption{grpc.WithInitialWindowSize(64 << 10), grpc.WithInitialConnWindowSize(64 << 10)}

// backupEntries are the admin-call entries of Backup calls, newest first,
// read through the admin API.
func backupEntries(t *testing.T, c adminv1.AdminServiceClient) []*adminv1.Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.QueryLog(ctx, &adminv1.QueryLogRequest{Kind: adminv1.Kind_KIND_ADMIN, NewestFirst: true, Limit: 100})
	if err != nil {
		t.Fatalf("QueryLog: %v", err)
	}
	var out []*adminv1.Entry
	for _, e := range resp.GetEntries() {
		if e.GetAction() == "admin-call" && strings.Contains(e.GetDetail(), "method=Backup ") {
			out = append(out, e)
		}
	}
	return out
}

// dataDirNames lists the data directory.
func dataDirNames(t *testing.T, s *caServer) []string {
	t.Helper()
	des, err := os.ReadDir(s.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// TestCutOffBackupIsRecorded starts a Backup as an admin, reads its first
// message and goes away: the call is recorded in the log with its outcome
// (Canceled) although the caller's context is gone, and no snapshot file
// is left in the data directory. (Before, the record was written with the
// caller's cancelled context and never made it to the log.)
func TestCutOffBackupIsRecorded(t *testing.T) {
	s, adminAddr := startAdminDevCA(t, "")
	adminDir := t.TempDir()
	requestCert(t, s, "security", "auditor", adminDir)
	fillLog(t, s, 1500)
	names := dataDirNames(t, s)
	c := adminv1.NewAdminServiceClient(adminConn(t, s, adminAddr, adminDir))

	ctx, cancel := context.WithCancel(context.Background())
	stream, err := adminv1.NewAdminServiceClient(adminConn(t, s, adminAddr, adminDir, smallWindows...)).Backup(ctx, &adminv1.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetData()) < 1<<20 {
		t.Fatalf("the backup's first message has %d bytes: the log is too small for the test", len(first.GetData()))
	}
	cancel()

	var rec *adminv1.Entry
	deadline := time.Now().Add(15 * time.Second)
	for rec == nil && time.Now().Before(deadline) {
		for _, e := range backupEntries(t, c) {
			if strings.Contains(e.GetDetail(), "outcome=Canceled") {
				rec = e
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rec == nil {
		t.Fatalf("no admin entry records the cut-off Backup within 15s; Backup entries: %v\ndaemon log:\n%s", backupEntries(t, c), tail(s.Logs(), 4000))
	}
	if !strings.HasPrefix(rec.GetActor(), adminID) {
		t.Errorf("the cut-off Backup is recorded with actor %q, want the admin %s", rec.GetActor(), adminID)
	}
	t.Logf("recorded: %s by %s", rec.GetDetail(), rec.GetActor())
	if after := dataDirNames(t, s); !slices.Equal(after, names) {
		t.Errorf("the data directory held %v before the backup and %v after", names, after)
	}
}

// boltExtent is how far the data of a bbolt file extends (its page
// high-water mark times the page size), read from its newer valid meta
// page: what the file must hold, whatever bbolt pre-allocated beyond.
func boltExtent(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const metaAt, checksumAt = 16, 16 + 56 // bbolt's page header, then magic..txid
	ne := binary.NativeEndian
	var best struct{ txid, extent int64 }
	pageSize := int64(4096)
	for i := range 2 {
		page := make([]byte, checksumAt+8)
		if _, err := f.ReadAt(page, int64(i)*pageSize); err != nil {
			t.Fatal(err)
		}
		h := fnv.New64a()
		h.Write(page[metaAt:checksumAt])
		if ne.Uint32(page[metaAt:]) != 0xED0CDAED || h.Sum64() != ne.Uint64(page[checksumAt:]) {
			continue // torn while bbolt writes it: the other one is valid
		}
		if i == 0 {
			pageSize = int64(ne.Uint32(page[metaAt+8:]))
		}
		if txid := int64(ne.Uint64(page[metaAt+48:])); txid > best.txid {
			best.txid, best.extent = txid, int64(ne.Uint64(page[metaAt+40:]))*pageSize
		}
	}
	if best.txid == 0 {
		t.Fatalf("%s: no valid bbolt meta page", path)
	}
	return best.extent
}

// TestStalledBackupDoesNotStallIssuance starts a Backup as an admin,
// reads its first 1 MiB and stops reading, with the connection open, for
// longer than the admin call deadline (admin.call_timeout: 3s), while
// Istio's client asks for 10 certificates a second. Issuance latency p99
// stays under 1 s; the log's data grows by no more than the entries
// written (a read transaction held open at the client's pace would keep
// bbolt from reusing any page, and the file grew from 84 MB to 1.09 GB);
// the server ends the Backup at its deadline and records it as
// DeadlineExceeded while the client still stalls; the client, reading
// again, gets an error, not the rest of a backup.
func TestStalledBackupDoesNotStallIssuance(t *testing.T) {
	const (
		callTimeout = 3 * time.Second
		stall       = callTimeout + 5*time.Second
		rate        = 10 // issuances per second
	)
	s, adminAddr := startAdminDevCA(t, fmt.Sprintf("  call_timeout: %s\n", callTimeout))
	adminDir := t.TempDir()
	requestCert(t, s, "security", "auditor", adminDir)
	// Several MiB: more than a stalled client's transport takes in.
	fillLog(t, s, 6000)
	c := adminv1.NewAdminServiceClient(adminConn(t, s, adminAddr, adminDir))
	db := filepath.Join(s.DataDir, "issuance.db")
	istio := istioClient(t, s, s.tokenFile(t, "default", "web"))
	csr, _, err := util.GenCSR(util.CertOptions{Host: spiffeID("default", "web"), ECSigAlg: util.EcdsaSigAlg})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := istio.CSRSign(csr, 3600); err != nil { // connected
		t.Fatal(err)
	}
	entries0, extent0, size0 := s.metricValue(t, "transitca_log_size_entries"), boltExtent(t, db), fileSize(t, db)

	stream, err := adminv1.NewAdminServiceClient(adminConn(t, s, adminAddr, adminDir, smallWindows...)).Backup(context.Background(), &adminv1.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetData()) < 1<<20 {
		t.Fatalf("the backup's first message has %d bytes: the log is too small for the test", len(first.GetData()))
	}
	stalled := time.Now()

	// 10 issuances a second, each on its own, so that a slow one does not
	// slow the rate.
	var mu sync.Mutex
	var latencies []time.Duration
	var failures []error
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / rate)
	for time.Since(stalled) < stall {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			begin := time.Now()
			_, err := istio.CSRSign(csr, 3600)
			took := time.Since(begin)
			mu.Lock()
			defer mu.Unlock()
			latencies = append(latencies, took)
			if err != nil {
				failures = append(failures, err)
			}
		}()
	}
	tick.Stop()
	// Past the deadline, with the client still not reading: the server
	// has ended the call and recorded it.
	var recorded string
	for _, e := range backupEntries(t, c) {
		if strings.Contains(e.GetDetail(), "outcome=DeadlineExceeded") {
			recorded = e.GetDetail()
		}
	}
	wg.Wait()
	entries1, extent1, size1 := s.metricValue(t, "transitca_log_size_entries"), boltExtent(t, db), fileSize(t, db)

	// The client reads again.
	var rest int
	var readErr error
	for {
		m, err := stream.Recv()
		if err != nil {
			readErr = err
			break
		}
		rest += len(m.GetData())
	}

	slices.Sort(latencies)
	p99 := latencies[(len(latencies)*99+99)/100-1]
	written := int64(entries1 - entries0)
	t.Logf("stalled %v: %d issuances, %d failed, p50 %v p99 %v max %v; log +%d entries, data +%d bytes (%.0f per entry), file +%d bytes; "+
		"Backup recorded as %q; the client read 1 MiB, then %d bytes more and %v",
		stall, len(latencies), len(failures), latencies[len(latencies)/2].Round(time.Millisecond), p99.Round(time.Millisecond),
		latencies[len(latencies)-1].Round(time.Millisecond), written, extent1-extent0, float64(extent1-extent0)/float64(max(written, 1)), size1-size0,
		recorded, rest, readErr)

	if len(failures) > 0 {
		t.Errorf("%d of %d issuances failed during the stalled backup, the first: %v", len(failures), len(latencies), failures[0])
	}
	if p99 >= time.Second {
		t.Errorf("issuance latency p99 %v during the stalled backup, want under 1s", p99)
	}
	if written < int64(len(latencies)) {
		t.Errorf("the log grew by %d entries for %d issuances", written, len(latencies))
	}
	// store/doc.go bounds an entry's share of the file; the slack is
	// the pages one commit may leave to be freed by the next.
	if limit := written*maxDenialFileBytes + 64<<10; extent1-extent0 > limit {
		t.Errorf("the log's data grew by %d bytes for %d entries, more than %d", extent1-extent0, written, limit)
	}
	// The file itself grows in bbolt's allocation steps (16 MiB) when
	// the data reaches its end.
	if limit := written*maxDenialFileBytes + 16<<20 + 64<<10; size1-size0 > limit {
		t.Errorf("the log file grew by %d bytes for %d entries, more than %d", size1-size0, written, limit)
	}
	if recorded == "" {
		t.Errorf("no admin entry records the Backup as DeadlineExceeded %v after it stalled (admin.call_timeout %v); Backup entries: %v",
			stall, callTimeout, backupEntries(t, c))
	}
	if readErr == nil || errors.Is(readErr, io.EOF) {
		t.Errorf("reading the stalled backup again: %v after %d more bytes, want an error (the server ended it)", readErr, rest)
	} else if code := status.Code(readErr); code != codes.DeadlineExceeded && code != codes.Unavailable {
		t.Errorf("reading the stalled backup again: %v, want DeadlineExceeded or Unavailable (connection closed)", readErr)
	}
}
