package loadgen

import (
	"math"
	"slices"
	"time"
)

// Summary describes a set of latency samples.
type Summary struct {
	Count int
	Min   time.Duration
	Mean  time.Duration
	P50   time.Duration
	P90   time.Duration
	P99   time.Duration
	P999  time.Duration
	Max   time.Duration
}

// Summarize returns the summary of samples. It sorts a copy; samples is
// left as it was. An empty input gives the zero Summary.
func Summarize(samples []time.Duration) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	var total float64
	for _, d := range s {
		total += float64(d)
	}
	return Summary{
		Count: len(s),
		Min:   s[0],
		Mean:  time.Duration(total / float64(len(s))),
		P50:   Percentile(s, 0.50),
		P90:   Percentile(s, 0.90),
		P99:   Percentile(s, 0.99),
		P999:  Percentile(s, 0.999),
		Max:   s[len(s)-1],
	}
}

// Percentile returns the q-quantile (0 < q ≤ 1) of sorted by the
// nearest-rank method: the smallest sample such that at least q of all
// samples are less than or equal to it. sorted must be in ascending order.
// An empty input gives 0; q ≤ 0 gives the minimum.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if q <= 0 {
		return sorted[0]
	}
	if q >= 1 {
		return sorted[n-1]
	}
	// Rank ⌈q·n⌉, with a small tolerance so that q·n that is an integer
	// in exact arithmetic (0.99·1000) is not pushed up by rounding.
	rank := int(math.Ceil(q*float64(n) - 1e-9))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

// Rate is count events over elapsed, per second. A zero or negative
// elapsed time gives 0.
func Rate(count int, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 0
	}
	return float64(count) / elapsed.Seconds()
}

// Median returns the median of xs (the mean of the middle two for an even
// count), or 0 for no values. xs is not modified.
func Median(xs []float64) float64 {
	n := len(xs)
	if n == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// MedianDuration is Median for durations.
func MedianDuration(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(Median(xs))
}
