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
// chunks that up to parallel streams fetch at once, each written at its
// offset. Readers follow the contiguous prefix, which is hashed in order
// as it grows, so the digest check and the held-back last byte work as
// for one stream.
//
// With a slowRate the first range is judged first: when it brings less
// than slowRate bytes a second in two ramps in a row, the path holds one
// stream back and the other streams start; after one ramp at slowRate or
// more the first stream asks for the whole rest as one more range (on
// loopback several streams only share the CPU and the disk). A first
// range that ends before it is judged is fast.
//
// An upstream that answers a range otherwise (a 200, a wrong
// Content-Range, no total) is told to noRanges (the proxy remembers it)
// and the blob continues as one stream: from the 200 itself when it came
// first, else from the first byte not on disk.

// RangePlan is how a download cuts a blob into ranges.
type RangePlan struct {
	Min      int64         // blobs longer than this are fetched in ranges; the first range is bytes 0 to Min-1
	Chunk    int64         // the size of every later range
	Parallel int           // streams at once; < 2: one stream
	Ramp     time.Duration // the window the first range is judged in, while it runs alone...
	SlowRate float64       // ...slow under this many bytes a second (two windows); 0: parallel at once
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

// errRangesFallback ends a range worker whose upstream stopped answering
// ranges: the rest of the blob comes as one stream.
var errRangesFallback = errors.New("falling back to one stream")

// piece is one range of a ranged download: bytes [start, end), got of
// them on disk (contiguous from start).
type piece struct {
	start, end, got int64
	claimed         bool
}

// rangedRun is the state of one ranged download, guarded by d.mu.
type rangedRun struct {
	d        *Download
	job      Job
	total    int64
	pieces   []*piece
	head     int     // the first piece not complete
	live     int     // workers running
	pace     Verdict // Fast: one stream fetches the rest; Slow: parallel streams a chunk each
	judged   Pace    // the first range's windows
	fallback bool
	err      error
	cancel   context.CancelFunc
}

// ranged fetches the blob in ranges when the upstream answers the first
// one as asked, else as one stream.
func (d *Download) ranged(ctx context.Context, job Job) error {
	plan := job.Ranges
	body, total, ranged, err := job.FetchRange(ctx, 0, plan.Min-1)
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

	r := &rangedRun{d: d, job: job, total: total, pieces: []*piece{{start: 0, end: plan.Min, claimed: true}}}
	for off := plan.Min; off < total; off += plan.Chunk {
		r.pieces = append(r.pieces, &piece{start: off, end: min(off+plan.Chunk, total)})
	}
	ctx, r.cancel = context.WithCancel(ctx)
	defer r.cancel()
	var wg sync.WaitGroup
	// start runs n more workers, the first of them on body when given.
	start := func(n int, body io.ReadCloser) {
		d.update(func() { r.live += n })
		wg.Add(n)
		for range n {
			first, at := body, 0
			if body == nil {
				at = -1
			}
			body = nil
			d.g.spawn("blob range download", func() {
				defer wg.Done()
				err := ErrDownloadPanicked
				defer func() { r.exit(err) }()
				err = r.work(ctx, first, at)
			})
		}
	}
	workers := min(plan.Parallel, len(r.pieces))
	d.update(func() { d.started, d.size = true, total })
	var judge <-chan time.Time
	if plan.SlowRate <= 0 || plan.Ramp <= 0 {
		r.pace = Slow
		start(workers, body)
	} else {
		r.judged = Pace{SlowRate: plan.SlowRate, SlowWindows: 2}
		r.judged.Start(time.Now(), 0) // the first window: from the first answer
		start(1, body)
		t := time.NewTicker(plan.Ramp)
		defer t.Stop()
		judge = t.C
	}
	err = r.absorbAll(ctx, judge, func() bool {
		p := r.judge()
		if p == Slow {
			start(workers-1, nil)
		}
		return p != Unjudged
	})
	wg.Wait()
	if err != nil {
		return err
	}
	if r.fallback {
		// Everything up to the prefix is hashed; the rest comes as one
		// stream, over any ranges already on disk.
		return d.stream(ctx, job, nil, -1)
	}
	return nil
}

// noRanges tells the job's owner that ranges did not work.
func (d *Download) noRanges(job Job) {
	if job.NoRanges != nil {
		job.NoRanges()
	}
}

// judge looks at the first range's pace each ramp while it runs alone,
// unless its worker settled it already (its range ended first: fast).
// One window at slowRate or more is fast; two in a row under it are slow
// (one is not enough: on a busy machine a fast path can start slowly).
func (r *rangedRun) judge() Verdict {
	d := r.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.pace == Unjudged {
		r.pace = r.judged.Judge(time.Now(), d.written, 1)
	}
	return r.pace
}

// absorbAll hashes the contiguous prefix as it grows, until the blob is
// complete, a worker fails, or the workers stop for a fallback. Each time
// judge fires it calls judged, until judged returns true.
func (r *rangedRun) absorbAll(ctx context.Context, judge <-chan time.Time, judged func() bool) error {
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
		case <-judge:
			if judged() {
				judge = nil
			}
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

// exit records that a worker ended (with err, unless it is nil or the
// fallback).
func (r *rangedRun) exit(err error) {
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

// claim returns the next pieces nobody fetches yet, [i, j), or -1: one
// piece on a slow path, all that are left on a fast one. A claim before
// the pace is judged comes from the first range ending first: fast.
func (r *rangedRun) claim() (i, j int) {
	d := r.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.fallback || r.err != nil {
		return -1, -1
	}
	if r.pace == Unjudged {
		r.pace = Fast
	}
	for i, p := range r.pieces {
		if p.claimed {
			continue
		}
		j := i + 1
		for r.pace == Fast && j < len(r.pieces) && !r.pieces[j].claimed {
			j++
		}
		for _, q := range r.pieces[i:j] {
			q.claimed = true
		}
		return i, j
	}
	return -1, -1
}

// work fetches pieces until none is left: first piece at with body when
// at >= 0.
func (r *rangedRun) work(ctx context.Context, body io.ReadCloser, at int) error {
	buf := make([]byte, 256<<10)
	for {
		to := at + 1
		if at < 0 {
			if at, to = r.claim(); at < 0 {
				return nil
			}
		}
		if err := r.fill(ctx, at, to, body, buf); err != nil {
			return err
		}
		body, at = nil, -1
	}
}

// fill fetches the rest of pieces [i, j) as one range (from body when
// given), continuing a broken stream from the last byte on disk up to
// maxResumes times.
func (r *rangedRun) fill(ctx context.Context, i, j int, body io.ReadCloser, buf []byte) error {
	d := r.d
	defer func() {
		if body != nil {
			body.Close()
		}
	}()
	last := r.pieces[j-1].end // the run's end
	resumes := 0
	for i < j {
		p := r.pieces[i]
		d.mu.Lock()
		from := p.start + p.got // only this worker changes p.got
		d.mu.Unlock()
		if from == p.end {
			i++
			continue
		}
		if body == nil {
			b, total, ranged, err := r.job.FetchRange(ctx, from, last-1)
			switch {
			case err == nil && (!ranged || total != r.total):
				b.Close()
				fallthrough
			case errors.Is(err, ErrNoRanges):
				d.noRanges(r.job)
				d.update(func() { r.fallback = true })
				return errRangesFallback
			case err != nil:
				return err
			}
			body = b
		}
		n, rerr := body.Read(buf[:min(int64(len(buf)), p.end-from)])
		if n > 0 {
			if _, err := d.w.WriteAt(buf[:n], from); err != nil {
				return fmt.Errorf("%w: %w", ErrStoreWrite, err)
			}
			r.progress(p, int64(n))
		}
		if rerr == nil || (rerr == io.EOF && from+int64(n) == last) {
			continue
		}
		if rerr == io.EOF {
			rerr = io.ErrUnexpectedEOF
		}
		body.Close()
		body = nil
		if resumes == maxResumes || ctx.Err() != nil {
			return fmt.Errorf("%w: reading bytes %d-%d of the blob: %w", ErrUpstreamBroken, p.start, last-1, rerr)
		}
		resumes++
		if r.job.Resumed != nil {
			r.job.Resumed()
		}
	}
	return nil
}

// progress counts n more bytes of p on disk and moves the readable prefix.
func (r *rangedRun) progress(p *piece, n int64) {
	d := r.d
	d.update(func() {
		p.got += n
		for r.head < len(r.pieces) && r.pieces[r.head].got == r.pieces[r.head].end-r.pieces[r.head].start {
			r.head++
		}
		if r.head == len(r.pieces) {
			d.written = r.total
		} else {
			h := r.pieces[r.head]
			d.written = h.start + h.got
		}
	})
}
