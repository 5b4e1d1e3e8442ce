package fetch

import (
	"context"
	"errors"
	"io"
	"time"
)

// request asks for bytes [from, end) of p on a context a takeover can
// cancel. A nil body and error: p was taken over while asking.
func (r *rangedRun) request(ctx context.Context, p *piece, from, end int64) (io.ReadCloser, error) {
	return r.answered(p, r.ask(ctx, p, from, end))
}

// answer is the upstream's answer to a range request.
type answer struct {
	body   io.ReadCloser
	total  int64
	ranged bool
	err    error
}

// ask makes p's request for bytes [from, end).
func (r *rangedRun) ask(ctx context.Context, p *piece, from, end int64) answer {
	d := r.d
	rctx, cancel := context.WithCancel(ctx)
	d.update(func() {
		if p.cancel != nil {
			p.cancel() // the request before, broken
		}
		p.cancel, p.asked = cancel, time.Now()
		r.stats.Requests++
	})
	var a answer
	a.body, a.total, a.ranged, a.err = r.job.FetchRange(rctx, from, end-1)
	return a
}

// answered takes p's answer: its body, or what the worker does instead.
func (r *rangedRun) answered(p *piece, a answer) (io.ReadCloser, error) {
	d := r.d
	b, total, ranged, err := a.body, a.total, a.ranged, a.err
	switch {
	case err == nil && (!ranged || total != r.total):
		b.Close()
		fallthrough
	case errors.Is(err, ErrNoRanges):
		d.noRanges(r.job)
		d.update(func() { r.fallback = true })
		return nil, errRangesFallback
	case err != nil && r.taken(p):
		return nil, nil
	case errors.Is(err, ErrThrottled):
		if r.throttled(p) {
			return nil, errLeft
		}
		return nil, err
	case err != nil:
		return nil, err
	}
	return b, nil
}
