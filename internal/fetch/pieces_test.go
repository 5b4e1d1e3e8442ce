package fetch

import (
	"testing"
	"time"
)

// TestStealWantsAMeasuredVictim: a stream that broke after its first
// byte and asks again is not split on the "rate" of that byte over the
// wait (the bytes its new request sends past the cut would cross twice);
// one that brought a smallest piece slowly is.
func TestStealWantsAMeasuredVictim(t *testing.T) {
	for _, tc := range []struct {
		name  string
		got   int64
		split bool
	}{{"one byte, then a break", 1, false}, {"256 KiB, slowly", 256 << 10, true}} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now()
			victim := &piece{start: 0, end: 2 << 20, got: tc.got, claimed: true,
				asked: now.Add(-time.Second), first: now.Add(-time.Second), last: now.Add(-10 * time.Millisecond)}
			thief := &piece{start: 2 << 20, end: 3 << 20, got: 1 << 20, claimed: true,
				asked: now.Add(-20 * time.Millisecond), first: now.Add(-10 * time.Millisecond), last: now}
			r := &rangedRun{d: &Download{}, plan: RangePlan{Min: 2 << 20, Chunk: 1 << 20, StallAfter: time.Second},
				total: 3 << 20, pieces: []*piece{victim, thief}, next: 3 << 20, rtt: 10 * time.Millisecond}
			p := r.steal(thief, now)
			if (p != nil) != tc.split {
				t.Fatalf("steal = %+v, want a split: %v", p, tc.split)
			}
			if p != nil && (victim.end != p.start || p.end != 2<<20 || p.start <= tc.got) {
				t.Errorf("split at %d-%d, victim now ends at %d", p.start, p.end, victim.end)
			}
		})
	}
}
