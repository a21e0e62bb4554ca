package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
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
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// maxSlowFloodRSS is the daemon's peak resident memory under the flood of
// slow clients: 150 MiB for the requests in flight and the connections,
// plus at most 32 KiB for each of the default limits.max_queued (1024)
// requests that wait for a place, each holding its stream, its goroutine
// and its announced message.
const maxSlowFloodRSS = 150<<20 + 1024*32<<10

// slowClient opens a TLS connection, starts maxStreams CreateCertificate
// streams whose messages announce 8 KiB, and sends their bodies one byte
// every 200 ms until ctx ends: a client that holds the server's resources
// as long as it can.
func slowClient(ctx context.Context, addr string, maxStreams int) error {
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}} //nolint:gosec // a flood; it trusts nothing it reads
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	go func() { <-ctx.Done(); conn.Close() }()
	go func() { _, _ = io.Copy(io.Discard, conn) }() // the server's frames
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		return err
	}
	fr := http2.NewFramer(conn, nil)
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	var buf strings.Builder
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", addr},
		{":path", "/istio.v1.auth.IstioCertificateService/CreateCertificate"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := []byte(buf.String())
	var streams []uint32
	for i := range maxStreams {
		id := uint32(2*i + 1)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}); err != nil {
			return err
		}
		if err := fr.WriteData(id, false, []byte{0, 0, 0, 0x20, 0}); err != nil { // 8 KiB announced
			return err
		}
		streams = append(streams, id)
	}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, id := range streams {
			if err := fr.WriteData(id, false, []byte{'x'}); err != nil {
				return err
			}
		}
	}
}

// TestSlowClientFloodBoundedAndReady opens 1000 connections of slow
// clients, each with as many streams as it may open (16), trickling their
// requests; meanwhile readiness (/healthz and the gRPC health service)
// keeps answering, a well-behaved client is served or refused at once,
// the daemon's peak memory stays bounded, and it serves again once the
// flood stops. (Before the in-flight cap counted streams from their
// headers, this flood took the daemon to 1.1 GiB and it stopped
// answering.)
func TestSlowClientFloodBoundedAndReady(t *testing.T) {
	const conns = 1000
	dir := t.TempDir()
	s := startDevCA(t, dir)
	metricsAddr := freeAddr(t)
	cfg := strings.Replace(readFile(t, s.Config), "metrics_listen: \"\"", fmt.Sprintf("metrics_listen: %q", metricsAddr), 1)
	if err := os.WriteFile(s.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.MetricsAddr = metricsAddr
	s.start(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := slowClient(ctx, s.Addr, 16); err != nil && ctx.Err() == nil {
				failed.Add(1)
			}
		}()
	}
	time.Sleep(3 * time.Second) // the flood is established

	if code, body := s.health(t); code != http.StatusOK {
		t.Errorf("/healthz under the flood: %d %q", code, body)
	}
	conn, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: rootPool(t, readFile(t, s.RootFile)), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
	r, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{})
	hcancel()
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health under the flood: %v %v", r, err)
	}
	// The slow streams hold every place (limits.max_in_flight) until they
	// end or time out: a well-behaved request is served, or refused at
	// once with ResourceExhausted, which istio-agent retries.
	start := time.Now()
	err = request(t, s, "default", "web")
	if err != nil && status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a well-behaved request under the flood: %v, want success or ResourceExhausted", err)
	}
	t.Logf("a well-behaved request under the flood: %v after %v", status.Code(err), time.Since(start).Round(time.Millisecond))
	rss := peakRSS(t, s.cmd.Process.Pid)
	cancel()
	wg.Wait()
	waitFor(t, 30*time.Second, "a request succeeds once the flood has stopped", func() bool { return request(t, s, "default", "web") == nil })
	t.Logf("%d slow connections (%d failed to start); peak RSS %d MiB", conns, failed.Load(), rss>>20)
	if rss > maxSlowFloodRSS {
		t.Errorf("peak RSS %d MiB under the flood, more than %d MiB", rss>>20, maxSlowFloodRSS>>20)
	}
}
