package server

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/berth-registry/berth/internal/fetch"
	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

// blob: GET/HEAD /v2/<name>/blobs/<digest> through the cache. A blob
// on disk is served from repository R only when R is known to hold it
// (linked); otherwise an upstream HEAD confirms it first. A HEAD of a
// blob not on disk asks the upstream; a GET joins (or starts) the one
// download of that digest and streams from its temp file (internal/fetch).
func (p *proxy) blob(w http.ResponseWriter, r *http.Request, img imageRef, d store.Digest) error {
	s := p.s
	ctx := r.Context()
	linked, err := s.blobs.HasLink(ctx, img.path(), d)
	if err != nil {
		return err
	}
	linked = linked || s.commits.names(img.path(), d)
	if r.Method == http.MethodGet && r.Header.Get(prefetchHeader) != "" {
		return p.prefetch(w, img, d, linked)
	}
	f, err := s.blobs.OpenBlob(ctx, d)
	switch {
	case err == nil:
		defer f.Close()
		return p.blobHit(w, r, img, f, linked)
	case !store.IsNotFound(err):
		return err
	case r.Method == http.MethodHead:
		return p.blobHead(w, r, img, d)
	}
	return p.blobMiss(w, r, img, d, linked)
}

// cacheBlob makes sure blob d of the image is on disk: linked when it is
// there already (confirmed upstream if it came for another repository),
// else downloaded like a client's miss, coalesced with any under way.
func (p *proxy) cacheBlob(ctx context.Context, img imageRef, d store.Digest) error {
	s := p.s
	linked, err := s.blobs.HasLink(ctx, img.path(), d)
	if err != nil {
		return err
	}
	if _, err := s.blobs.StatBlob(ctx, d); err == nil {
		if linked || s.commits.names(img.path(), d) {
			return nil
		}
		return p.confirmBlob(ctx, img, d)
	} else if !store.IsNotFound(err) {
		return err
	}
	dl, leader, err := s.fetches.Join(ctx, p.blobJob(img, d))
	if errors.Is(err, fetch.ErrStored) {
		// Stored since the look above, by a download of this
		// repository or another's.
		if linked || s.commits.names(img.path(), d) {
			return nil
		}
		return p.confirmBlob(ctx, img, d)
	}
	if err != nil {
		return err
	}
	defer dl.Release()
	if err := dl.WaitDone(ctx); err != nil {
		return err
	}
	if !leader && !linked && dl.Repo() != img.path() {
		return p.confirmBlob(ctx, img, d) // fetched for another repository
	}
	return nil
}

// blobHit serves a blob on disk.
func (p *proxy) blobHit(w http.ResponseWriter, r *http.Request, img imageRef, f *store.Blob, linked bool) error {
	s, rp := p.s, p.repo
	ctx := r.Context()
	d := f.Info.Digest
	if !linked {
		if err := p.confirmBlob(ctx, img, d); err != nil {
			return err
		}
	}
	if r.Method == http.MethodGet && s.eager.tookEager(img, d) {
		// Fetched moments ago for this pull by an eager download.
		s.cacheResult(ctx, rp, "blob", resultMiss, "upstream")
	} else {
		s.cacheResult(ctx, rp, "blob", resultHit, "cache")
	}
	serveBlobFile(w, r, d, f.File)
	return nil
}

