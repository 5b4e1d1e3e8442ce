package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/berth-registry/berth/store"
)

// Group decides how upstream blob downloads are shared: at most one
// download per digest is under way; every request for that digest, the
// first and any later one, reads from the same growing temp file as bytes
// arrive. The download runs on a detached context bounded by timeout, so it
// finishes (and is cached) even when the client that started it hangs up.
//
// Readers never see the last byte of a blob before its digest is verified:
// a corrupt download ends every reader with an error, one byte short, so no
// client ever receives a complete wrong blob. Once verified, readers may
// finish while the blob is made durable and entered in the index.
type Group struct {
	timeout time.Duration
	newTemp func(ctx context.Context, alg string) (TempBlob, error)
	onStart func()
	onEnd   func()
	spawn   func(where string, f func()) // starts the download goroutine
	stored  func(ctx context.Context, d store.Digest) bool

	// Bounds: downloads under way in all (maxActive), started by one
	// client (perClient), and how long one that nobody needs any more
	// (no reader, not eager) goes on before it is cancelled (grace).
	maxActive, perClient int
	grace                time.Duration

	mu       sync.Mutex
	active   map[string]*Download
	byClient map[string]int // downloads under way per client that started them
}

// ErrDownloadsFull is join's answer when a bound on downloads under way
// is reached: the client gets 429 and others are still served.
var ErrDownloadsFull = errors.New("too many blob downloads under way")

// ErrStored is join's answer when no download is under way because the
// blob is in the store already: one that ended between the caller's look
// at the store and its join. The caller reads the store instead of
// fetching the blob a second time.
var ErrStored = errors.New("blob stored meanwhile")

// Config is what a Group is made of.
type Config struct {
	// Timeout bounds one download (zero: an hour).
	Timeout time.Duration
	// NewTemp makes the temp file a download writes.
	NewTemp func(ctx context.Context, alg string) (TempBlob, error)
	// OnStart and OnEnd are told when a download begins and ends (may be
	// nil).
	OnStart, OnEnd func()
	// Spawn starts a download's goroutine (nil: go f()); the caller's
	// guard recovers panics.
	Spawn func(where string, f func())
	// MaxActive and PerClient bound the downloads under way, in all and
	// started by one client; Grace is how long one that nobody needs any
	// more goes on. Zero: the defaults below.
	MaxActive, PerClient int
	Grace                time.Duration
	// Stored reports whether the store holds a blob (nil: never asked).
	// Join asks it, under the group's lock, before it starts a download.
	Stored func(ctx context.Context, d store.Digest) bool
}

// NewGroup returns a Group made of c.
func NewGroup(c Config) *Group {
	g := &Group{timeout: c.Timeout, newTemp: c.NewTemp, onStart: c.OnStart, onEnd: c.OnEnd, spawn: c.Spawn, stored: c.Stored,
		maxActive: c.MaxActive, perClient: c.PerClient, grace: c.Grace,
		active: map[string]*Download{}, byClient: map[string]int{}}
	if g.timeout <= 0 {
		g.timeout = time.Hour
	}
	if g.onStart == nil {
		g.onStart = func() {}
	}
	if g.onEnd == nil {
		g.onEnd = func() {}
	}
	if g.spawn == nil {
		g.spawn = func(_ string, f func()) { go f() }
	}
	if g.maxActive <= 0 {
		g.maxActive = DefaultMaxDownloads
	}
	if g.perClient <= 0 {
		g.perClient = DefaultMaxDownloadsPerClient
	}
	if g.grace <= 0 {
		g.grace = DefaultAbandonGrace
	}
	return g
}

// Default bounds of a Group.
const (
	DefaultMaxDownloads          = 256
	DefaultMaxDownloadsPerClient = 32
	DefaultAbandonGrace          = 10 * time.Second
)

// Active is the number of downloads under way.
func (g *Group) Active() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.active)
}

// TempBlob is the file a download writes and its readers follow: what the
// download needs of store.BlobWriter.
type TempBlob interface {
	io.Writer // appends, hashing
	io.ReaderAt
	// WriteAt writes past the hashed part without hashing; Absorb(end)
	// hashes up to end once every byte before it is written.
	io.WriterAt
	Absorb(end int64) error
	// Verify checks the bytes written against want (and size, when >= 0).
	Verify(want store.Digest, size int64) error
	// Commit makes the file the stored blob want, with links.
	Commit(ctx context.Context, want store.Digest, size int64, links ...store.Link) (store.BlobInfo, error)
	// OpenReader opens the file on its own offset (for sendfile); it stays
	// readable after Commit or Close.
	OpenReader() (*os.File, error)
	Close() error
}

var _ TempBlob = (*store.BlobWriter)(nil)

// Func starts the upstream transfer from byte offset on (0: the whole
// blob) of a blob total bytes long (-1 when not known yet): it returns the
// body, positioned at offset, and the blob's length (-1 when unknown).
type Func func(ctx context.Context, offset, total int64) (body io.ReadCloser, size int64, err error)

// maxResumes bounds how often one download continues after its upstream
// stream broke.
const maxResumes = 3

