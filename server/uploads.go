package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/berth-registry/berth/store"
)

// uploadLimiter caps concurrent upload requests per client address.
type uploadLimiter struct {
	mu  sync.Mutex
	n   map[string]int
	max int
}

func (l *uploadLimiter) acquire(r *http.Request) (release func(), ok bool) {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[host] >= l.max {
		return nil, false
	}
	l.n[host]++
	return func() {
		l.mu.Lock()
		if l.n[host]--; l.n[host] <= 0 {
			delete(l.n, host)
		}
		l.mu.Unlock()
	}, true
}

// startUpload: POST /v2/<name>/blobs/uploads/ (end-4a/b, end-11). With
// ?digest= the body is the whole blob; with ?mount=&from= a blob the
// source repository holds is linked without a transfer; otherwise an
// upload session starts.
func (h *hosted) startUpload(w http.ResponseWriter, r *http.Request, img imageRef, rt route) error {
	s, ctx, path := h.s, r.Context(), img.path()
	q := r.URL.Query()
	if mount := q.Get("mount"); mount != "" {
		d, err := store.ParseDigest(mount)
		if err != nil {
			return errf(codeDigestInvalid, "mount: %v", err)
		}
		if from := q.Get("from"); from != "" && h.mountable(r, from, d) {
			if err := s.blobs.Link(ctx, path, d, store.LinkMounted); err != nil {
				return err
			}
			w.Header().Set("Location", "/v2/"+rt.name+"/blobs/"+d.String())
			w.Header().Set("Docker-Content-Digest", d.String())
			w.WriteHeader(http.StatusCreated)
			return nil
		}
		// Unknown or unreadable source: fall back to a normal upload.
	}
	if dg := q.Get("digest"); dg != "" {
		d, err := store.ParseDigest(dg)
		if err != nil {
			return errf(codeDigestInvalid, "%v", err)
		}
		bw, err := s.blobs.NewBlobWriter(ctx, d.Algorithm())
		if err != nil {
			return err
		}
		defer bw.Close()
		if _, err := io.Copy(bw, io.LimitReader(r.Body, s.opts.MaxBlobSize+1)); err != nil {
			if diskFull(err) {
				return err
			}
			return errf(codeBlobUploadInvalid, "reading blob: %v", err)
		}
		if _, err := bw.Commit(ctx, d, r.ContentLength, store.Link{Repo: path, Kind: store.LinkPushed}); err != nil {
			return err
		}
		w.Header().Set("Location", "/v2/"+rt.name+"/blobs/"+d.String())
		w.Header().Set("Docker-Content-Digest", d.String())
		w.WriteHeader(http.StatusCreated)
		return nil
	}
	owner := uploadOwner(r)
	if err := h.uploadSessionRoom(ctx, owner); err != nil {
		return err
	}
	u, err := s.pushes.CreateUpload(ctx, path, owner)
	if err != nil {
		return err
	}
	uploadHeaders(w, rt.name, u)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// mountable reports whether the repository the client calls from holds d.
func (h *hosted) mountable(r *http.Request, from string, d store.Digest) bool {
	s := h.s
	if validateName(from) != nil {
		return false
	}
	src, image, err := s.resolve(r.Context(), r.URL.Query().Get("ns"), infoOf(r.Context()).listener, from)
	if err != nil {
		return false
	}
	defer s.hosts.forgetSilentHost(src)
	p := infoOf(r.Context()).principal
	holders := []imageRef{src.image(image)}
	if g := src.asGroup(); g != nil {
		holders = holders[:0]
		for _, m := range g.readable(r.Context(), src.image(image)) {
			holders = append(holders, memberImage(m, image))
		}
	} else if !allowed(p, src, image, actionPull) {
		return false // the client may not read the source: no mount
	}
	for _, h := range holders {
		ok, err := s.blobs.HasLink(r.Context(), h.path(), d)
		if err == nil && ok {
			_, err = s.blobs.StatBlob(r.Context(), d)
			return err == nil
		}
	}
	return false
}

func uploadHeaders(w http.ResponseWriter, name string, u store.Upload) {
	h := w.Header()
	h.Set("Location", "/v2/"+name+"/blobs/uploads/"+u.ID)
	h.Set("Docker-Upload-UUID", u.ID)
	h.Set("Range", fmt.Sprintf("0-%d", max(u.Offset-1, 0)))
	h.Set("Content-Length", "0")
}

// parseContentRange reads "start-end" (also "bytes start-end" and
// "bytes=start-end"); ok is false when absent.
func parseContentRange(v string) (start, end int64, ok bool, err error) {
	if v == "" {
		return 0, 0, false, nil
	}
	v = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(v), "bytes"), "=")
	v = strings.TrimSpace(v)
	a, b, found := strings.Cut(v, "-")
	if !found {
		return 0, 0, false, errf(codeRangeInvalid, "invalid Content-Range %q", v)
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(strings.Split(b, "/")[0], 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, false, errf(codeRangeInvalid, "invalid Content-Range %q", v)
	}
	return start, end, true, nil
}

