package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Parallel byte ranges. One TCP stream on a long or lossy path gets a
// fraction of the link; a big blob comes faster as several ranges at
// once (containerd's multipart fetch does the same against S3). The
// first request asks for bytes 0 to min-1: its answer says whether the
// upstream honours ranges (a 206 whose Content-Range is exactly the range
// asked, with the blob's total) and how long the blob is. A blob no
// longer than min is whole in that answer; a longer one is cut into
// pieces that several streams fetch at once, each written at its offset.
// Readers follow the contiguous prefix, which is hashed in order as it
// grows, so the digest check and the held-back last byte work as for one
// stream.
//
// With a slowRate the first range is judged first: when it brings less
// than slowRate bytes a second in two ramps in a row, the path holds one
// stream back and parallel streams start; after one ramp at slowRate or
// more the first stream asks for the whole rest as one more range (on
// loopback several streams only share the CPU and the disk). A first
// range that ends before it is judged is fast.
//
// How many streams run is adapted (streams.go): parallel at first, more
// while the aggregate rate still rises with them, fewer when it does
// not, and never more than maxParallel. The pieces (pieces.go) are cut
// as streams ask for work, smaller toward the end so that the streams
// finish together, and a stream with nothing left to claim takes work
// from one that lags: half of a slow stream's rest, or the whole rest of
// a stream that has brought nothing for a while (a stall on a lossy
// path), whose request is then dropped.
//
// An upstream that answers a range otherwise (a 200, a wrong
// Content-Range, no total) is told to noRanges (the proxy remembers it)
// and the blob continues as one stream: from the 200 itself when it came
// first, else from the first byte not on disk. A range refused with
// ErrThrottled (a 429 or 503) ends its stream and lowers the ceiling,
// unless it is the last stream.

// RangePlan is how a download cuts a blob into ranges.
type RangePlan struct {
	Min         int64         // blobs longer than this are fetched in ranges; the first range is bytes 0 to Min-1
	Chunk       int64         // the largest later range
	Parallel    int           // streams at first; < 2: one stream
	MaxParallel int           // streams at most (≤ Parallel: no more are ever opened)
	Ramp        time.Duration // the window the first range is judged in, while it runs alone...
	SlowRate    float64       // ...slow under this many bytes a second (two windows); 0: parallel at once
	// StallAfter: a stream that brings nothing this long is taken over
	// (0: ten ramps, four round trips, at least 500ms); one that would
	// end a fifth of it or more after another could fetch half its rest
	// gives that half away.
	StallAfter time.Duration
}

// RangeStats is what a ranged download did, told to Job.RangesEnded.
type RangeStats struct {
	Requests  int // range requests made, the first included
	Peak      int // streams at once, at most
	Held      int // streams the adaptation settled on (0: it never measured)
	Steals    int // halves of a lagging stream's rest taken by another
	Takeovers int // stalled streams whose rest another fetched
	Throttled int // streams ended by a 429 or 503
	Ahead     int // requests made before their stream's piece before ended
}

// RangeFunc GETs bytes start to end (inclusive) of the blob. With ranged
// true, body is a 206 that holds exactly those bytes (end cut to total-1)
// and total is the blob's length. With ranged false and no error the
// upstream ignored the Range header: body is the whole blob, total its
// Content-Length (-1 unknown). ErrNoRanges: the answer was neither.
type RangeFunc func(ctx context.Context, start, end int64) (body io.ReadCloser, total int64, ranged bool, err error)

// ErrNoRanges: the upstream's answer to a range request was not the range
// asked for.
var ErrNoRanges = errors.New("upstream did not answer the byte range asked for")

// ErrThrottled marks a range the upstream refused for load (429, 503):
// the download runs fewer streams.
var ErrThrottled = errors.New("upstream refused a range for load")

// errRangesFallback ends a range worker whose upstream stopped answering
// ranges: the rest of the blob comes as one stream.
var errRangesFallback = errors.New("falling back to one stream")

// errLeft ends a worker that left on its own (fewer streams wanted, or
// throttled); it has taken itself off live already.
var errLeft = errors.New("stream no longer wanted")

// rangedRun is the state of one ranged download, guarded by d.mu.
type rangedRun struct {
	d        *Download
	job      Job
	plan     RangePlan
	total    int64
	pieces   []*piece // sorted by start, covering [0, next)
	next     int64    // the first byte no piece covers
	head     int      // the first piece not complete
	received int64    // bytes written by every stream
	live     int      // workers running
	pace     Verdict  // Fast: one stream fetches the rest; Slow: parallel streams
	judged   Pace     // the first range's windows
	rtt      time.Duration
	ctl      streams
	stats    RangeStats
	fallback bool
	err      error
	cancel   context.CancelFunc
}

