package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// seq returns 1ms, 2ms, … n ms.
func seq(n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = ms(i + 1)
	}
	return out
}

func TestPercentile(t *testing.T) {
	cases := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one sample, any quantile", []time.Duration{ms(7)}, 0.999, ms(7)},
		{"median of 1..100 is 50", seq(100), 0.50, ms(50)},
		{"p90 of 1..100 is 90", seq(100), 0.90, ms(90)},
		{"p99 of 1..100 is 99", seq(100), 0.99, ms(99)},
		{"p99.9 of 1..100 is the max", seq(100), 0.999, ms(100)},
		{"p99 of 1..1000 is exactly rank 990", seq(1000), 0.99, ms(990)},
		{"p99.9 of 1..1000 is rank 999", seq(1000), 0.999, ms(999)},
		{"p50 of an even count takes the lower middle", seq(4), 0.5, ms(2)},
		{"p50 of 1..3", seq(3), 0.5, ms(2)},
		{"q just above a rank rounds up", seq(10), 0.51, ms(6)},
		{"q 0 is the min", seq(10), 0, ms(1)},
		{"q 1 is the max", seq(10), 1, ms(10)},
		{"tail outlier shows at p99.9 only", append(seq(999), ms(5000)), 0.999, ms(999)},
		{"tail outlier is the max", append(seq(999), ms(5000)), 1, ms(5000)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(tc.sorted, tc.q); got != tc.want {
				t.Fatalf("Percentile(%d samples, %v) = %v, want %v", len(tc.sorted), tc.q, got, tc.want)
			}
		})
	}
}

func TestSummarizeUnsortedInput(t *testing.T) {
	in := seq(1000)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
	first := in[0]
	s := Summarize(in)
	want := Summary{Count: 1000, Min: ms(1), Mean: 500500 * time.Microsecond, P50: ms(500), P90: ms(900), P99: ms(990), P999: ms(999), Max: ms(1000)}
	if s != want {
		t.Fatalf("Summarize = %+v\nwant        %+v", s, want)
	}
	if in[0] != first {
		t.Fatal("Summarize reordered its input")
	}
	if (Summarize(nil) != Summary{}) {
		t.Fatal("Summarize(nil) is not the zero summary")
	}
}

func TestRateAndMedian(t *testing.T) {
	if got := Rate(5000, 2*time.Second); got != 2500 {
		t.Fatalf("Rate(5000, 2s) = %v, want 2500", got)
	}
	if got := Rate(10, 0); got != 0 {
		t.Fatalf("Rate over no time = %v, want 0", got)
	}
	cases := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{100, 1, 1}, 1},
	}
	for _, tc := range cases {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := MedianDuration([]time.Duration{ms(3), ms(1), ms(2)}); got != ms(2) {
		t.Errorf("MedianDuration = %v, want 2ms", got)
	}
}

type httpError int

func (e httpError) Error() string { return fmt.Sprintf("http %d", int(e)) }
func (e httpError) Code() string  { return fmt.Sprintf("HTTP %d", int(e)) }

func TestErrorCode(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{status.Error(codes.Unauthenticated, "no"), "Unauthenticated"},
		{fmt.Errorf("wrapped: %w", status.Error(codes.Unavailable, "down")), "Unavailable"},
		{context.DeadlineExceeded, "DeadlineExceeded"},
		{fmt.Errorf("x: %w", httpError(503)), "HTTP 503"},
		{errors.New("boom"), "other"},
	}
	for _, tc := range cases {
		if got := ErrorCode(tc.err); got != tc.want {
			t.Errorf("ErrorCode(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// A closed loop against an op that takes a known time: throughput is
// workers / latency, and every failure is counted by its code.
func TestClosedLoopCountsAndRates(t *testing.T) {
	const workers = 4
	op := func(ctx context.Context, worker, i int) error {
		time.Sleep(2 * time.Millisecond)
		if i%10 == 0 {
			return status.Error(codes.ResourceExhausted, "busy")
		}
		return nil
	}
	r := ClosedLoop(context.Background(), workers, Options{Name: "sleep", Warmup: 50 * time.Millisecond, Duration: 400 * time.Millisecond}, op)
	total := r.OK + r.ErrorCount()
	// 4 workers × 400ms / ≥2ms per request: at most 800 requests.
	if total == 0 || total > 800 {
		t.Fatalf("%d requests in the window, want between 1 and 800", total)
	}
	if got := r.Errors["ResourceExhausted"]; got == 0 || got != r.ErrorCount() {
		t.Fatalf("errors %v, want only ResourceExhausted", r.Errors)
	}
	if r.Latency.P50 < 2*time.Millisecond {
		t.Fatalf("p50 %v is below the op's 2ms", r.Latency.P50)
	}
	if r.Throughput() <= 0 || r.Throughput() > workers*500 {
		t.Fatalf("throughput %.0f/s, want at most %d/s", r.Throughput(), workers*500)
	}
}

// An open loop charges a request from when it was due: an op that stalls
// once for 200ms makes every request due during the stall late, even
// though each of them is fast once sent.
func TestOpenLoopNoCoordinatedOmission(t *testing.T) {
	stalled := make(chan struct{})
	op := func(ctx context.Context, worker, i int) error {
		if i == 10 {
			time.Sleep(200 * time.Millisecond)
			close(stalled)
			return nil
		}
		if i > 10 {
			<-stalled // one connection, one stream: later requests queue behind
		}
		return nil
	}
	const rate = 200.0
	r := OpenLoop(context.Background(), rate, 1, 1, Options{Name: "stall", Duration: 500 * time.Millisecond}, op)
	if r.OK != int(rate*0.5) {
		t.Fatalf("OK = %d, want %d", r.OK, int(rate*0.5))
	}
	// About 40 requests (200ms × 200/s) were due during the stall; the
	// first of them waited close to 200ms. A loop that measured from send
	// time would see p90 ≈ 0.
	if r.Latency.Max < 150*time.Millisecond {
		t.Fatalf("max latency %v, want ≥ 150ms from the stall", r.Latency.Max)
	}
	if r.Latency.P90 < 20*time.Millisecond {
		t.Fatalf("p90 %v: requests queued behind the stall were not charged for it", r.Latency.P90)
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a parenthesis; utime 250 and stime 50
	// ticks are fields 14 and 15.
	stat := "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 1000 200 18446744073709551615\n"
	got, err := parseStatCPU([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	if got != 3*time.Second {
		t.Fatalf("cpu %v, want 3s", got)
	}
	if _, err := parseStatCPU([]byte("garbage")); err == nil {
		t.Fatal("no error for garbage")
	}
}

func TestReadProcSelf(t *testing.T) {
	s, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSS == 0 || s.PeakRSS < s.RSS {
		t.Fatalf("rss %d, peak %d", s.RSS, s.PeakRSS)
	}
	status := []byte("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
	if n, err := statusKB(status, "VmHWM:"); err != nil || n != 2048*1024 {
		t.Fatalf("VmHWM = %d, %v", n, err)
	}
	if _, err := statusKB(status, "VmSwap:"); err == nil {
		t.Fatal("missing key gave no error")
	}
}
