package fetch

import (
	"context"
	"slices"
	"time"
)

// The pieces of a ranged download and who fetches them. Every method
// here runs under d.mu.

// piece is one range of a ranged download: bytes [start, end), got of
// them on disk (contiguous from start). Its end moves down when another
// worker takes part of its rest.
type piece struct {
	start, end, got int64
	claimed         bool
	waiting         bool               // asked ahead: its worker reads it when its current piece ends
	asked           time.Time          // when its current request was made
	first, last     time.Time          // its first and latest bytes since then
	cancel          context.CancelFunc // drops its current request (a takeover)
}

// measured reports whether p's rate can be trusted: it has flowed for
// half a ramp (its first reads come at any rate). steal also wants the
// bytes of a smallest piece: a stream that broke after a byte and is
// asking again has a "rate" of that byte over the wait, and half its rest
// stolen on that figure costs the bytes its new request sends past the
// cut.
func (r *rangedRun) measured(p *piece) bool { return p.last.Sub(p.first) >= r.plan.Ramp/2 }

// rate is the bytes a second p has brought since its first byte (0: none yet).
func (p *piece) rate() float64 {
	secs := p.last.Sub(p.first).Seconds()
	if p.first.IsZero() || secs <= 0 {
		return 0
	}
	return float64(p.got) / secs
}

// minPiece is the smallest piece cut or stolen: each is a request, and a
// round trip on a long path is worth about a megabyte of one stream.
func (r *rangedRun) minPiece() int64 { return max(r.plan.Chunk/8, 1) }

// claim returns the next piece for a worker whose last piece was last
// (nil: none yet). leave is true when the worker should stop: the blob is
// complete or failed, or fewer streams are wanted (it is taken off live
// here). A nil piece without leave: nothing to take now; look again soon.
func (r *rangedRun) claim(last *piece) (p *piece, leave bool) {
	d := r.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.pace == Unjudged {
		r.pace = Fast // the first range ended before it was judged
	}
	if r.fallback || r.err != nil || (r.pace == Slow && r.live > max(r.ctl.target, 1)) {
		r.live--
		return nil, true
	}
	for _, q := range r.pieces {
		if !q.claimed { // given back by a throttled stream
			q.claimed = true
			q.first, q.last = time.Time{}, time.Time{}
			return q, false
		}
	}
	if r.next < r.total {
		return r.cut(), false
	}
	if r.head == len(r.pieces) {
		r.live--
		return nil, true
	}
	return r.steal(last, time.Now()), false
}

// cut claims the next piece of the bytes no piece covers yet (there are
// some): fast, the whole rest as one range; parallel, guided: pieces
// shrink toward the end, so the streams end together.
func (r *rangedRun) cut() *piece {
	size := r.total - r.next
	if r.pace == Slow {
		size = min(r.plan.Chunk, max(size/int64(max(r.ctl.target, 1)), r.minPiece()))
		if r.total-r.next-size < r.minPiece() {
			size = r.total - r.next
		}
	}
	p := &piece{start: r.next, end: r.next + size, claimed: true}
	r.pieces = append(r.pieces, p)
	r.next = p.end
	return p
}

// steal takes work from the stream that lags most, for a worker whose
// last piece was last: the whole rest of a stalled stream (its request
// is dropped), else the second half
// of the rest of one that would end later than this worker could fetch
// that half, by its own rate and round trip. nil: nobody lags.
func (r *rangedRun) steal(last *piece, now time.Time) *piece {
	stall := r.stallAfter()
	var victim *piece
	var worst time.Duration
	for _, q := range r.pieces[r.head:] {
		rest := q.end - q.start - q.got
		if rest <= 0 || !q.claimed || q.asked.IsZero() {
			continue
		}
		if r.stalled(q, now) {
			return r.split(q, q.start+q.got, now, true)
		}
		if rest < 2*r.minPiece() {
			continue
		}
		rate := q.rate()
		if rate <= 0 || !r.measured(q) || q.got < r.minPiece() {
			continue // no rate worth acting on yet (a stream that broke after a byte and asks again)
		}
		if left := time.Duration(float64(rest) / rate * float64(time.Second)); left > worst {
			victim, worst = q, left
		}
	}
	if victim == nil || last == nil || last.rate() <= 0 {
		return nil
	}
	rest := victim.end - victim.start - victim.got
	rtt := max(last.first.Sub(last.asked), r.rtt) // an answer asked ahead came without its round trip
	mine := rtt + time.Duration(float64(rest/2)/last.rate()*float64(time.Second))
	if worst < mine*3/2 || worst < stall/5 {
		return nil
	}
	return r.split(victim, victim.start+victim.got+rest/2, now, false)
}

