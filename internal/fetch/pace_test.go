package fetch

import (
	"testing"
	"time"
)

func TestPace(t *testing.T) {
	t0 := time.Unix(1000, 0)
	sec := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }
	for _, tc := range []struct {
		name    string
		windows int
		streams int
		bytes   []int64 // bytes in at the end of each one-second window
		want    []Verdict
	}{
		{"one fast window is fast", 2, 1, []int64{100}, []Verdict{Fast}},
		{"two slow windows in a row are slow", 2, 1, []int64{10, 20}, []Verdict{Unjudged, Slow}},
		{"a fast window resets the count", 2, 1, []int64{10, 110, 120, 130}, []Verdict{Unjudged, Fast, Unjudged, Slow}},
		{"one slow window is enough when asked", 1, 1, []int64{10}, []Verdict{Slow}},
		{"the rate is per stream", 1, 4, []int64{200}, []Verdict{Slow}},
		{"per stream fast", 1, 2, []int64{200}, []Verdict{Fast}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Pace{SlowRate: 100, SlowWindows: tc.windows}
			p.Start(t0, 0)
			for i, b := range tc.bytes {
				if got := p.Judge(sec(i+1), b, tc.streams); got != tc.want[i] {
					t.Fatalf("window %d: %v, want %v", i+1, got, tc.want[i])
				}
			}
		})
	}
	p := Pace{SlowRate: 1}
	p.Start(t0, 0)
	if got := p.Since(sec(3)); got != 3*time.Second {
		t.Fatalf("Since = %v", got)
	}
}
