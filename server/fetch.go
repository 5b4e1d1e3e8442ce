package server

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/berth-registry/berth/store"
)

// fetchGroup decides how upstream blob downloads are shared: at most one
// download per digest is under way; every request for that digest, the
// first and any later one, reads from the same growing temp file as bytes
// arrive. The download runs on a detached context bounded by timeout, so it
// finishes (and is cached) even when the client that started it hangs up.
//
// Readers never see the last byte of a blob before its digest is verified:
// a corrupt download ends every reader with an error, one byte short, so no
// client ever receives a complete wrong blob. Once verified, readers may
// finish while the blob is made durable and entered in the index.
type fetchGroup struct {
	timeout time.Duration
	newTemp func(ctx context.Context, alg string) (tempBlob, error)
	onStart func()
	onEnd   func()
	spawn   func(where string, f func()) // starts the download goroutine (Server.goSafe)

	// Bounds: downloads under way in all (maxActive), started by one
	// client (perClient), and how long one that nobody needs any more
	// (no reader, not eager) goes on before it is cancelled (grace).
	maxActive, perClient int
	grace                time.Duration

	mu       sync.Mutex
	active   map[string]*download
	byClient map[string]int // downloads under way per client that started them
}

// errDownloadsFull is join's answer when a bound on downloads under way
// is reached: the client gets 429 and others are still served.
var errDownloadsFull = errors.New("too many blob downloads under way")

// newFetchGroup returns a fetchGroup whose downloads write into temp
// files made by newTemp and end within timeout. onStart and onEnd (may be
// nil) are told when a download begins and ends.
func newFetchGroup(timeout time.Duration, newTemp func(ctx context.Context, alg string) (tempBlob, error), onStart, onEnd func()) *fetchGroup {
	if onStart == nil {
		onStart = func() {}
	}
	if onEnd == nil {
		onEnd = func() {}
	}
	return &fetchGroup{timeout: timeout, newTemp: newTemp, onStart: onStart, onEnd: onEnd, active: map[string]*download{},
		byClient: map[string]int{}, maxActive: defaultMaxDownloads, perClient: defaultMaxDownloadsPerClient, grace: defaultAbandonGrace,
		spawn: func(_ string, f func()) { go f() }}
}

// Default bounds of a fetchGroup (Options.MaxDownloads and friends).
const (
	defaultMaxDownloads          = 256
	defaultMaxDownloadsPerClient = 32
	defaultAbandonGrace          = 10 * time.Second
)