// ranged fetches the blob in ranges when the upstream answers the first
// one as asked, else as one stream.
func (d *Download) ranged(ctx context.Context, job Job) error {
	plan := job.Ranges
	asked := time.Now()
	fctx, fcancel := context.WithCancel(ctx) // a takeover of the first range drops it
	defer fcancel()
	body, total, ranged, err := job.FetchRange(fctx, 0, plan.Min-1)
	switch {
	case errors.Is(err, ErrNoRanges):
		d.noRanges(job)
		return d.stream(ctx, job, nil, -1)
	case err != nil:
		d.update(func() { d.started, d.err = true, err })
		return err
	case !ranged:
		d.noRanges(job)
		return d.stream(ctx, job, body, total)
	case total <= plan.Min:
		return d.stream(ctx, job, body, total) // the whole blob is in this answer
	}
	now := time.Now()
	first := &piece{start: 0, end: plan.Min, claimed: true, asked: asked, first: now, last: now, cancel: fcancel}
	r := &rangedRun{d: d, job: job, plan: plan, total: total, pieces: []*piece{first}, next: plan.Min, rtt: now.Sub(asked)}
	r.stats.Requests = 1
	outer := ctx
	ctx, r.cancel = context.WithCancel(ctx)
	defer r.cancel()
	var wg sync.WaitGroup
	// start runs n more workers: the first on the first piece when body
	// is given, the first len(taken) on those pieces (taken over).
	start := func(n int, body io.ReadCloser, taken []*piece) {
		n = max(n, len(taken))
		d.update(func() {
			r.live += n
			r.stats.Peak = max(r.stats.Peak, r.live)
		})
		wg.Add(n)
		for i := range n {
			p := (*piece)(nil)
			switch {
			case body != nil:
				p = first
			case i < len(taken):
				p = taken[i]
			}
			b := body
			body = nil
			d.g.spawn("blob range download", func() {
				defer wg.Done()
				err := ErrDownloadPanicked
				defer func() { r.exit(err) }()
				err = r.work(ctx, p, b)
			})
		}
	}
	d.update(func() { d.started, d.size = true, total })
	t := time.NewTicker(max(plan.Ramp, 10*time.Millisecond))
	defer t.Stop()
	if plan.SlowRate <= 0 || plan.Ramp <= 0 {
		d.update(func() { r.slow(now, plan.SlowRate) })
		start(r.ctl.target, body, nil)
	} else {
		r.judged = Pace{SlowRate: plan.SlowRate, SlowWindows: 2}
		r.judged.Start(now, 0) // the first window: from the first answer
		start(1, body, nil)
	}
	err = r.absorbAll(ctx, t.C, func() { start(r.tick()) })
	r.cancel() // idle workers leave
	wg.Wait()
	r.report()
	if err != nil {
		return err
	}
	if r.fallback {
		// Everything up to the prefix is hashed; the rest comes as one
		// stream, over any ranges already on disk.
		return d.stream(outer, job, nil, -1)
	}
	return nil
}

// report tells the job what the ranged download did.
func (r *rangedRun) report() {
	if r.job.RangesEnded == nil {
		return
	}
	r.d.mu.Lock()
	stats := r.stats
	if r.pace == Slow {
		stats.Held = r.ctl.target
	}
	r.d.mu.Unlock()
	r.job.RangesEnded(stats)
}

// noRanges tells the job's owner that ranges did not work.
func (d *Download) noRanges(job Job) {
	if job.NoRanges != nil {
		job.NoRanges()
	}
}

// tick is the ramp's heartbeat: while the first range runs alone it is
// judged (one window at slowRate or more is fast, two in a row under it
// slow); once parallel, the number of streams is adapted. A stream that
// has brought nothing for stallAfter is taken over by a new worker (its
// own leaves when it finds more streams than wanted). It returns how
// many workers to start, and the pieces taken over for them.
func (r *rangedRun) tick() (int, io.ReadCloser, []*piece) {
	d := r.d
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if r.fallback || r.err != nil {
		return 0, nil, nil
	}
	taken := r.takeOver(now)
	if r.pace == Unjudged {
		switch r.judged.Judge(now, r.received, 1) {
		case Fast:
			r.pace = Fast
		case Slow:
			r.slow(now, r.judged.SlowRate)
			return r.ctl.target - r.live, nil, taken
		}
		return 0, nil, taken
	}
	if r.pace != Slow {
		return 0, nil, taken
	}
	return max(0, r.ctl.measure(now, r.received, r.flowing(now.Add(-r.ctl.window)))), nil, taken
}

// flowing is how many pieces brought bytes since since: the streams that
// are not stalled.
func (r *rangedRun) flowing(since time.Time) int {
	n := 0
	for _, p := range r.pieces[r.head:] {
		if p.last.After(since) {
			n++
		}
	}
	return n
}

// slow turns the run parallel: streams start at plan.Parallel, measured
// against one stream's rate (the first range's, at most slowRate).
func (r *rangedRun) slow(now time.Time, single float64) {
	r.pace = Slow
	if rate := r.judged.Rate(); rate > 0 {
		single = rate
	}
	r.ctl = newStreams(r.plan, single, r.rtt, now)
}

