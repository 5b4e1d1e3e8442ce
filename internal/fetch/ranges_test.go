package fetch

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/store/storetest"
	"golang.org/x/time/rate"
)

// path is an emulated upstream for ranged downloads: each answer capped
// at stream bytes a second, all answers together at link (0: no cap),
// with hooks that stall, slow or refuse chosen requests.
type path struct {
	blob    []byte
	stream  float64
	link    *rate.Limiter
	latency time.Duration // before each answer

	mu       sync.Mutex
	requests int
	open     int // answers being read now
	maxOpen  int
	sent     int64
	// answer decides request i (0 the first): an error refuses it; a
	// rate above 0 replaces stream; stall holds it after 64 KiB until
	// the channel is closed.
	answer func(i, open int) (streamRate float64, stall <-chan struct{}, err error)
}

func newPath(size int, stream, link float64) *path {
	p := &path{blob: make([]byte, size), stream: stream}
	rand.Read(p.blob)
	if link > 0 {
		p.link = rate.NewLimiter(rate.Limit(link), 64<<10)
	}
	return p
}

func (p *path) fetchRange(ctx context.Context, start, end int64) (io.ReadCloser, int64, bool, error) {
	if p.latency > 0 {
		select {
		case <-time.After(p.latency):
		case <-ctx.Done():
			return nil, -1, false, ctx.Err()
		}
	}
	p.mu.Lock()
	i := p.requests
	p.requests++
	var err error
	streamRate, stall := p.stream, (<-chan struct{})(nil)
	if p.answer != nil {
		var r float64
		r, stall, err = p.answer(i, p.open)
		if r > 0 {
			streamRate = r
		}
	}
	if err == nil {
		p.open++
		p.maxOpen = max(p.maxOpen, p.open)
	}
	p.mu.Unlock()
	if err != nil {
		return nil, -1, false, err
	}
	end = min(end, int64(len(p.blob))-1)
	b := &pathBody{p: p, ctx: ctx, data: p.blob[start : end+1], stall: stall}
	if streamRate > 0 {
		b.lim = rate.NewLimiter(rate.Limit(streamRate), 64<<10)
	}
	return b, int64(len(p.blob)), true, nil
}

func (p *path) bytesSent() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent
}

type pathBody struct {
	p      *path
	ctx    context.Context
	data   []byte
	off    int
	lim    *rate.Limiter
	stall  <-chan struct{}
	closed bool
}

func (b *pathBody) Read(buf []byte) (int, error) {
	if b.off == len(b.data) {
		return 0, io.EOF
	}
	if b.stall != nil && b.off >= 64<<10 {
		select {
		case <-b.stall:
			b.stall = nil
		case <-b.ctx.Done():
			return 0, b.ctx.Err()
		}
	}
	n := min(len(buf), len(b.data)-b.off, 32<<10)
	for _, l := range []*rate.Limiter{b.lim, b.p.link} {
		if l != nil {
			if err := l.WaitN(b.ctx, n); err != nil {
				return 0, err
			}
		}
	}
	copy(buf, b.data[b.off:b.off+n])
	b.off += n
	b.p.mu.Lock()
	b.p.sent += int64(n)
	b.p.mu.Unlock()
	return n, nil
}

func (b *pathBody) Close() error {
	b.p.mu.Lock()
	if !b.closed {
		b.p.open--
	}
	b.closed = true
	b.p.mu.Unlock()
	return nil
}

