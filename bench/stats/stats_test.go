package stats

import (
	"math"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{7}, 7},
	} {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("Median(nil) is not NaN")
	}
	in := []float64{3, 1, 2}
	Median(in)
	if in[0] != 3 {
		t.Error("Median reordered its input")
	}
}

func TestPercentile(t *testing.T) {
	s := make([]float64, 100)
	for i := range s {
		s[i] = float64(i + 1)
	}
	for _, c := range []struct{ p, want float64 }{{50, 50}, {99, 99}, {100, 100}, {0.1, 1}} {
		if got := Percentile(s, c.p); got != c.want {
			t.Errorf("Percentile(1..100, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := Percentile([]float64{5}, 99); got != 5 {
		t.Errorf("single value: %v", got)
	}
}

func TestRatio(t *testing.T) {
	if got := Ratio(9, 10); got != 0.9 {
		t.Errorf("Ratio(9,10) = %v", got)
	}
	for _, c := range [][2]float64{{1, 0}, {math.NaN(), 1}, {1, math.Inf(1)}, {-1, 2}} {
		if !math.IsNaN(Ratio(c[0], c[1])) {
			t.Errorf("Ratio(%v, %v) is not NaN", c[0], c[1])
		}
	}
}

func TestGrowth(t *testing.T) {
	// Quadratic: 1 s at 1000, 4 s at 2000.
	e := GrowthExponent(1000, 1, 2000, 4, 0.2, 2)
	if math.Abs(e-2) > 1e-9 {
		t.Errorf("exponent %v, want 2", e)
	}
	if got := Project(2000, 4, 10000, e); math.Abs(got-100) > 1e-6 {
		t.Errorf("projection %v, want 100", got)
	}
	// Times below the floor say nothing: the default is used.
	if e := GrowthExponent(1, 0.005, 1000, 0.9, 0.2, 1.5); e != 1.5 {
		t.Errorf("exponent from overhead-only point: %v", e)
	}
	// Clamped.
	if e := GrowthExponent(1000, 1, 2000, 1, 0.2, 2); e != 1 {
		t.Errorf("flat growth clamped to %v, want 1", e)
	}
	if e := GrowthExponent(1000, 1, 2000, 100, 0.2, 2); e != 3 {
		t.Errorf("steep growth clamped to %v, want 3", e)
	}
}