// Job is one blob to download: where its bytes come from, the link
// recorded when it is stored, and whom to tell how it ended.
type Job struct {
	Want    store.Digest
	Fetch   Func
	Link    store.Link  // recorded with the blob when it commits
	Ended   func(error) // told the result once (metrics, logs); may be nil
	Resumed func()      // told each time a broken stream continues; may be nil

	// Parallel byte ranges (ranges.go): used when FetchRange is set and
	// Ranges.Parallel > 1.
	Ranges     RangePlan
	FetchRange RangeFunc
	NoRanges   func() // told when the upstream answered a range request otherwise; may be nil
	// RangesEnded is told what a ranged download did; may be nil.
	RangesEnded func(RangeStats)

	// Client started the download (its address; "" for berth's own
	// work), counted against the per-client bound. Keep: the download is
	// wanted without a reader (eager layers), so it is not cancelled
	// when its last reader leaves.
	Client string
	Keep   bool
}

// ErrUpstreamBroken marks an upstream answer that arrived but cannot be
// used: a body cut short, bytes that do not match their digest or length.
var ErrUpstreamBroken = errors.New("upstream sent a broken answer")

// ErrDownloadPanicked is a download's result when its goroutine panicked.
var ErrDownloadPanicked = errors.New("download panicked")

// ErrDownloadFailed ends readers of a download that failed.
var ErrDownloadFailed = errors.New("upstream download failed")

// ErrStoreWrite marks a download that failed because the store could not
// write (disk full, I/O error): readers fall back to passing the upstream
// through.
var ErrStoreWrite = errors.New("store write failed")

// download is one upstream transfer into one temp file.
type Download struct {
	g    *Group
	want store.Digest
	w    TempBlob
	repo string // the repository path the download is for (its link)

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every state change
	started  bool          // size known (or err set)
	size     int64
	written  int64
	verified bool // all bytes are in and they hash to want
	done     bool // committed, or failed
	err      error
	refs     int                // guarded by g.mu
	keep     bool               // wanted without readers (eager); guarded by g.mu
	client   string             // who started it, for byClient
	cancel   context.CancelFunc // ends the transfer; set before the runner starts
	idle     *time.Timer        // cancels the download when nobody needs it; guarded by g.mu
	ended    bool               // finish ran; guarded by g.mu
}

// join returns the download of job.Want, starting job when none is under
// way. leader is true for the caller that started it. The caller must call
// release when done reading. An error means no temp file could be made
// (the store cannot write).
func (g *Group) Join(ctx context.Context, job Job) (d *Download, leader bool, err error) {
	want := job.Want
	key := want.String()
	g.mu.Lock()
	defer g.mu.Unlock()
	if d, ok := g.active[key]; ok {
		d.refs++
		d.keep = d.keep || job.Keep
		if d.idle != nil {
			d.idle.Stop()
			d.idle = nil
		}
		return d, false, nil
	}
	// A download commits its blob before it leaves active: asked under
	// the lock, the store either holds the blob or a download is above.
	if g.stored != nil && g.stored(ctx, want) {
		return nil, false, ErrStored
	}
	if len(g.active) >= g.maxActive || (job.Client != "" && g.byClient[job.Client] >= g.perClient) {
		return nil, false, ErrDownloadsFull
	}
	w, err := g.newTemp(ctx, want.Algorithm())
	if err != nil {
		return nil, false, err
	}
	tctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	d = &Download{g: g, want: want, w: w, repo: job.Link.Repo, changed: make(chan struct{}), size: -1, refs: 2, // caller + runner
		keep: job.Keep, client: job.Client, cancel: cancel}
	g.active[key] = d
	if job.Client != "" {
		g.byClient[job.Client]++
	}
	g.onStart()
	g.spawn("blob download", func() { d.run(tctx, job) })
	return d, true, nil
}

func (d *Download) run(ctx context.Context, job Job) {
	// A panic below still ends the download, failed, for every reader
	// (the goroutine's guard logs and counts it).
	err := ErrDownloadPanicked
	defer func() { d.finish(err, job.Ended) }()
	defer d.cancel()
	if err = d.transfer(ctx, job); err != nil {
		return
	}
	if err = d.w.Verify(d.want, -1); err != nil {
		err = fmt.Errorf("%w: %w", ErrUpstreamBroken, err)
		return
	}
	// Readers may have the last byte now; making the blob durable (fsync
	// of the whole file, rename, index) need not hold them up.
	d.update(func() { d.verified = true })
	_, err = d.w.Commit(ctx, d.want, -1, job.Link)
}

// finish reports the download's end to onDone and its readers, and frees
// its digest for the next download.
func (d *Download) finish(err error, onDone func(error)) {
	defer func() {
		d.update(func() { d.started, d.done, d.err = true, true, err })
		d.g.mu.Lock()
		delete(d.g.active, d.want.String())
		if d.client != "" {
			if d.g.byClient[d.client]--; d.g.byClient[d.client] <= 0 {
				delete(d.g.byClient, d.client)
			}
		}
		if d.idle != nil {
			d.idle.Stop()
			d.idle = nil
		}
		d.ended = true
		d.g.mu.Unlock()
		d.g.onEnd()
		d.Release()
	}()
	if onDone != nil {
		onDone(err)
	}
}