// rangedDownload fetches p's blob with plan and returns what the download
// reported, failing the test unless the stored blob is right within limit.
func rangedDownload(t *testing.T, p *path, plan RangePlan, limit time.Duration) RangeStats {
	t.Helper()
	st := storetest.Open(t)
	g := NewGroup(Config{Timeout: time.Minute, NewTemp: storeTemps(st)})
	want := store.DigestOf(p.blob)
	stats := make(chan RangeStats, 1)
	ended := make(chan error, 1)
	dl, _, err := g.Join(context.Background(), Job{
		Want: want, Ranges: plan, FetchRange: p.fetchRange,
		Fetch: func(ctx context.Context, _, _ int64) (io.ReadCloser, int64, error) {
			return nil, -1, errors.New("one stream asked for: the ranges fell back")
		},
		RangesEnded: func(s RangeStats) { stats <- s },
		Ended:       func(err error) { ended <- err },
		Keep:        true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Release()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("download: %v", err)
		}
	case <-time.After(limit):
		t.Fatalf("the download did not end within %s", limit)
	}
	if _, err := st.StatBlob(context.Background(), want); err != nil {
		t.Fatalf("the blob was not stored: %v", err)
	}
	return <-stats
}

// TestRangesGrowWhileTheLinkHasRoom: streams of 4 MB/s on a 32 MB/s link
// start at 2 and grow; the probe past what the link carries is given
// back, and every byte crosses the path once.
func TestRangesGrowWhileTheLinkHasRoom(t *testing.T) {
	p := newPath(24<<20, 4e6, 32e6)
	// Ramps of 50 ms, as berth's own: a window of 20 ms on a machine busy
	// with the race detector and other packages measured two streams
	// short of one stream's rate each, and the streams never grew.
	plan := RangePlan{Min: 1 << 20, Chunk: 1 << 20, Parallel: 2, MaxParallel: 16, Ramp: 50 * time.Millisecond, SlowRate: 1e12, StallAfter: time.Hour}
	st := rangedDownload(t, p, plan, 30*time.Second)
	t.Logf("%+v, %d requests answered, %d bytes", st, p.requests, p.bytesSent())
	// How far it grows depends on the machine's timing (a busy one
	// measures less and stops sooner); TestStreamsAdapt has the exact
	// steps.
	if st.Peak <= plan.Parallel {
		t.Errorf("at most %d streams at once; the link carries 8 of them", st.Peak)
	}
	if sent := p.bytesSent(); sent != int64(len(p.blob)) {
		t.Errorf("the path carried %d bytes for a blob of %d", sent, len(p.blob))
	}
}

// TestRangesAskAhead: on a path with a round trip of 30 ms, each stream
// asks for its next piece while its current one's last round trip of
// bytes comes, so its answer is there when the piece ends. Every byte
// still crosses the path once, and at most one request a stream waits
// ahead.
func TestRangesAskAhead(t *testing.T) {
	p := newPath(16<<20, 8e6, 0)
	p.latency = 30 * time.Millisecond
	plan := RangePlan{Min: 1 << 20, Chunk: 1 << 20, Parallel: 4, MaxParallel: 4, Ramp: 20 * time.Millisecond, SlowRate: 1e12, StallAfter: time.Hour}
	st := rangedDownload(t, p, plan, 30*time.Second)
	t.Logf("%+v, %d answers open at most", st, p.maxOpen)
	if st.Ahead == 0 {
		t.Errorf("no piece was asked for ahead of its stream's last: %+v", st)
	}
	if sent := p.bytesSent(); sent != int64(len(p.blob)) {
		t.Errorf("the path carried %d bytes for a blob of %d", sent, len(p.blob))
	}
	if p.maxOpen > 2*plan.MaxParallel {
		t.Errorf("%d answers open at once for %d streams", p.maxOpen, plan.MaxParallel)
	}
}

// TestRangesDoNotGrowOnAFullLink: streams of 4 MB/s on an 8 MB/s link: the
// first window shows the link full, so no stream beyond the first four
// is ever opened, and two are kept.
func TestRangesDoNotGrowOnAFullLink(t *testing.T) {
	p := newPath(12<<20, 4e6, 8e6)
	// Ramps of 50 ms: one stream's rate alone is judged over 100 ms, long
	// enough that a busy machine does not make it look slower than the
	// link is full.
	plan := RangePlan{Min: 1 << 20, Chunk: 1 << 20, Parallel: 4, MaxParallel: 16, Ramp: 50 * time.Millisecond, SlowRate: 1e12, StallAfter: time.Hour}
	st := rangedDownload(t, p, plan, 30*time.Second)
	t.Logf("%+v", st)
	if st.Peak != 4 || p.maxOpen > 4 {
		t.Errorf("%d streams at most (%d answers open at once), want the first 4 only", st.Peak, p.maxOpen)
	}
}