// blobHead answers a HEAD of a blob not on disk from an upstream
// HEAD. Nothing is linked: a link names a stored blob (store.Check); the
// GET that follows fetches through this repository and links it.
func (p *proxy) blobHead(w http.ResponseWriter, r *http.Request, img imageRef, d store.Digest) error {
	s, rp := p.s, p.repo
	resp, err := rp.Upstream.Blob(r.Context(), http.MethodHead, img.name, d.String())
	if err != nil {
		return p.blobUpstreamFailed(err)
	}
	resp.Body.Close()
	s.cacheResult(r.Context(), rp, "blob", resultMiss, "upstream")
	blobHeaders(w, d)
	if resp.ContentLength >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// blobMiss serves a GET of a blob not on disk from the download of
// it (internal/fetch): the one under way, or one this request starts.
func (p *proxy) blobMiss(w http.ResponseWriter, r *http.Request, img imageRef, d store.Digest, linked bool) error {
	s, ctx := p.s, r.Context()
	job := p.blobJob(img, d)
	job.Client = clientAddr(r)
	dl, leader, err := s.fetches.Join(ctx, job)
	if errors.Is(err, fetch.ErrStored) {
		// A download ended and stored it since the look in blob: served
		// from disk, not fetched twice.
		f, err := s.blobs.OpenBlob(ctx, d)
		if err != nil {
			return err
		}
		defer f.Close()
		return p.blobHit(w, r, img, f, linked || s.commits.names(img.path(), d))
	}
	if errors.Is(err, fetch.ErrDownloadsFull) {
		s.m.refused.WithLabelValues("downloads").Inc()
		return &regError{Code: codeTooManyRequests, Message: "too many blob downloads under way; try again shortly",
			Header: http.Header{"Retry-After": {"2"}}}
	}
	if err != nil {
		// The store cannot even start a temp file: serve from upstream.
		return p.passThrough(w, r, img, d, 0, nil, false, err)
	}
	defer dl.Release()
	// Either way the bytes cross the upstream link for this request (or
	// for the pull in progress, when an eager download started it).
	result := resultMiss
	if !leader && !s.eager.tookEager(img, d) {
		result = resultCoalesced
	}
	// A download for this same repository proves (or fails) the blob for
	// it; one for another repository does not.
	if !leader && !linked && dl.Repo() != img.path() {
		if err := p.confirmBlob(ctx, img, d); err != nil {
			return err
		}
	}
	size, err := dl.Wait(ctx)
	if err != nil {
		return p.storeFailed(w, r, img, d, err)
	}
	s.cacheResult(ctx, p.repo, "blob", result, "upstream")
	switch {
	case size < 0:
		// No Content-Length upstream: serve once complete and verified.
		if err := dl.WaitDone(ctx); err != nil {
			return p.storeFailed(w, r, img, d, err)
		}
		f, err := s.blobs.OpenBlob(ctx, d)
		if err != nil {
			return err
		}
		defer f.Close()
		serveBlobFile(w, r, d, f.File)
		return nil
	case r.Header.Get("Range") != "":
		if first, last, ok := singleRange(r.Header.Get("Range"), size); ok {
			return p.streamRange(w, r, img, dl, size, first, last)
		}
		// Several ranges, or none that fits: answered once the whole blob
		// is verified, by ServeContent.
		if err := dl.WaitVerified(ctx); err != nil {
			return p.storeFailed(w, r, img, d, err)
		}
		serveBlobFile(w, r, d, dl.Reader(ctx, size))
		return nil
	}
	return p.followDownload(w, r, img, dl.Reader(ctx, size))
}

// storeFailed answers a download's failure: when the store could not
// write, the client is served from upstream instead; else err.
func (p *proxy) storeFailed(w http.ResponseWriter, r *http.Request, img imageRef, d store.Digest, err error) error {
	if errors.Is(err, fetch.ErrStoreWrite) {
		return p.passThrough(w, r, img, d, 0, nil, false, err)
	}
	return err
}

// followDownload sends the whole blob as it downloads. When the store
// fails mid-blob, the response is finished from upstream, still checked
// against the digest of the whole; a body cut short otherwise aborts the
// connection, so the client sees an error rather than a clean short
// response.
func (p *proxy) followDownload(w http.ResponseWriter, r *http.Request, img imageRef, rd *fetch.Reader) error {
	s, d := p.s, rd.Digest()
	streamTo(rd, w, s.log)
	if errors.Is(rd.Err(), fetch.ErrStoreWrite) && rd.Offset() < rd.Size() {
		h, err := rd.PrefixHash()
		if err == nil {
			err = p.passThrough(w, r, img, d, rd.Offset(), h, true, rd.Err())
		}
		if err != nil {
			s.log.Warn("pass-through ended early", "repository", p.Name, "name", img.name, "digest", d, "err", err)
			panic(http.ErrAbortHandler)
		}
		return nil
	}
	if rd.Err() != nil && !errors.Is(rd.Err(), context.Canceled) {
		s.log.Warn("blob stream ended early", "repository", p.Name, "name", img.name, "digest", d, "err", rd.Err())
		panic(http.ErrAbortHandler)
	}
	return nil
}

// streamRange answers a single range of a blob being downloaded as its
// bytes reach the disk (a client fetching ranges in parallel, like
// containerd's multipart pull, is not held up until the end), all but the
// range's last byte: that one goes out once the whole blob is verified,
// so a 206 is never complete with wrong bytes (FuzzProxyPromise's rule);
// a corrupt blob ends the response one byte short.
func (p *proxy) streamRange(w http.ResponseWriter, r *http.Request, img imageRef, dl *fetch.Download, size, first, last int64) error {
	s, rp := p.s, p.repo
	ctx := r.Context()
	rd := dl.Reader(ctx, size)
	d := rd.Digest()
	blobHeaders(w, d)
	h := w.Header()
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, size))
	h.Set("Content-Length", strconv.FormatInt(last-first+1, 10))
	w.WriteHeader(http.StatusPartialContent)
	rd.Seek(first, io.SeekStart)
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	_, err := io.CopyBuffer(writerOnly{w}, io.LimitReader(rd, last-first), *bp)
	if err == nil {
		// What is buffered goes out while the rest of the blob arrives.
		http.NewResponseController(w).Flush()
		err = dl.WaitVerified(ctx)
	}
	if err == nil {
		_, err = io.CopyN(w, rd, 1)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		s.log.Warn("blob range stream ended early", "repository", rp.Name, "name", img.name, "digest", d, "err", err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

// singleRange reads a Range header of one byte range of a blob of size
// bytes ("bytes=a-b", "bytes=a-", "bytes=-n"), cut at the blob's end. ok
// is false for several ranges, a malformed header or a range past the end.
func singleRange(v string, size int64) (first, last int64, ok bool) {
	spec, found := strings.CutPrefix(v, "bytes=")
	if !found || strings.Contains(spec, ",") || size <= 0 {
		return 0, 0, false
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false
	}
	if a == "" { // the last n bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false
		}
		return max(size-n, 0), size - 1, true
	}
	first, err := strconv.ParseInt(a, 10, 64)
	if err != nil || first < 0 || first >= size {
		return 0, 0, false
	}
	last = size - 1
	if b != "" {
		if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
			return 0, 0, false
		}
		last = min(last, size-1)
	}
	return first, last, true
}

