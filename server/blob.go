package server

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

// serveBlobFile writes a stored blob with http.ServeContent (Range, HEAD,
// conditional requests, sendfile) (end-2).
func serveBlobFile(w http.ResponseWriter, r *http.Request, d store.Digest, f io.ReadSeeker) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000, immutable")
	http.ServeContent(w, r, "", time.Time{}, f)
}

// proxyBlob: GET/HEAD /v2/<name>/blobs/<digest> through the cache. A blob
// on disk is served from repository R only when R is known to hold it
// (linked); otherwise an upstream HEAD confirms it first. A miss joins (or
// starts) the one download of that digest and streams from its temp file.
func (s *Server) proxyBlob(w http.ResponseWriter, r *http.Request, rp *repo, image string, d store.Digest) error {
	ctx := r.Context()
	path := rp.Name + "/" + image
	linked, err := s.store.HasLink(ctx, path, d)
	if err != nil {
		return err
	}
	if f, err := s.store.OpenBlob(ctx, d); err == nil {
		defer f.Close()
		if !linked {
			if err := s.confirmBlob(ctx, rp, image, d); err != nil {
				return err
			}
		}
		s.cacheResult(r, rp, "blob", resultHit, "cache")
		if f.Info.Size >= largeBlob && r.Method == http.MethodGet {
			limitUnsent(ctx)
		}
		serveBlobFile(w, r, d, f.File)
		return nil
	} else if !store.IsNotFound(err) {
		return err
	}

	if r.Method == http.MethodHead {
		resp, err := rp.Upstream.Blob(ctx, http.MethodHead, image, d.String())
		if err != nil {
			return s.blobUpstreamFailed(rp, err)
		}
		resp.Body.Close()
		// No link: a link names a stored blob (store.Check); the GET
		// that follows fetches through this repository and links it.
		s.cacheResult(r, rp, "blob", resultMiss, "upstream")
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Docker-Content-Digest", d.String())
		w.Header().Set("Etag", `"`+d.String()+`"`)
		if resp.ContentLength >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
		}
		w.WriteHeader(http.StatusOK)
		return nil
	}

	dl, leader, err := s.fetches.join(d,
		func() (*store.BlobWriter, error) { return s.store.NewBlobWriter(ctx, d.Algorithm()) },
		s.blobFetcher(rp, image, d),
		func(ctx context.Context, bw *store.BlobWriter) error {
			_, err := bw.Commit(ctx, d, -1, store.Link{Repo: path, Kind: store.LinkFetched})
			return err
		},
		func(err error) {
			switch {
			case err == nil:
			case errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch):
				s.m.digestMismatch.WithLabelValues(rp.Name).Inc()
				s.upstreamError(rp, err)
				s.log.Error("upstream blob corrupt, not cached", "repository", rp.Name, "name", image, "digest", d, "err", err)
			case !errors.Is(err, upstream.ErrNotFound):
				s.upstreamError(rp, err)
				s.log.Debug("upstream blob download failed", "repository", rp.Name, "name", image, "digest", d, "err", err)
			}
		})
	if err != nil {
		// The store cannot even start a temp file: serve from upstream.
		return s.passThrough(w, r, rp, image, d, 0, nil, false, err)
	}
	defer dl.release()
	result, source := resultMiss, "upstream"
	if !leader {
		result, source = resultCoalesced, "cache"
		if !linked {
			if err := s.confirmBlob(ctx, rp, image, d); err != nil {
				return err
			}
		}
	}
	size, err := dl.wait(ctx)
	if err != nil {
		if errors.Is(err, errStoreWrite) {
			return s.passThrough(w, r, rp, image, d, 0, nil, false, err)
		}
		return err
	}
	s.cacheResult(r, rp, "blob", result, source)
	if size < 0 {
		// No Content-Length upstream: serve once complete and verified.
		if err := dl.waitDone(ctx); err != nil {
			if errors.Is(err, errStoreWrite) {
				return s.passThrough(w, r, rp, image, d, 0, nil, false, err)
			}
			return err
		}
		f, err := s.store.OpenBlob(ctx, d)
		if err != nil {
			return err
		}
		defer f.Close()
		serveBlobFile(w, r, d, f.File)
		return nil
	}
	rd := dl.reader(ctx, size)
	whole := r.Header.Get("Range") == "" && r.Method == http.MethodGet
	if r.Header.Get("Range") != "" && r.Method == http.MethodGet {
		// A range is answered once the whole blob is verified: bytes
		// before the end cannot be checked earlier, and a 206 is never
		// allowed to carry wrong bytes (found by FuzzProxyPromise).
		if err := dl.waitVerified(ctx); err != nil {
			if errors.Is(err, errStoreWrite) {
				return s.passThrough(w, r, rp, image, d, 0, nil, false, err)
			}
			return err
		}
	}
	if whole {
		s.streamDownload(w, d, rd)
	} else {
		serveBlobFile(w, r, d, rd)
	}
	if errors.Is(rd.err, errStoreWrite) && whole && rd.off < size {
		// The store failed mid-blob: finish this response from upstream,
		// still checking the digest of the whole.
		h, err := rd.prefixHash(d)
		if err == nil {
			err = s.passThrough(w, r, rp, image, d, rd.off, h, true, rd.err)
		}
		if err != nil {
			s.log.Warn("pass-through ended early", "repository", rp.Name, "name", image, "digest", d, "err", err)
			panic(http.ErrAbortHandler)
		}
		return nil
	}
	if rd.err != nil && !errors.Is(rd.err, context.Canceled) {
		// The body is cut short: abort the connection so the client sees
		// an error rather than a clean short response.
		s.log.Warn("blob stream ended early", "repository", rp.Name, "name", image, "digest", d, "err", rd.err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

// copyBufs are the buffers of streamed downloads that cannot use sendfile.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// streamDownload sends a whole blob while it downloads: each stretch that
// has arrived goes out with sendfile from the temp file (which stays open
// when it is committed or removed), so following a download costs no
// user-space copy; 256 KiB buffered copies if the file cannot be reopened.
func (s *Server) streamDownload(w http.ResponseWriter, d store.Digest, rd *dlReader) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Content-Length", strconv.FormatInt(rd.size, 10))
	w.WriteHeader(http.StatusOK)
	f, err := rd.d.w.OpenReader()
	if err != nil {
		s.log.Warn("cannot reopen a download for sendfile, copying", "digest", d, "err", err)
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

// blobFetcher returns the function that GETs blob d of image upstream,
// counting bytes and mismatches.
func (s *Server) blobFetcher(rp *repo, image string, d store.Digest) fetchFunc {
	return func(ctx context.Context) (io.ReadCloser, int64, error) {
		resp, err := rp.Upstream.Blob(ctx, http.MethodGet, image, d.String())
		if err != nil {
			return nil, -1, err
		}
		return &countingBody{ReadCloser: resp.Body, add: s.m.upstreamBytes.WithLabelValues(rp.Name).Add}, resp.ContentLength, nil
	}
}

type countingBody struct {
	io.ReadCloser
	add func(float64)
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if n > 0 {
		c.add(float64(n))
	}
	return n, err
}

// confirmBlob asks upstream with HEAD whether image holds d, and links it
// when it does.
func (s *Server) confirmBlob(ctx context.Context, rp *repo, image string, d store.Digest) error {
	resp, err := rp.Upstream.Blob(ctx, http.MethodHead, image, d.String())
	if err != nil {
		return s.blobUpstreamFailed(rp, err)
	}
	resp.Body.Close()
	return s.store.Link(ctx, rp.Name+"/"+image, d, store.LinkConfirmed)
}

// blobUpstreamFailed counts the failure of a request's own upstream call
// (HEAD, pass-through) and returns err.
func (s *Server) blobUpstreamFailed(rp *repo, err error) error {
	if !errors.Is(err, upstream.ErrNotFound) && !errors.Is(err, context.Canceled) {
		s.upstreamError(rp, err)
	}
	return err
}

// passThrough serves blob d straight from upstream without caching it,
// because the store failed (cause). When started, the response is already
// under way with sent bytes out: the rest is fetched (with a Range request
// when sent > 0) and h holds the hash of what was sent. The digest is
// checked before the last byte goes out.
func (s *Server) passThrough(w http.ResponseWriter, r *http.Request, rp *repo, image string, d store.Digest, sent int64, h hash.Hash, started bool, cause error) error {
	ctx := r.Context()
	s.m.passThrough.WithLabelValues(rp.Name, "store_error").Inc()
	s.log.Error("store cannot cache, passing upstream through", "repository", rp.Name, "name", image, "digest", d, "offset", sent, "err", cause)
	resp, err := rp.Upstream.BlobFrom(ctx, image, d.String(), sent)
	if err != nil {
		if started {
			return err
		}
		return s.blobUpstreamFailed(rp, err)
	}
	defer resp.Body.Close()
	if sent > 0 && resp.StatusCode != http.StatusPartialContent {
		return fmt.Errorf("upstream ignored the range request (status %d)", resp.StatusCode)
	}
	info := infoOf(ctx)
	info.result, info.source = resultMiss, "upstream"
	if !started {
		hd := w.Header()
		hd.Set("Content-Type", "application/octet-stream")
		hd.Set("Docker-Content-Digest", d.String())
		hd.Set("Etag", `"`+d.String()+`"`)
		if resp.ContentLength >= 0 {
			hd.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
		}
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return nil
		}
		h = d.NewHash()
	}
	body := &countingBody{ReadCloser: resp.Body, add: s.m.upstreamBytes.WithLabelValues(rp.Name).Add}
	// Hold back the last byte until the whole blob has been hashed.
	var held []byte
	buf := make([]byte, 256<<10)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			chunk := append(held, buf[:n]...)
			held = []byte{chunk[len(chunk)-1]}
			if _, err := w.Write(chunk[:len(chunk)-1]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if !started {
				panic(http.ErrAbortHandler)
			}
			return rerr
		}
	}
	if fmt.Sprintf("%x", h.Sum(nil)) != d.Hex() {
		s.m.digestMismatch.WithLabelValues(rp.Name).Inc()
		s.log.Error("pass-through blob does not match its digest", "repository", rp.Name, "digest", d)
		if !started {
			panic(http.ErrAbortHandler)
		}
		return store.ErrDigestMismatch
	}
	_, err = w.Write(held)
	return err
}
