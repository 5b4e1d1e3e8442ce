package fetch

import (
	"context"
	"io"
	"time"
)

// ahead is the request for a worker's next piece, made while the last
// round trip of its current piece's bytes still comes: the next answer's
// first bytes then arrive as the current ones end, and the stream does
// not idle a round trip between pieces (on a 40 ms path that is a third
// of a 2 MiB piece at 25 MB/s, and the tail is made of such pieces).
type ahead struct {
	p    *piece
	done chan struct{} // closed when the answer is in
	a    answer
}

// askAhead asks for the worker's next piece when p has at most a round
// trip of its stream's bytes left, the streams are parallel, this worker
// stays (no fewer streams are wanted) and some bytes are not cut into
// pieces yet. nil: not now. The request holds an upstream connection
// slot like any other (max_upstream_connections still bounds them).
func (r *rangedRun) askAhead(ctx context.Context, p *piece, left int64) *ahead {
	d := r.d
	d.mu.Lock()
	var q *piece
	// The piece's rate is trusted once it has flowed for half a ramp:
	// its first reads come at any rate. (A tail piece of 2 MiB at 25
	// MB/s flows for 84 ms; its next is asked 40 ms before its end.)
	flowed := r.measured(p)
	if r.pace == Slow && r.err == nil && !r.fallback && r.live <= r.ctl.target && r.next < r.total &&
		flowed && float64(left) <= p.rate()*r.rtt.Seconds() {
		q = r.cut()
		q.waiting = true
		r.stats.Ahead++
	}
	d.mu.Unlock()
	if q == nil {
		return nil
	}
	a := &ahead{p: q, done: make(chan struct{}), a: answer{err: ErrDownloadPanicked}}
	d.g.spawn("blob range ask-ahead", func() {
		defer close(a.done)
		a.a = r.ask(ctx, q, q.start, q.end)
	})
	return a
}

// take waits for a's answer and returns its piece and body, or what the
// worker does instead, as request does (a nil piece and error: the piece
// was taken over while it waited).
func (r *rangedRun) take(a *ahead) (*piece, io.ReadCloser, error) {
	<-a.done
	r.d.update(func() { a.p.waiting = false; a.p.asked = time.Now() })
	b, err := r.answered(a.p, a.a)
	if b == nil {
		return nil, nil, err
	}
	return a.p, b, nil
}

// drop ends an ahead request its worker will not read (the worker failed
// or left): its body is closed and its piece given back for another.
func (r *rangedRun) drop(a *ahead) {
	if a == nil {
		return
	}
	r.d.update(func() {
		if a.p.cancel != nil {
			a.p.cancel()
		}
	})
	<-a.done
	if a.a.body != nil {
		a.a.body.Close()
	}
	r.d.update(func() {
		if a.p.cancel != nil {
			a.p.cancel()
			a.p.cancel = nil
		}
		a.p.waiting = false
		if a.p.got < a.p.end-a.p.start {
			a.p.claimed = false
			a.p.first, a.p.last = time.Time{}, time.Time{}
		}
	})
}