// TestRangesStallTakenOver: a stream that stops (a lossy path) has its
// rest fetched by another; its request is dropped and the download ends
// long before the stall would.
func TestRangesStallTakenOver(t *testing.T) {
	p := newPath(8<<20, 0, 0)
	stall := make(chan struct{})
	defer close(stall)
	p.answer = func(i, _ int) (float64, <-chan struct{}, error) {
		if i == 2 {
			return 0, stall, nil
		}
		return 0, nil, nil
	}
	plan := RangePlan{Min: 1 << 20, Chunk: 1 << 20, Parallel: 4, MaxParallel: 4, StallAfter: 200 * time.Millisecond}
	// The stall never ends before the test does: the download can only
	// end by a takeover (on a busy machine a stream that was not
	// scheduled for the stall time is taken over too: one piece again).
	st := rangedDownload(t, p, plan, 20*time.Second)
	if st.Takeovers < 1 {
		t.Errorf("no takeover: %+v", st)
	}
	if sent := p.bytesSent(); sent > int64(len(p.blob))+int64(st.Takeovers-1)*plan.Chunk {
		t.Errorf("the path carried %d bytes for a blob of %d (%d takeovers)", sent, len(p.blob), st.Takeovers)
	}
}

// TestRangesLaggardGivesHalf: one stream at a tenth of the others' rate
// gives the second half of its rest to a stream that ran out of work.
func TestRangesLaggardGivesHalf(t *testing.T) {
	p := newPath(16<<20, 16e6, 0)
	p.answer = func(i, _ int) (float64, <-chan struct{}, error) {
		if i == 1 {
			return 1e6, nil, nil
		}
		return 0, nil, nil
	}
	plan := RangePlan{Min: 1 << 20, Chunk: 4 << 20, Parallel: 4, MaxParallel: 4, StallAfter: 10 * time.Second}
	st := rangedDownload(t, p, plan, 30*time.Second)
	if st.Steals < 1 {
		t.Errorf("no steal from the slow stream: %+v", st)
	}
	// The slow stream is cut where the half begins: it stops there, at
	// most one read of it past that byte.
	if sent := p.bytesSent(); sent > int64(len(p.blob))+int64(st.Steals)*(32<<10) {
		t.Errorf("the path carried %d bytes for a blob of %d (%d steals)", sent, len(p.blob), st.Steals)
	}
}

// TestRangesThrottled: an upstream that refuses a fourth concurrent range
// with a 429 gets three streams; the refused stream's piece is fetched by
// another and the download completes.
func TestRangesThrottled(t *testing.T) {
	p := newPath(12<<20, 8e6, 0)
	p.answer = func(i, open int) (float64, <-chan struct{}, error) {
		if open >= 3 {
			return 0, nil, ErrThrottled
		}
		return 0, nil, nil
	}
	plan := RangePlan{Min: 1 << 20, Chunk: 1 << 20, Parallel: 4, MaxParallel: 16, Ramp: 20 * time.Millisecond, SlowRate: 1e12, StallAfter: time.Hour}
	st := rangedDownload(t, p, plan, 30*time.Second)
	if st.Throttled < 1 || p.maxOpen > 3 {
		t.Errorf("%d streams throttled, %d answers open at most: %+v", st.Throttled, p.maxOpen, st)
	}
	if sent := p.bytesSent(); sent != int64(len(p.blob)) {
		t.Errorf("the path carried %d bytes for a blob of %d", sent, len(p.blob))
	}
}