// confirmBlob asks upstream with HEAD whether image holds d, and links it
// when it does.
func (p *proxy) confirmBlob(ctx context.Context, img imageRef, d store.Digest) error {
	s, rp := p.s, p.repo
	resp, err := rp.Upstream.Blob(ctx, http.MethodHead, img.name, d.String())
	if err != nil {
		return p.blobUpstreamFailed(err)
	}
	resp.Body.Close()
	return s.blobs.Link(ctx, img.path(), d, store.LinkConfirmed)
}

// blobUpstreamFailed counts the failure of a request's own upstream call
// (HEAD, pass-through) and returns err.
func (p *proxy) blobUpstreamFailed(err error) error {
	if !errors.Is(err, upstream.ErrNotFound) && !errors.Is(err, context.Canceled) {
		p.upstreamError(err)
	}
	return err
}

// passThrough serves blob d straight from upstream without caching it,
// because the store failed (cause). When started, the response is already
// under way with sent bytes out: the rest is fetched (with a Range request
// when sent > 0) and h holds the hash of what was sent. The digest is
// checked before the last byte goes out.
func (p *proxy) passThrough(w http.ResponseWriter, r *http.Request, img imageRef, d store.Digest, sent int64, h hash.Hash, started bool, cause error) error {
	s, rp := p.s, p.repo
	ctx := r.Context()
	s.m.passThrough.WithLabelValues(rp.Name, "store_error").Inc()
	s.log.Error("store cannot cache, passing upstream through", "repository", rp.Name, "name", img.name, "digest", d, "offset", sent, "err", cause)
	resp, err := rp.Upstream.BlobRange(ctx, img.name, d.String(), sent, -1)
	if err != nil {
		if started {
			return err
		}
		return p.blobUpstreamFailed(err)
	}
	defer resp.Body.Close()
	if sent > 0 && resp.StatusCode != http.StatusPartialContent {
		return fmt.Errorf("upstream ignored the range request (status %d)", resp.StatusCode)
	}
	info := infoOf(ctx)
	info.result, info.source = resultMiss, "upstream"
	if !started {
		blobHeaders(w, d)
		if resp.ContentLength >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
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