// tempBlob is the file a download writes and its readers follow: what the
// download needs of store.BlobWriter.
type tempBlob interface {
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

var _ tempBlob = (*store.BlobWriter)(nil)

// fetchFunc starts the upstream transfer from byte offset on (0: the whole
// blob) of a blob total bytes long (-1 when not known yet): it returns the
// body, positioned at offset, and the blob's length (-1 when unknown).
type fetchFunc func(ctx context.Context, offset, total int64) (body io.ReadCloser, size int64, err error)

// maxResumes bounds how often one download continues after its upstream
// stream broke.
const maxResumes = 3

// fetchJob is one blob to download: where its bytes come from, the link
// recorded when it is stored, and whom to tell how it ended.
type fetchJob struct {
	want    store.Digest
	fetch   fetchFunc
	link    store.Link  // recorded with the blob when it commits
	ended   func(error) // told the result once (metrics, logs); may be nil
	resumed func()      // told each time a broken stream continues; may be nil

	// Parallel byte ranges (fetch_ranges.go): used when fetchRange is
	// set and ranges.parallel > 1.
	ranges     rangePlan
	fetchRange rangeFunc
	noRanges   func() // told when the upstream answered a range request otherwise; may be nil

	// client started the download (its address; "" for berth's own
	// work), counted against the per-client bound. keep: the download is
	// wanted without a reader (eager layers), so it is not cancelled
	// when its last reader leaves.
	client string
	keep   bool
}

// errDownloadPanicked is a download's result when its goroutine panicked.
var errDownloadPanicked = errors.New("download panicked")

// errDownloadFailed ends readers of a download that failed.
var errDownloadFailed = errors.New("upstream download failed")

// errStoreWrite marks a download that failed because the store could not
// write (disk full, I/O error): readers fall back to passing the upstream
// through.
var errStoreWrite = errors.New("store write failed")

// download is one upstream transfer into one temp file.
type download struct {
	g    *fetchGroup
	want store.Digest
	w    tempBlob
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

// join returns the download of job.want, starting job when none is under
// way. leader is true for the caller that started it. The caller must call
// release when done reading. An error means no temp file could be made
// (the store cannot write).
func (g *fetchGroup) join(ctx context.Context, job fetchJob) (d *download, leader bool, err error) {
	want := job.want
	key := want.String()
	g.mu.Lock()
	defer g.mu.Unlock()
	if d, ok := g.active[key]; ok {
		d.refs++
		d.keep = d.keep || job.keep
		if d.idle != nil {
			d.idle.Stop()
			d.idle = nil
		}
		return d, false, nil
	}
	if len(g.active) >= g.maxActive || (job.client != "" && g.byClient[job.client] >= g.perClient) {
		return nil, false, errDownloadsFull
	}
	w, err := g.newTemp(ctx, want.Algorithm())
	if err != nil {
		return nil, false, err
	}
	tctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	d = &download{g: g, want: want, w: w, repo: job.link.Repo, changed: make(chan struct{}), size: -1, refs: 2, // caller + runner
		keep: job.keep, client: job.client, cancel: cancel}
	g.active[key] = d
	if job.client != "" {
		g.byClient[job.client]++
	}
	g.onStart()
	g.spawn("blob download", func() { d.run(tctx, job) })
	return d, true, nil
}

func (d *download) run(ctx context.Context, job fetchJob) {
	// A panic below still ends the download, failed, for every reader
	// (the goroutine's guard logs and counts it).
	err := errDownloadPanicked
	defer func() { d.finish(err, job.ended) }()
	defer d.cancel()
	if err = d.transfer(ctx, job); err != nil {
		return
	}
	if err = d.w.Verify(d.want, -1); err != nil {
		err = fmt.Errorf("%w: %w", errUpstreamBroken, err)
		return
	}
	// Readers may have the last byte now; making the blob durable (fsync
	// of the whole file, rename, index) need not hold them up.
	d.update(func() { d.verified = true })
	_, err = d.w.Commit(ctx, d.want, -1, job.link)
}

// finish reports the download's end to onDone and its readers, and frees
// its digest for the next download.
func (d *download) finish(err error, onDone func(error)) {
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
		d.release()
	}()
	if onDone != nil {
		onDone(err)
	}
}

// transfer fetches the blob into the temp file: in parallel byte ranges
// when the job allows and the upstream answers the first range as asked
// (fetch_ranges.go), else as one stream.
func (d *download) transfer(ctx context.Context, job fetchJob) error {
	if job.fetchRange == nil || job.ranges.parallel < 2 {
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
func (d *download) stream(ctx context.Context, job fetchJob, body io.ReadCloser, size int64) error {
	if body == nil {
		var err error
		d.mu.Lock()
		from, total := d.written, d.size
		d.mu.Unlock()
		body, size, err = job.fetch(ctx, from, total)
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
				return fmt.Errorf("%w: %w", errStoreWrite, werr)
			}
			d.update(func() { d.written += int64(n) })
			if size >= 0 && d.written > size {
				return fmt.Errorf("%w: %w: upstream sent more than its Content-Length %d", errUpstreamBroken, store.ErrSizeMismatch, size)
			}
		}
		if rerr == io.EOF {
			if size >= 0 && d.written != size {
				return fmt.Errorf("%w: %w: upstream sent %d of %d bytes", errUpstreamBroken, store.ErrSizeMismatch, d.written, size)
			}
			return nil
		}
		if rerr == nil {
			continue
		}
		broken := fmt.Errorf("%w: reading the blob: %w", errUpstreamBroken, rerr)
		if size < 0 || resumes == maxResumes || ctx.Err() != nil {
			return broken
		}
		resumes++
		body.Close()
		next, _, err := job.fetch(ctx, d.written, size)
		if err != nil {
			body = io.NopCloser(nil)
			return fmt.Errorf("%w (resuming at byte %d: %w)", broken, d.written, err)
		}
		body = next
		if job.resumed != nil {
			job.resumed()
		}
	}
}

// update changes state under the lock and wakes every waiter.
func (d *download) update(f func()) {
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
func (d *download) release() {
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
func (d *download) abandon() {
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
func (d *download) wait(ctx context.Context) (int64, error) {
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
func (d *download) waitDone(ctx context.Context) error {
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
func (d *download) waitVerified(ctx context.Context) error {
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

// reader returns an io.ReadSeeker over the blob (size bytes, known from
// the upstream's Content-Length). Read returns the bytes that have arrived
// and blocks only when none past the offset have (or ctx ends, or the
// download fails), so clients stream at the upstream's pace.
func (d *download) reader(ctx context.Context, size int64) *dlReader {
	return &dlReader{d: d, ctx: ctx, size: size}
}

type dlReader struct {
	d    *download
	ctx  context.Context
	size int64
	off  int64
	err  error // the first error other than io.EOF returned
}

func (r *dlReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, errors.New("seek: invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("seek: negative position")
	}
	r.off = offset
	return offset, nil
}

func (r *dlReader) Read(p []byte) (int, error) {
	n, err := r.avail()
	if n > 0 {
		if int64(len(p)) > n {
			p = p[:n]
		}
		var m int
		m, err = r.d.w.ReadAt(p, r.off)
		r.off += int64(m)
		n = int64(m)
	}
	r.fail(err)
	return int(n), err
}

// fail records err as the reader's error unless it is io.EOF or one is
// already recorded.
func (r *dlReader) fail(err error) {
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
}

// avail waits until bytes past the offset may be read and returns how
// many (more may follow), or io.EOF at the end of a verified blob, or the
// download's error.
func (r *dlReader) avail() (int64, error) {
	d := r.d
	for {
		d.mu.Lock()
		written, verified, done, err, ch := d.written, d.verified, d.done, d.err, d.changed
		d.mu.Unlock()
		// Until the digest is verified the last byte is held back (and an
		// empty blob's end).
		end := r.size
		if !verified {
			end--
		}
		limit := min(written, end)
		if r.off < limit {
			return limit - r.off, nil
		}
		if verified {
			return 0, io.EOF
		}
		if done || err != nil {
			return 0, fmt.Errorf("%w: %w", errDownloadFailed, err)
		}
		select {
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		case <-ch:
		}
	}
}

// prefixHash hashes the bytes before the offset again, from the temp
// file, in d's algorithm: what a response that must be finished from
// elsewhere has sent so far.
func (r *dlReader) prefixHash() (hash.Hash, error) {
	h := r.d.want.NewHash()
	if _, err := io.Copy(h, io.NewSectionReader(r.d.w, 0, r.off)); err != nil {
		return nil, err
	}
	return h, nil
}

// copyBufs are the buffers of streamed downloads that cannot use sendfile.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// streamTo sends a whole blob while it downloads: each stretch that
// has arrived goes out with sendfile from the temp file (which stays open
// when it is committed or removed), so following a download costs no
// user-space copy; 256 KiB buffered copies if the file cannot be reopened.
func (rd *dlReader) streamTo(w http.ResponseWriter, log *slog.Logger) {
	d := rd.d.want
	blobHeaders(w, d)
	w.Header().Set("Content-Length", strconv.FormatInt(rd.size, 10))
	w.WriteHeader(http.StatusOK)
	f, err := rd.d.w.OpenReader()
	if err != nil {
		log.Warn("cannot reopen a download for sendfile, copying", "digest", d, "err", err)
		bp := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(bp)
		if _, err := io.CopyBuffer(writerOnly{w}, rd, *bp); err != nil {
			rd.fail(err)
		}
		return
	}
	defer f.Close()
	for {
		n, err := rd.avail()
		if err != nil {
			rd.fail(err)
			return
		}
		if _, err := f.Seek(rd.off, io.SeekStart); err != nil {
			rd.fail(err)
			return
		}
		m, err := io.CopyN(w, f, n)
		rd.off += m
		if err != nil {
			rd.fail(err)
			return
		}
	}
}

// writerOnly hides a writer's ReadFrom, so io.Copy uses its buffer.
type writerOnly struct{ io.Writer }
