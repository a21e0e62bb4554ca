package daemon

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/transitca/transitca/store"
)

// Metrics of the issuance log, read from store.Log.Stats at scrape time.
const (
	// MetricLogSize is the number of committed entries in the issuance log.
	MetricLogSize = "transitca_log_size_entries"
	// MetricLogCheckpointSize is the size of the latest signed checkpoint.
	MetricLogCheckpointSize = "transitca_log_checkpoint_size_entries"
	// MetricLogCheckpointAge is how long committed entries have waited for
	// a checkpoint that covers them: 0 while the latest checkpoint covers
	// the whole log.
	MetricLogCheckpointAge = "transitca_log_checkpoint_age_seconds"
	// MetricLogCommits counts the log's bbolt commits of entries.
	MetricLogCommits = "transitca_log_commits_total"
	// MetricLogCommitEntries is a histogram of the log's commits by the
	// entries each carried (group commit: one commit for every append
	// queued while the previous one was under way).
	MetricLogCommitEntries = "transitca_log_commit_entries"
	// MetricLogFailed is 1 while the log refuses appends after a failed
	// commit: every issuance fails until the log has recovered by itself
	// (the disk takes writes again).
	MetricLogFailed = "transitca_log_failed"
)

// registerLogMetrics exports l's counters to reg.
func registerLogMetrics(reg prometheus.Registerer, l *store.Log) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: MetricLogSize,
			Help: "Committed entries in the issuance log."},
			func() float64 { return float64(l.Stats().Size) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: MetricLogCheckpointSize,
			Help: "Entries covered by the latest signed checkpoint of the issuance log."},
			func() float64 { return float64(l.Stats().CheckpointSize) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: MetricLogCheckpointAge,
			Help: "Seconds committed entries have waited for a signed checkpoint covering them; 0 while the latest checkpoint covers the whole log."},
			func() float64 { return checkpointAge(l.Stats(), time.Now()).Seconds() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: MetricLogCommits,
			Help: "bbolt commits of issuance log entries since the daemon started."},
			func() float64 { return float64(l.Stats().Commits) }),
		commitSizes{l},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: MetricLogFailed,
			Help: "1 while the issuance log refuses appends after a failed commit: issuances fail until it recovers."},
			func() float64 {
				if l.Stats().Failed {
					return 1
				}
				return 0
			}),
	)
}

// checkpointAge is how long the entries past the latest checkpoint have
// waited for one, measured from the last checkpoint stored (or the log's
// opening): 0 when there are none.
func checkpointAge(st store.Stats, now time.Time) time.Duration {
	if st.Size <= st.CheckpointSize {
		return 0
	}
	return now.Sub(st.CheckpointTime)
}

// commitSizes exports store.Stats.CommitSizes as a histogram.
type commitSizes struct{ l *store.Log }

var commitSizesDesc = prometheus.NewDesc(MetricLogCommitEntries,
	"bbolt commits of issuance log entries since the daemon started, by the entries each carried.", nil, nil)

func (c commitSizes) Describe(ch chan<- *prometheus.Desc) { ch <- commitSizesDesc }

func (c commitSizes) Collect(ch chan<- prometheus.Metric) {
	st := c.l.Stats()
	buckets := make(map[float64]uint64, store.CommitSizeBuckets)
	var cum uint64
	for i, n := range st.CommitSizes {
		cum += n
		if i < len(st.CommitSizes)-1 { // the last bucket is +Inf: the count
			buckets[float64(uint64(1)<<i)] = cum
		}
	}
	ch <- prometheus.MustNewConstHistogram(commitSizesDesc, cum, float64(st.CommitEntries), buckets)
}
