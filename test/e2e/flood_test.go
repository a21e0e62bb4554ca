package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// Bounds the flood test holds the daemon to.
const (
	// maxDenialFileBytes is what one denial entry may add to the log file
	// (store/doc.go states the bound), with room for bbolt allocating the
	// file in doublings.
	maxDenialFileBytes = 2 * 4 << 10
	// maxFloodRSS is the daemon's peak resident memory under the flood.
	maxFloodRSS = 100 << 20
)

// TestUnauthenticatedFloodIsAccountedAndBounded sends the real daemon a
// flood of unauthenticated requests with oversized metadata: thousands
// whose metadata is within the server's header limit (they reach the
// service and are denied), and 32 concurrent ones with a 15 MB header
// (refused by the transport before the service, so they are not expected
// in the log). Afterwards the log accounts for every request that reached
// the service (individual denials plus aggregated counts), it has grown by
// a bounded number of entries of bounded size, and the daemon's peak RSS
// stayed under 100 MB.
func TestUnauthenticatedFloodIsAccountedAndBounded(t *testing.T) {
	const (
		requests = 2000
		workers  = 16
		conns    = 4
		giant    = 32 // concurrent requests with a 15 MB header
	)
	s := startDevCA(t, t.TempDir())
	s.start(t)
	db := filepath.Join(s.DataDir, "issuance.db")
	before := fileSize(t, db)
	startEntries := len(exportLogLive(t, s, db))

	pool := rootPool(t, readFile(t, s.RootFile))
	var clients []pb.IstioCertificateServiceClient
	for range conns {
		conn, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		clients = append(clients, pb.NewIstioCertificateServiceClient(conn))
	}
	cluster := strings.Repeat("C", 12<<10) // beyond any per-field bound, within the header limit
	var denied, other atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[w%conns]
			for next.Add(1) <= requests {
				ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(),
					"authorization", "Bearer not-a-token", "clusterid", cluster), 10*time.Second)
				_, err := c.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: "x"})
				cancel()
				if status.Code(err) == codes.Unauthenticated {
					denied.Add(1)
				} else {
					other.Add(1)
					t.Logf("request not denied: %v", err)
				}
			}
		}()
	}
	var refused atomic.Int64
	var gwg sync.WaitGroup
	block := giantHeaderBlock(t, s.Addr, 15<<20)
	for range giant {
		gwg.Add(1)
		go func() {
			defer gwg.Done()
			if err := sendRawHeaders(s.Addr, block); err != nil {
				refused.Add(1)
			} else {
				t.Errorf("a request with a 15 MB header was not refused")
			}
		}()
	}
	wg.Wait()
	gwg.Wait()
	took := time.Since(start)
	rss := peakRSS(t, s.cmd.Process.Pid)
	s.stop() // flushes what is still counted

	entries := exportLog(t, s, db)[startEntries:]
	var accounted, aggregated int64
	for _, e := range entries {
		if e.Kind == "admin" && e.Action == "stop" {
			continue // the daemon's clean stop
		}
		if e.Kind != "denial" {
			t.Errorf("unexpected %s entry %d: %+v", e.Kind, e.Seq, e)
			continue
		}
		n := denialCount(t, e)
		accounted += n
		if n > 1 {
			aggregated++
		}
	}
	growth := fileSize(t, db) - before
	t.Logf("%d requests in %v: %d denied by the service, %d other, %d refused by the transport; "+
		"log: %d entries (%d aggregated) accounting for %d denials, +%d bytes (%.0f per entry); peak RSS %d MiB",
		requests, took.Round(time.Millisecond), denied.Load(), other.Load(), refused.Load(),
		len(entries), aggregated, accounted, growth, float64(growth)/float64(max(len(entries), 1)), rss>>20)

	if denied.Load() != requests || other.Load() != 0 {
		t.Errorf("%d of %d requests within the header limit were denied by the service, want all", denied.Load(), requests)
	}
	if refused.Load() != giant {
		t.Errorf("%d of %d requests with a 15 MB header were refused", refused.Load(), giant)
	}
	if accounted != denied.Load() {
		t.Errorf("the log accounts for %d denials; the service denied %d requests", accounted, denied.Load())
	}
	// Defaults: 20 at once and 5 a second per peer individually, the rest
	// aggregated once per 10 s window and at shutdown.
	maxEntries := 20 + int(5*took.Seconds()+1) + 2*int(took/(10*time.Second)+1)
	if len(entries) > maxEntries {
		t.Errorf("the flood wrote %d entries, more than the %d the per-peer rate allows", len(entries), maxEntries)
	}
	if limit := int64(len(entries))*maxDenialFileBytes + 64<<10; growth > limit {
		t.Errorf("the log grew by %d bytes for %d entries, more than %d", growth, len(entries), limit)
	}
	if rss > maxFloodRSS {
		t.Errorf("peak RSS %d MiB, more than %d MiB", rss>>20, maxFloodRSS>>20)
	}
}

var countRE = regexp.MustCompile(`(?:^| )count=([0-9]+)(?: |$)`)

// denialCount is how many requests a denial entry stands for: count=<n> in
// its detail, or one.
func denialCount(t *testing.T, e exported) int64 {
	m := countRE.FindStringSubmatch(e.Detail)
	if m == nil {
		return 1
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || n < 1 {
		t.Errorf("entry %d: bad count in %q", e.Seq, e.Detail)
		return 1
	}
	return n
}

// exportLogLive reads the log of a running daemon from a copy (bbolt
// locks the file).
func exportLogLive(t *testing.T, s *caServer, db string) []exported {
	t.Helper()
	data, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(cp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return exportLog(t, s, cp)
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// peakRSS reads the process's peak resident set size (VmHWM).
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}

// giantHeaderBlock is the HPACK block of a CreateCertificate request whose
// clusterid is n bytes, as a client that ignores the server's advertised
// header limit sends it.
func giantHeaderBlock(t *testing.T, addr string, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "https"},
		{Name: ":path", Value: "/istio.v1.auth.IstioCertificateService/CreateCertificate"},
		{Name: ":authority", Value: addr},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
		{Name: "authorization", Value: "Bearer not-a-token"},
		{Name: "clusterid", Value: strings.Repeat("G", n), Sensitive: true},
	} {
		if err := enc.WriteField(f); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// sendRawHeaders opens an HTTP/2 connection and sends one request whose
// header block is block, in HEADERS and CONTINUATION frames, then the
// request message. It returns nil only if the server answered the stream
// with response headers, that is, if the request reached the service.
func sendRawHeaders(addr string, block []byte) error {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}) //nolint:gosec // the test only floods; it trusts nothing it reads
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		return err
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	const chunk = 16 << 10
	first := block[:min(chunk, len(block))]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndHeaders: len(block) <= chunk}); err != nil {
		return err
	}
	for rest := block[len(first):]; len(rest) > 0; {
		n := min(chunk, len(rest))
		if err := fr.WriteContinuation(1, n == len(rest), rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
	}
	// An empty gRPC message: flag 0, length 0.
	if err := fr.WriteData(1, true, []byte{0, 0, 0, 0, 0}); err != nil {
		return err
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			if f.StreamID == 1 {
				return nil
			}
		case *http2.RSTStreamFrame:
			return fmt.Errorf("stream reset: %v", f.ErrCode)
		case *http2.GoAwayFrame:
			return fmt.Errorf("goaway: %v", f.ErrCode)
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		}
	}
}
