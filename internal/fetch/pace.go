package fetch

import "time"

// Verdict is what a Pace judged a path to be.
type Verdict int

const (
	Unjudged Verdict = iota
	Fast             // one stream is not held back by the path
	Slow             // the path holds one stream back: several go faster
)

// Pace judges a path by the bytes it brought in windows of time: one
// window at SlowRate bytes a second (per stream) or more is fast;
// SlowWindows in a row under it are slow (on a busy machine a fast path
// can start slowly, so a ranged download waits for two). Ranged
// downloads judge their first range with it; eager layers judge the
// downloads they run together.
type Pace struct {
	SlowRate    float64
	SlowWindows int // at least 1

	from  time.Time // the window: since when...
	bytes int64     // ...from how many bytes
	slow  int       // slow windows in a row before it
	rate  float64   // the last window's bytes a second per stream
}

// Rate is the bytes a second per stream of the last window judged.
func (p *Pace) Rate() float64 { return p.rate }

// Start begins a window at now with bytes in.
func (p *Pace) Start(now time.Time, bytes int64) { p.from, p.bytes = now, bytes }

// Since is how long the window has run at now.
func (p *Pace) Since(now time.Time) time.Duration { return now.Sub(p.from) }

// Judge ends the window at now with bytes in, over streams streams, and
// starts the next one.
func (p *Pace) Judge(now time.Time, bytes int64, streams int) Verdict {
	secs := now.Sub(p.from).Seconds()
	rate := float64(bytes - p.bytes)
	if secs > 0 {
		rate /= secs
	}
	rate /= float64(max(streams, 1))
	p.rate = rate
	p.Start(now, bytes)
	if rate >= p.SlowRate {
		p.slow = 0
		return Fast
	}
	if p.slow++; p.slow >= max(p.SlowWindows, 1) {
		return Slow
	}
	return Unjudged
}
