// Package stats holds the small statistics the benchmark reports: medians
// of repeated runs, percentiles of latencies, ratios.
package stats

import (
	"math"
	"slices"
)

// Median returns the median of xs (the mean of the two middle values for
// an even count), or NaN for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted values by
// the nearest-rank method, or NaN for none.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Ratio is a/b, or NaN when either is not a finite positive number.
func Ratio(a, b float64) float64 {
	if !(a >= 0) || !(b > 0) || math.IsInf(a, 0) || math.IsInf(b, 0) {
		return math.NaN()
	}
	return a / b
}

// GrowthExponent is the exponent e of t = c * n^e through two points
// (n0, t0) and (n1, t1), or def when the points cannot tell (equal sizes,
// times too small to be more than fixed overhead). The result is clamped
// to [1, 3]: loads are at least linear, and nothing measured here grows
// faster than cubically.
func GrowthExponent(n0, t0, n1, t1, minTime, def float64) float64 {
	if n1 <= n0 || n0 <= 0 || t0 < minTime || t1 < minTime {
		return def
	}
	e := math.Log(t1/t0) / math.Log(n1/n0)
	if math.IsNaN(e) {
		return def
	}
	return min(max(e, 1), 3)
}

// Project extrapolates a time t1 measured at size n1 to size n with
// exponent e.
func Project(n1, t1, n, e float64) float64 {
	if n1 <= 0 {
		return math.Inf(1)
	}
	return t1 * math.Pow(n/n1, e)
}
