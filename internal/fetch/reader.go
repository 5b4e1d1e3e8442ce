package fetch

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/berth-registry/berth/store"
)

// Reader returns an io.ReadSeeker over the blob (size bytes, known from
// the upstream's Content-Length). Read returns the bytes that have arrived
// and blocks only when none past the offset have (or ctx ends, or the
// download fails), so clients stream at the upstream's pace.
func (d *Download) Reader(ctx context.Context, size int64) *Reader {
	return &Reader{d: d, ctx: ctx, size: size}
}

// A Reader follows a download: Read waits for bytes, never past the
// last one before the digest is verified.
type Reader struct {
	d    *Download
	ctx  context.Context
	size int64
	off  int64
	err  error // the first error other than io.EOF returned
}

func (r *Reader) Seek(offset int64, whence int) (int64, error) {
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

func (r *Reader) Read(p []byte) (int, error) {
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
func (r *Reader) fail(err error) {
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
}

// avail waits until bytes past the offset may be read and returns how
// many (more may follow), or io.EOF at the end of a verified blob, or the
// download's error.
func (r *Reader) avail() (int64, error) {
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
			return 0, fmt.Errorf("%w: %w", ErrDownloadFailed, err)
		}
		select {
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		case <-ch:
		}
	}
}

// PrefixHash hashes the bytes before the offset again, from the temp
// file, in d's algorithm: what a response that must be finished from
// elsewhere has sent so far.
func (r *Reader) PrefixHash() (hash.Hash, error) {
	h := r.d.want.NewHash()
	if _, err := io.Copy(h, io.NewSectionReader(r.d.w, 0, r.off)); err != nil {
		return nil, err
	}
	return h, nil
}

// Digest is the blob the reader reads.
func (r *Reader) Digest() store.Digest { return r.d.want }

// Size is the blob's length.
func (r *Reader) Size() int64 { return r.size }

// Offset is how far the reader has read.
func (r *Reader) Offset() int64 { return r.off }

// Err is the first error other than io.EOF the reader met.
func (r *Reader) Err() error { return r.err }

// Fail records err as the reader's error (a send that failed).
func (r *Reader) Fail(err error) { r.fail(err) }

// Available waits until bytes past the offset may be read and returns
// how many (more may follow), io.EOF at the end of a verified blob, or
// the download's error.
func (r *Reader) Available() (int64, error) { return r.avail() }

// Advance moves the offset past n bytes sent by other means (sendfile
// from OpenFile).
func (r *Reader) Advance(n int64) { r.off += n }

// OpenFile opens the temp file on its own offset (for sendfile); it stays
// readable after the blob is committed or the download fails.
func (r *Reader) OpenFile() (*os.File, error) { return r.d.w.OpenReader() }