// TestStreamsAdapt: the stream count's steps, on a clock of its own. A
// 200 MB/s link at 25 MB/s a stream: 4 streams bring 100 MB/s (room:
// 8), 8 bring 200 (room: 16), 16 bring 200 (full: back to 8). A 50 MB/s
// link: 4 bring 50, full at once: 2, and none opened. A 429 caps it.
func TestStreamsAdapt(t *testing.T) {
	const single = 25e6
	plan := RangePlan{Parallel: 4, MaxParallel: 16, Ramp: 50 * time.Millisecond}
	rtt := 40 * time.Millisecond
	// aggregate is the path's rate with n streams.
	run := func(aggregate func(n int) float64) (targets []int, opened int) {
		now := time.Unix(0, 0)
		s := newStreams(plan, single, rtt, now)
		var received float64
		for range 100 {
			now = now.Add(plan.Ramp)
			received += aggregate(s.target) * plan.Ramp.Seconds()
			before := s.target
			opened += s.measure(now, int64(received), s.target)
			if s.target != before {
				targets = append(targets, s.target)
			}
		}
		return targets, opened
	}
	link := func(rate float64) func(int) float64 {
		return func(n int) float64 { return min(float64(n)*single, rate) }
	}
	if got, opened := run(link(200e6)); !slices.Equal(got, []int{8, 16, 8}) || opened != 12 {
		t.Errorf("200 MB/s link: targets %v, %d opened; want [8 16 8], 12", got, opened)
	}
	if got, opened := run(link(50e6)); !slices.Equal(got, []int{2}) || opened != 0 {
		t.Errorf("50 MB/s link: targets %v, %d opened; want [2], 0", got, opened)
	}
	// An upstream that slows every stream when 16 come (or a window that
	// caught them before they flowed): 80 MB/s in all would say 3
	// streams, but 8 were seen to carry 200 MB/s, and 8 stay.
	dip := func(n int) float64 {
		if n >= 16 {
			return 80e6
		}
		return float64(n) * single
	}
	if got, _ := run(dip); !slices.Equal(got, []int{8, 16, 8}) {
		t.Errorf("a dip at 16 streams: targets %v; want [8 16 8]", got)
	}
	s := newStreams(plan, single, rtt, time.Unix(0, 0))
	s.throttle(3)
	if s.target != 3 || s.max != 3 || s.growing {
		t.Errorf("after a 429 with 3 streams left: %+v", s)
	}
	if s := newStreams(RangePlan{Parallel: 4, MaxParallel: 2}, single, rtt, time.Unix(0, 0)); s.target != 2 {
		t.Errorf("Parallel 4 within a ceiling of 2 (max_upstream_connections): %d streams", s.target)
	}
}

// TestRangesLoneStreamNotTakenOver: on a fast path one stream fetches the
// rest; when it pauses past the stall time (a busy machine, a slow
// upstream) nothing else flows, so it is not taken over: a second request
// would wait the same and fetch the bytes twice.
func TestRangesLoneStreamNotTakenOver(t *testing.T) {
	p := newPath(4<<20, 0, 0)
	pause := make(chan struct{})
	time.AfterFunc(400*time.Millisecond, func() { close(pause) })
	p.answer = func(i, _ int) (float64, <-chan struct{}, error) {
		if i == 1 { // the rest, after the first range
			return 0, pause, nil
		}
		return 0, nil, nil
	}
	plan := RangePlan{Min: 1 << 20, Chunk: 1 << 20, Parallel: 4, MaxParallel: 4, Ramp: 20 * time.Millisecond, SlowRate: 1, StallAfter: 100 * time.Millisecond}
	st := rangedDownload(t, p, plan, 20*time.Second)
	if st.Takeovers != 0 || st.Requests != 2 {
		t.Errorf("%+v: want the first range and the rest, no takeover", st)
	}
	if sent := p.bytesSent(); sent != int64(len(p.blob)) {
		t.Errorf("the path carried %d bytes for a blob of %d", sent, len(p.blob))
	}
}
