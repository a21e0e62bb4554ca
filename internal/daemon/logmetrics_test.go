package daemon

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/transitca/transitca/store"
)

func TestCheckpointAge(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name string
		st   store.Stats
		want time.Duration
	}{
		{"empty log", store.Stats{CheckpointTime: now.Add(-time.Hour)}, 0},
		{"checkpoint covers the log", store.Stats{Size: 7, CheckpointSize: 7, CheckpointTime: now.Add(-time.Hour)}, 0},
		{"entries past the checkpoint", store.Stats{Size: 9, CheckpointSize: 7, CheckpointTime: now.Add(-90 * time.Second)}, 90 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkpointAge(tc.st, now); got != tc.want {
				t.Fatalf("checkpointAge = %v, want %v", got, tc.want)
			}
		})
	}
}

// metricValue scrapes the daemon's /metrics and returns the value of the
// unlabelled series name.
func metricValue(t *testing.T, d *running, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + d.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("/metrics has no series %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The issuance log's metrics follow the log: its size grows with each
// certificate, and a checkpoint written covers it.
func TestLogMetrics(t *testing.T) {
	d := startDaemon(t, devConfig(t, t.TempDir()))
	before := metricValue(t, d, MetricLogSize)
	if before < 1 {
		t.Fatalf("%s = %v, want at least the start entry", MetricLogSize, before)
	}
	d.request(t, "shop", "web")
	if got := metricValue(t, d, MetricLogSize); got != before+1 {
		t.Fatalf("%s after one issuance = %v, want %v", MetricLogSize, got, before+1)
	}
	if _, err := d.Log().WriteCheckpoint(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, d, MetricLogCheckpointSize); got != before+1 {
		t.Fatalf("%s after a checkpoint = %v, want %v", MetricLogCheckpointSize, got, before+1)
	}
	if got := metricValue(t, d, MetricLogCheckpointAge); got != 0 {
		t.Fatalf("%s with the log covered = %v, want 0", MetricLogCheckpointAge, got)
	}
	if got := metricValue(t, d, MetricLogFailed); got != 0 {
		t.Fatalf("%s of a healthy log = %v, want 0", MetricLogFailed, got)
	}
	commits := metricValue(t, d, MetricLogCommits)
	if got := metricValue(t, d, MetricLogCommitEntries+"_count"); got != commits || commits < 1 {
		t.Fatalf("%s_count = %v, want %s = %v (at least 1)", MetricLogCommitEntries, got, MetricLogCommits, commits)
	}
	if got := metricValue(t, d, MetricLogCommitEntries+"_sum"); got < commits || got > metricValue(t, d, MetricLogSize) {
		t.Fatalf("%s_sum = %v, want between the commits (%v) and the log's size", MetricLogCommitEntries, got, commits)
	}
}