// absorbAll hashes the contiguous prefix as it grows, until the blob is
// complete, a worker fails, or the workers stop for a fallback. Each
// heartbeat calls beat.
func (r *rangedRun) absorbAll(ctx context.Context, heartbeat <-chan time.Time, beat func()) error {
	d := r.d
	for {
		d.mu.Lock()
		written, live, err, ch := d.written, r.live, r.err, d.changed
		d.mu.Unlock()
		if err != nil {
			return err
		}
		if aerr := d.w.Absorb(written); aerr != nil {
			err := fmt.Errorf("%w: %w", ErrStoreWrite, aerr) // readers pass the upstream through
			r.fail(err)
			return err
		}
		if written == r.total || live == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-heartbeat:
			beat()
		case <-ctx.Done():
			// A worker failing cancels ctx after recording its error.
			d.mu.Lock()
			err = r.err
			d.mu.Unlock()
			if err == nil {
				err = ctx.Err()
			}
			return err
		}
	}
}

// exit records that a worker ended (with err, unless it is nil, the
// fallback, or a worker that left).
func (r *rangedRun) exit(err error) {
	if errors.Is(err, errLeft) {
		r.d.update(func() {})
		return
	}
	if err != nil && !errors.Is(err, errRangesFallback) {
		r.fail(err)
	}
	r.d.update(func() { r.live-- })
}

// fail records the first error and stops every worker.
func (r *rangedRun) fail(err error) {
	r.d.update(func() {
		if r.err == nil {
			r.err = err
		}
	})
	r.cancel()
}

// work fetches pieces until none is left (or the worker is no longer
// wanted): first p with body when given. A worker with nothing to claim
// waits a ramp and looks again: a stream may lag or stall by then.
func (r *rangedRun) work(ctx context.Context, p *piece, body io.ReadCloser) error {
	buf := make([]byte, 256<<10)
	var last *piece // the piece this worker fetched last: its rate and round trip
	var next *ahead // the next piece, asked for before this one ends
	defer func() { r.drop(next) }()
	for {
		if p == nil && next != nil {
			a := next
			next = nil
			var err error
			if p, body, err = r.take(a); err != nil {
				return err
			}
		}
		if p == nil {
			var done bool
			if p, done = r.claim(last); done {
				return errLeft
			}
			if p == nil {
				select {
				case <-time.After(max(r.plan.Ramp, 10*time.Millisecond)):
				case <-ctx.Done():
					r.d.update(func() { r.live-- })
					return errLeft
				}
				continue
			}
		}
		if err := r.fill(ctx, p, body, buf, &next); err != nil {
			return err
		}
		last, p, body = p, nil, nil
	}
}

// fill fetches the rest of p (from body when given), continuing a broken
// stream from the last byte on disk up to maxResumes times. Another
// worker may cut p's end meanwhile (a steal): the stream stops there.
// When p's rest is about a round trip of its stream, the next piece is
// asked for (into *next, when empty).
func (r *rangedRun) fill(ctx context.Context, p *piece, body io.ReadCloser, buf []byte, next **ahead) error {
	d := r.d
	defer func() {
		if body != nil {
			body.Close()
		}
		d.mu.Lock()
		cancel := p.cancel
		p.cancel = nil
		d.mu.Unlock()
		if cancel != nil {
			cancel()
		}
	}()
	asked := p.end // the end of the range the open body answers
	resumes := 0
	for {
		d.mu.Lock()
		from, end := p.start+p.got, p.end
		d.mu.Unlock()
		if from >= end {
			return nil
		}
		if body == nil || from >= asked {
			if body != nil {
				body.Close()
			}
			b, err := r.request(ctx, p, from, end)
			if err != nil {
				return err
			}
			if b == nil {
				return nil // taken over meanwhile
			}
			body, asked = b, end
		}
		n, rerr := body.Read(buf[:min(int64(len(buf)), end-from)])
		if n > 0 {
			if _, err := d.w.WriteAt(buf[:n], from); err != nil {
				return fmt.Errorf("%w: %w", ErrStoreWrite, err)
			}
			r.progress(p, from, int64(n))
			if *next == nil {
				*next = r.askAhead(ctx, p, end-from-int64(n))
			}
		}
		if rerr == nil || (rerr == io.EOF && from+int64(n) == asked) {
			continue
		}
		if r.taken(p) {
			return nil // the rest is another worker's now; its request was dropped
		}
		if rerr == io.EOF {
			rerr = io.ErrUnexpectedEOF
		}
		body.Close()
		body = nil
		if resumes == maxResumes || ctx.Err() != nil {
			return fmt.Errorf("%w: reading bytes %d-%d of the blob: %w", ErrUpstreamBroken, p.start, end-1, rerr)
		}
		resumes++
		if r.job.Resumed != nil {
			r.job.Resumed()
		}
	}
}