// transfer fetches the blob into the temp file: in parallel byte ranges
// when the job allows and the upstream answers the first range as asked
// (ranges.go), else as one stream.
func (d *Download) transfer(ctx context.Context, job Job) error {
	if job.FetchRange == nil || job.Ranges.Parallel < 2 {
		return d.stream(ctx, job, nil, -1)
	}
	return d.ranged(ctx, job)
}

// stream copies the upstream body into the temp file from the bytes on
// disk (d.written) on: body and size when the first answer is in hand,
// else it asks (fetch). A stream that breaks (reset, timeout, a body idle
// for upstream_idle_timeout) continues from the last byte on disk, up to
// maxResumes times, instead of failing every reader: readers see a pause,
// not an error.
func (d *Download) stream(ctx context.Context, job Job, body io.ReadCloser, size int64) error {
	if body == nil {
		var err error
		d.mu.Lock()
		from, total := d.written, d.size
		d.mu.Unlock()
		body, size, err = job.Fetch(ctx, from, total)
		if err != nil {
			d.update(func() { d.started, d.err = true, err })
			return err
		}
		if from > 0 {
			size = total
		}
	}
	defer func() { body.Close() }()
	d.update(func() { d.started, d.size = true, size })
	buf := make([]byte, 256<<10)
	resumes := 0
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, werr := d.w.Write(buf[:n]); werr != nil {
				return fmt.Errorf("%w: %w", ErrStoreWrite, werr)
			}
			d.update(func() { d.written += int64(n) })
			if size >= 0 && d.written > size {
				return fmt.Errorf("%w: %w: upstream sent more than its Content-Length %d", ErrUpstreamBroken, store.ErrSizeMismatch, size)
			}
		}
		if rerr == io.EOF {
			if size >= 0 && d.written != size {
				return fmt.Errorf("%w: %w: upstream sent %d of %d bytes", ErrUpstreamBroken, store.ErrSizeMismatch, d.written, size)
			}
			return nil
		}
		if rerr == nil {
			continue
		}
		broken := fmt.Errorf("%w: reading the blob: %w", ErrUpstreamBroken, rerr)
		if size < 0 || resumes == maxResumes || ctx.Err() != nil {
			return broken
		}
		resumes++
		body.Close()
		next, _, err := job.Fetch(ctx, d.written, size)
		if err != nil {
			body = io.NopCloser(nil)
			return fmt.Errorf("%w (resuming at byte %d: %w)", broken, d.written, err)
		}
		body = next
		if job.Resumed != nil {
			job.Resumed()
		}
	}
}

// update changes state under the lock and wakes every waiter.
func (d *Download) update(f func()) {
	d.mu.Lock()
	f()
	close(d.changed)
	d.changed = make(chan struct{})
	d.mu.Unlock()
}

// release drops one reference; the temp file is closed with the last.
// When only the runner is left and nobody wants the download without
// reading it (eager), it is cancelled after the group's grace unless a
// reader joins meanwhile: a client that started a download and left does
// not keep a temp file and an upstream connection busy for long.
func (d *Download) Release() {
	d.g.mu.Lock()
	d.refs--
	last := d.refs == 0
	if d.refs == 1 && !d.keep && !d.ended && d.idle == nil && d.cancel != nil {
		d.idle = time.AfterFunc(d.g.grace, d.abandon)
	}
	d.g.mu.Unlock()
	if last {
		d.w.Close()
	}
}

// abandon cancels the download if still nobody needs it. It runs on the
// timer's goroutine and only takes locks and calls a CancelFunc.
func (d *Download) abandon() {
	d.g.mu.Lock()
	idle := d.refs == 1 && !d.keep && d.idle != nil
	d.idle = nil
	d.g.mu.Unlock()
	if idle {
		d.cancel()
	}
}

// wait blocks until the upstream answered: it returns the blob size (-1
// when unknown) or the upstream's error.
func (d *Download) Wait(ctx context.Context) (int64, error) {
	for {
		d.mu.Lock()
		started, size, err, ch := d.started, d.size, d.err, d.changed
		d.mu.Unlock()
		if started {
			if err != nil && size < 0 {
				return -1, err
			}
			return size, nil
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-ch:
		}
	}
}

// waitDone blocks until the download is over and returns its result.
func (d *Download) WaitDone(ctx context.Context) error {
	for {
		d.mu.Lock()
		done, err, ch := d.done, d.err, d.changed
		d.mu.Unlock()
		if done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// waitVerified blocks until every byte is in and hashes to the digest,
// or returns the download's error.
func (d *Download) WaitVerified(ctx context.Context) error {
	for {
		d.mu.Lock()
		verified, done, err, ch := d.verified, d.done, d.err, d.changed
		d.mu.Unlock()
		switch {
		case verified:
			return nil
		case done:
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Repo is the repository path the download was started for (its link).
func (d *Download) Repo() string { return d.repo }

// Written is the bytes on disk.
func (d *Download) Written() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.written
}