// patchUpload: PATCH /v2/<name>/blobs/uploads/<id> (end-5). A chunk with
// Content-Range must start where the upload ends (else 416).
func (h *hosted) patchUpload(w http.ResponseWriter, r *http.Request, img imageRef, rt route) error {
	s, ctx, path := h.s, r.Context(), img.path()
	start, end, ok, err := parseContentRange(r.Header.Get("Content-Range"))
	if err != nil {
		return h.rangeError(ctx, w, path, rt, err)
	}
	size := int64(-1)
	startAt := int64(-1)
	if ok {
		startAt, size = start, end-start+1
		if r.ContentLength >= 0 && r.ContentLength != size {
			return h.rangeError(ctx, w, path, rt, errf(codeRangeInvalid, "Content-Range covers %d bytes, body has %d", size, r.ContentLength))
		}
	} else if r.ContentLength >= 0 {
		size = r.ContentLength
	}
	body, capped, err := h.uploadBody(ctx, uploadOwner(r), r.Body)
	if err != nil {
		return err
	}
	u, err := s.pushes.AppendUpload(ctx, path, rt.uploadID, startAt, body, size)
	if err = capped(err); err != nil {
		if errors.Is(err, store.ErrRangeInvalid) {
			return h.rangeError(ctx, w, path, rt, err)
		}
		return err
	}
	uploadHeaders(w, rt.name, u)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// rangeError answers 416 with the upload's current Range and Location so
// the client can resume.
func (h *hosted) rangeError(ctx context.Context, w http.ResponseWriter, path string, rt route, err error) error {
	s := h.s
	if u, gerr := s.pushes.GetUpload(ctx, path, rt.uploadID); gerr == nil {
		uploadHeaders(w, rt.name, u)
		w.Header().Del("Content-Length")
	} else {
		return gerr
	}
	return err
}

// finishUpload: PUT /v2/<name>/blobs/uploads/<id>?digest= (end-6) with an
// optional last chunk.
func (h *hosted) finishUpload(w http.ResponseWriter, r *http.Request, img imageRef, rt route) error {
	s, ctx, path := h.s, r.Context(), img.path()
	dg := r.URL.Query().Get("digest")
	if dg == "" {
		return errf(codeDigestInvalid, "digest parameter required")
	}
	d, err := store.ParseDigest(dg)
	if err != nil {
		return errf(codeDigestInvalid, "%v", err)
	}
	var body io.Reader
	size := int64(-1)
	capped := func(err error) error { return err }
	if r.ContentLength != 0 {
		if body, capped, err = h.uploadBody(ctx, uploadOwner(r), r.Body); err != nil {
			return err
		}
		size = r.ContentLength
		if start, end, ok, err := parseContentRange(r.Header.Get("Content-Range")); err != nil {
			return err
		} else if ok {
			if u, err := s.pushes.GetUpload(ctx, path, rt.uploadID); err != nil {
				return err
			} else if start != u.Offset {
				return h.rangeError(ctx, w, path, rt, errf(codeRangeInvalid, "chunk starts at %d, upload has %d bytes", start, u.Offset))
			}
			size = end - start + 1
		}
	}
	if _, err := s.pushes.FinishUpload(ctx, path, rt.uploadID, body, size, d); capped(err) != nil {
		err = capped(err)
		if errors.Is(err, store.ErrRangeInvalid) {
			return errf(codeSizeInvalid, "%v", err)
		}
		return err
	}
	w.Header().Set("Location", "/v2/"+rt.name+"/blobs/"+d.String())
	w.Header().Set("Docker-Content-Digest", d.String())
	w.WriteHeader(http.StatusCreated)
	return nil
}
