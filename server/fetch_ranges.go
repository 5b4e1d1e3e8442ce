package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
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
// An upstream that answers a range otherwise (a 200, a wrong
// Content-Range, no total) is told to noRanges (the proxy remembers it)
// and the blob continues as one stream: from the 200 itself when it came
// first, else from the first byte not on disk.

// rangePlan is how a download cuts a blob into ranges.
type rangePlan struct {
	min      int64 // blobs longer than this are fetched in ranges; the first range is bytes 0 to min-1
	chunk    int64 // the size of every later range
	parallel int   // streams at once; < 2: one stream
}

// rangeFunc GETs bytes start to end (inclusive) of the blob. With ranged
// true, body is a 206 that holds exactly those bytes (end cut to total-1)
// and total is the blob's length. With ranged false and no error the
// upstream ignored the Range header: body is the whole blob, total its
// Content-Length (-1 unknown). errNoRanges: the answer was neither.
type rangeFunc func(ctx context.Context, start, end int64) (body io.ReadCloser, total int64, ranged bool, err error)

// errNoRanges: the upstream's answer to a range request was not the range
// asked for.
var errNoRanges = errors.New("upstream did not answer the byte range asked for")

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
	d        *download
	job      fetchJob
	total    int64
	pieces   []*piece
	head     int // the first piece not complete
	live     int // workers running
	fallback bool
	err      error
	cancel   context.CancelFunc
}

// ranged fetches the blob in ranges when the upstream answers the first
// one as asked, else as one stream.
func (d *download) ranged(ctx context.Context, job fetchJob) error {
	plan := job.ranges
	body, total, ranged, err := job.fetchRange(ctx, 0, plan.min-1)
	switch {
	case errors.Is(err, errNoRanges):
		d.noRanges(job)
		return d.stream(ctx, job, nil, -1)
	case err != nil:
		d.update(func() { d.started, d.err = true, err })
		return err
	case !ranged:
		d.noRanges(job)
		return d.stream(ctx, job, body, total)
	case total <= plan.min:
		return d.stream(ctx, job, body, total) // the whole blob is in this answer
	}

	r := &rangedRun{d: d, job: job, total: total, pieces: []*piece{{start: 0, end: plan.min, claimed: true}}}
	for off := plan.min; off < total; off += plan.chunk {
		r.pieces = append(r.pieces, &piece{start: off, end: min(off+plan.chunk, total)})
	}
	ctx, r.cancel = context.WithCancel(ctx)
	defer r.cancel()
	workers := min(plan.parallel, len(r.pieces))
	d.update(func() { d.started, d.size, r.live = true, total, workers })
	var wg sync.WaitGroup
	wg.Add(workers)
	for i := range workers {
		first, at := io.ReadCloser(nil), -1
		if i == 0 {
			first, at = body, 0
		}
		d.g.spawn("blob range download", func() {
			defer wg.Done()
			err := errDownloadPanicked
			defer func() { r.exit(err) }()
			err = r.work(ctx, first, at)
		})
	}
	err = r.absorbAll(ctx)
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
func (d *download) noRanges(job fetchJob) {
	if job.noRanges != nil {
		job.noRanges()
	}
}

// absorbAll hashes the contiguous prefix as it grows, until the blob is
// complete, a worker fails, or the workers stop for a fallback.
func (r *rangedRun) absorbAll(ctx context.Context) error {
	d := r.d
	for {
		d.mu.Lock()
		written, live, err, ch := d.written, r.live, r.err, d.changed
		d.mu.Unlock()
		if err != nil {
			return err
		}
		if aerr := d.w.Absorb(written); aerr != nil {
			err := fmt.Errorf("%w: %w", errStoreWrite, aerr) // readers pass the upstream through
			r.fail(err)
			return err
		}
		if written == r.total || live == 0 {
			return nil
		}
		select {
		case <-ch:
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

// claim returns the next piece nobody fetches yet, or -1.
func (r *rangedRun) claim() int {
	d := r.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.fallback || r.err != nil {
		return -1
	}
	for i, p := range r.pieces {
		if !p.claimed {
			p.claimed = true
			return i
		}
	}
	return -1
}

// work fetches pieces until none is left: first piece at with body when
// at >= 0.
func (r *rangedRun) work(ctx context.Context, body io.ReadCloser, at int) error {
	buf := make([]byte, 256<<10)
	for {
		if at < 0 {
			if at = r.claim(); at < 0 {
				return nil
			}
		}
		if err := r.fill(ctx, at, body, buf); err != nil {
			return err
		}
		body, at = nil, -1
	}
}

// fill fetches the rest of piece i (from body when given), continuing a
// broken stream from the last byte on disk up to maxResumes times.
func (r *rangedRun) fill(ctx context.Context, i int, body io.ReadCloser, buf []byte) error {
	p, d := r.pieces[i], r.d
	defer func() {
		if body != nil {
			body.Close()
		}
	}()
	resumes := 0
	for {
		d.mu.Lock()
		from := p.start + p.got // only this worker changes p.got
		d.mu.Unlock()
		if from == p.end {
			return nil
		}
		if body == nil {
			b, total, ranged, err := r.job.fetchRange(ctx, from, p.end-1)
			switch {
			case err == nil && (!ranged || total != r.total):
				b.Close()
				fallthrough
			case errors.Is(err, errNoRanges):
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
				return fmt.Errorf("%w: %w", errStoreWrite, err)
			}
			r.progress(p, int64(n))
		}
		if rerr == nil || (rerr == io.EOF && from+int64(n) == p.end) {
			continue
		}
		if rerr == io.EOF {
			rerr = io.ErrUnexpectedEOF
		}
		body.Close()
		body = nil
		if resumes == maxResumes || ctx.Err() != nil {
			return fmt.Errorf("%w: reading bytes %d-%d of the blob: %w", errUpstreamBroken, p.start, p.end-1, rerr)
		}
		resumes++
		if r.job.resumed != nil {
			r.job.resumed()
		}
	}
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
