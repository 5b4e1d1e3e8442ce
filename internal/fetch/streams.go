package fetch

import (
	"math"
	"time"
)

// streams decides how many range streams a download runs. It starts at
// the plan's Parallel and measures the aggregate rate in windows of a
// ramp, each after the streams of the last change have had time to flow
// (a round trip and half a ramp). When the streams that flowed in a window (a stalled
// one does not count) each brought at least 70% of one stream's rate
// alone (a doubling on a full path leaves each half of it or less; a
// busy machine leaves streams with room a little short of one alone),
// the path has room and the streams double, up to MaxParallel;
// otherwise the path is full (or the upstream slows every stream when
// more come) and the streams come down to the aggregate ÷ one stream's
// rate, but not below the last count that passed (a window that caught
// the probe's streams before they flowed, or a dip, must not leave the
// tail to fewer streams than the path was seen to carry), where they
// stay: a 50 MB/s link fetched at 25 MB/s a stream holds two and never
// opens more than the first Parallel; on a 200 MB/s link 4 become 8,
// then 16, and 8 stay. The probe's extra streams leave after their
// piece. A 429 or 503 on a range lowers the ceiling to the streams left.
type streams struct {
	target, max int
	single      float64 // one stream's rate alone, bytes a second
	settle      time.Duration
	window      time.Duration
	growing     bool
	passed      int       // the last count whose streams each flowed at 70% of one stream's rate or more
	changed     time.Time // when target last changed
	from        time.Time // the window: since when, from how many bytes (zero: not started)
	bytes       int64
}

func newStreams(plan RangePlan, single float64, rtt time.Duration, now time.Time) streams {
	ceiling := plan.MaxParallel
	if ceiling <= 0 {
		ceiling = plan.Parallel
	}
	ceiling = max(ceiling, 1)
	s := streams{target: min(max(plan.Parallel, 1), ceiling), max: ceiling, single: single,
		settle: rtt + plan.Ramp/2, window: max(plan.Ramp, 10*time.Millisecond), changed: now}
	s.growing = s.max > s.target && single > 0
	return s
}

// measure is called each ramp with the bytes received so far and the
// streams that flowed in the last window; it returns how many more
// workers to start.
func (s *streams) measure(now time.Time, received int64, flowing int) int {
	if !s.growing || now.Sub(s.changed) < s.settle {
		return 0
	}
	if s.from.IsZero() {
		s.from, s.bytes = now, received
		return 0
	}
	secs := now.Sub(s.from).Seconds()
	if secs < s.window.Seconds() {
		return 0
	}
	rate := float64(received-s.bytes) / secs
	s.from = time.Time{}
	if per := rate / float64(max(flowing, 1)); per < 0.7*s.single {
		s.growing = false
		s.target = min(max(int(math.Ceil(rate/s.single-0.25)), s.passed, 1), s.target)
		return 0
	}
	s.passed = s.target
	s.single = max(s.single, rate/float64(max(flowing, 1)))
	if s.target >= s.max {
		s.growing = false
		return 0
	}
	old := s.target
	s.target = min(2*s.target, s.max)
	s.changed = now
	return s.target - old
}

// throttle lowers the ceiling (and the target) to live streams and ends
// the growth.
func (s *streams) throttle(live int) {
	s.max = max(live, 1)
	s.target = min(s.target, s.max)
	s.growing = false
}
