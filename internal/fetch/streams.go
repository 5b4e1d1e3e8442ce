package fetch

import (
	"math"
	"time"
)

// streams decides how many range streams a download runs. It starts at
// the plan's Parallel and measures the aggregate rate in windows, each
// after the streams of the last change have had time to flow (two round
// trips and a ramp):
//
//   - the first window: when the aggregate is at least 80% of what that
//     many streams would bring at one stream's rate alone, the path is not
//     full yet and the streams double; else the path is full and the
//     streams come down to the aggregate ÷ one stream's rate (a 50 MB/s
//     link fetched at 25 MB/s a stream holds two, never opening more);
//   - later windows: the streams double again while the aggregate rose
//     by a fifth or more; when it did not, they come back to the count
//     that brought it (the probe's extra streams leave after their piece);
//   - a 429 or 503 on a range lowers the ceiling to the streams left;
//   - MaxParallel is never passed.
//
// Once held, the count stays for the download.
type streams struct {
	target, max int
	single      float64 // one stream's rate alone, bytes a second
	settle      time.Duration
	window      time.Duration
	growing     bool
	changed     time.Time // when target last changed
	from        time.Time // the window: since when, from how many bytes (zero: not started)
	bytes       int64
	lastRate    float64 // the aggregate at lastN streams
	lastN       int
}

func newStreams(plan RangePlan, single float64, rtt time.Duration, now time.Time) streams {
	ceiling := plan.MaxParallel
	if ceiling <= 0 {
		ceiling = plan.Parallel
	}
	ceiling = max(ceiling, 1)
	s := streams{target: min(max(plan.Parallel, 1), ceiling), max: ceiling, single: single,
		settle: 2*rtt + plan.Ramp, window: max(2*plan.Ramp, 10*time.Millisecond), changed: now}
	s.growing = s.max > s.target && single > 0
	return s
}

// measure is called each ramp with the bytes received so far and the
// workers running; it returns how many more workers to start.
func (s *streams) measure(now time.Time, received int64, live int) int {
	if !s.growing {
		return 0
	}
	if now.Sub(s.changed) < s.settle {
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
	grow := rate >= 0.8*float64(s.target)*s.single
	if s.lastN > 0 {
		grow = rate >= 1.2*s.lastRate
	}
	if !grow {
		s.growing = false
		n := s.lastN
		if n == 0 || rate < s.lastRate {
			n = int(math.Ceil(rate/s.single - 0.25))
		}
		s.target = min(max(n, 1), s.target)
		return 0
	}
	s.single = max(s.single, rate/float64(s.target))
	s.lastRate, s.lastN = rate, s.target
	if s.target >= s.max {
		s.growing = false
		return 0
	}
	s.target = min(2*s.target, s.max)
	s.changed = now
	return s.target - live
}

// throttle lowers the ceiling (and the target) to live streams and ends
// the growth.
func (s *streams) throttle(live int) {
	s.max = max(live, 1)
	s.target = min(s.target, s.max)
	s.growing = false
}