// takeOver splits off the rest of every stream that has stalled, for new
// workers.
func (r *rangedRun) takeOver(now time.Time) []*piece {
	var taken []*piece
	for _, q := range slices.Clone(r.pieces[r.head:]) {
		if r.stalled(q, now) {
			taken = append(taken, r.split(q, q.start+q.got, now, true))
		}
	}
	return taken
}

// stalled reports whether q's stream has brought nothing for stallAfter
// while another brought bytes since: one that has finished, or one still
// flowing in the last half of that time. Then the path stalls this
// stream, not the whole process (a busy machine, a disk that holds every
// write) or the upstream (it answers everyone slowly). A stream alone is
// never taken over: a copy of its request would wait the same.
func (r *rangedRun) stalled(q *piece, now time.Time) bool {
	stall := r.stallAfter()
	if !q.claimed || q.waiting || q.end <= q.start+q.got || q.asked.IsZero() || now.Sub(q.lastSeen()) < stall {
		return false
	}
	for _, o := range r.pieces {
		done := o.got >= o.end-o.start
		if o != q && o.last.After(q.lastSeen()) && (done || o.last.After(now.Add(-stall/2))) {
			return true
		}
	}
	return false
}

// lastSeen is when p last brought a byte, or was asked for.
func (p *piece) lastSeen() time.Time {
	if p.last.Before(p.asked) {
		return p.asked
	}
	return p.last
}

// stallAfter is how long a stream may bring nothing before its rest is
// taken over.
func (r *rangedRun) stallAfter() time.Duration {
	if r.plan.StallAfter > 0 {
		return r.plan.StallAfter
	}
	return max(10*r.plan.Ramp, 4*r.rtt, 500*time.Millisecond)
}

// split cuts q at at: bytes [at, q.end) become a new piece, claimed by
// the caller. A takeover also drops q's request.
func (r *rangedRun) split(q *piece, at int64, now time.Time, takeover bool) *piece {
	p := &piece{start: at, end: q.end, claimed: true}
	q.end = at
	i := slices.Index(r.pieces, q)
	r.pieces = slices.Insert(r.pieces, i+1, p)
	if takeover {
		r.stats.Takeovers++
		if q.cancel != nil {
			q.cancel()
		}
	} else {
		r.stats.Steals++
	}
	r.advance()
	return p
}

// taken reports whether p has nothing left for its worker: its rest was
// taken over.
func (r *rangedRun) taken(p *piece) bool {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	return p.start+p.got >= p.end
}

// throttled gives p back and takes its worker off live, lowering the
// ceiling to the streams left, unless it is the last stream (false:
// the worker fails with the upstream's answer).
func (r *rangedRun) throttled(p *piece) bool {
	d := r.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.live <= 1 {
		return false
	}
	r.live--
	r.stats.Throttled++
	p.claimed = false
	r.ctl.throttle(r.live)
	return true
}

// progress counts n bytes written at from into p and moves the readable
// prefix. Bytes past p's end (cut by a steal while they came) belong to
// another piece, which writes the same bytes there itself.
func (r *rangedRun) progress(p *piece, from, n int64) {
	d := r.d
	d.update(func() {
		if from != p.start+p.got {
			return // taken over and fetched again meanwhile
		}
		n = min(n, p.end-from)
		if n <= 0 {
			return
		}
		now := time.Now()
		if p.first.IsZero() || p.first.Before(p.asked) {
			p.first = now
		}
		p.got += n
		p.last = now
		r.received += n
		r.advance()
	})
}

// advance moves head past complete pieces and sets the readable prefix.
func (r *rangedRun) advance() {
	for r.head < len(r.pieces) && r.pieces[r.head].got >= r.pieces[r.head].end-r.pieces[r.head].start {
		r.head++
	}
	switch {
	case r.head < len(r.pieces):
		h := r.pieces[r.head]
		r.d.written = h.start + h.got
	default:
		r.d.written = r.next
	}
}
