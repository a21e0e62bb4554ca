package kubestorm

import (
	"testing"
	"time"
)

// TestRun runs the scenario at a small size: 10 services × 20 replicas.
// It fails, naming what to build, when the API server binaries are
// missing.
func TestRun(t *testing.T) {
	res, err := Run(t.Context(), Options{Services: 10, Replicas: 20, Spread: 200 * time.Millisecond, Dir: t.TempDir(), Log: testLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rounds) != 1 || res.Tokens != 200 {
		t.Fatalf("%d rounds with %d tokens, want 1 with 200", len(res.Rounds), res.Tokens)
	}
	rd := res.Median()
	if rd.Storm.Workloads != 200 {
		t.Fatalf("%d workloads, want 200", rd.Storm.Workloads)
	}
	if n := rd.Storm.ErrorCount(); n != 0 {
		t.Errorf("%d workloads failed: %v", n, rd.Storm.Errors)
	}
	if rd.Checked != rd.Storm.OK || rd.Checked == 0 {
		t.Errorf("checked %d certificates of %d issued", rd.Checked, rd.Storm.OK)
	}
	if rd.APIServerReviews < 1 || rd.APIServerReviews > float64(res.Tokens) {
		t.Errorf("the API server counted %.0f TokenReviews for %d tokens, want 1 to %d", rd.APIServerReviews, res.Tokens, res.Tokens)
	}
	if rd.APIServerThrottled != 0 {
		t.Errorf("the API server refused %.0f TokenReviews with 429", rd.APIServerThrottled)
	}
	if rd.DaemonReviews != rd.APIServerReviews {
		t.Errorf("the daemon counted %.0f TokenReviews, the API server %.0f", rd.DaemonReviews, rd.APIServerReviews)
	}
	if _, ok := rd.Storm.Proc("transitca"); !ok {
		t.Error("no cost measured for the daemon")
	}
}

func TestSumSamples(t *testing.T) {
	text := []byte(`# HELP apiserver_request_total x
apiserver_request_total{code="201",resource="tokenreviews",verb="POST"} 7
apiserver_request_total{code="429",resource="tokenreviews",verb="POST"} 2
apiserver_request_total{code="201",resource="pods",verb="POST"} 100
apiserver_request_total_other{resource="tokenreviews",verb="POST"} 50
transitca_tokenreview_requests_total 3
`)
	if got, ok := sumSamples(text, apiRequests, []string{`resource="tokenreviews"`, `verb="POST"`}); !ok || got != 9 {
		t.Errorf("api server reviews = %v, %v; want 9, true", got, ok)
	}
	if got, ok := sumSamples(text, daemonReviews, nil); !ok || got != 3 {
		t.Errorf("daemon reviews = %v, %v; want 3, true", got, ok)
	}
	if _, ok := sumSamples(text, "absent_total", nil); ok {
		t.Error("found a metric that is absent")
	}
}

// testLog writes log lines to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(string(p))
	return len(p), nil
}
