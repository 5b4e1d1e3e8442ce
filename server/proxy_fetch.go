package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/berth-registry/berth/internal/fetch"
	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

// How a proxy fetches a blob from its upstream: the download job (its
// limit, link, ranges and what its end reports) and the functions that
// ask the upstream for bytes.

// blobJob is the download of blob d of image from rp's upstream: linked
// to the image when stored, counted and logged when it ends.
func (p *proxy) blobJob(img imageRef, d store.Digest) fetch.Job {
	s, rp := p.s, p.repo
	limit := s.declared.limit(img.path(), d)
	return p.rangeJob(fetch.Job{
		Want:  d,
		Fetch: limitFetch(p.blobFetcher(img, d), limit),
		Link:  store.Link{Repo: img.path(), Kind: store.LinkFetched},
		Resumed: func() {
			s.m.resumed.WithLabelValues(img.label()).Inc()
			s.log.Info("upstream blob stream broke; resumed from the last byte on disk", "repository", rp.Name, "name", img.name, "digest", d)
		},
		Ended: func(err error) {
			switch {
			case err == nil:
			case errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch):
				s.m.digestMismatch.WithLabelValues(img.label()).Inc()
				p.upstreamError(err)
				s.log.Error("upstream blob corrupt, not cached", "repository", rp.Name, "name", img.name, "digest", d, "err", err)
			case !errors.Is(err, upstream.ErrNotFound):
				p.upstreamError(err)
				s.log.Debug("upstream blob download failed", "repository", rp.Name, "name", img.name, "digest", d, "err", err)
			}
		},
	}, img, d)
}

// rangeJob adds rp's parallel byte ranges to job, unless rp fetches one
// stream per blob or its upstream did not answer ranges as asked.
func (p *proxy) rangeJob(job fetch.Job, img imageRef, d store.Digest) fetch.Job {
	s, rp := p.s, p.repo
	rf := rp.RangeFetch
	if rf.Parallel < 2 || rf.Min <= 0 || rf.Chunk <= 0 || rp.noRanges.Load() {
		return job
	}
	job.Ranges = fetch.RangePlan{Min: rf.Min, Chunk: rf.Chunk, Parallel: rf.Parallel, MaxParallel: rf.MaxParallel,
		Ramp: rf.Ramp, SlowRate: rf.SlowRate, StallAfter: rf.StallAfter}
	job.RangesEnded = func(st fetch.RangeStats) {
		s.m.rangeStreams.WithLabelValues(img.label()).Observe(float64(st.Peak))
		for how, n := range map[string]int{"steal": st.Steals, "takeover": st.Takeovers, "throttled": st.Throttled} {
			if n > 0 {
				s.m.rangeMoves.WithLabelValues(img.label(), how).Add(float64(n))
			}
		}
		s.log.Debug("ranged upstream download", "repository", rp.Name, "digest", d, "requests", st.Requests,
			"streams_peak", st.Peak, "streams_held", st.Held, "steals", st.Steals, "takeovers", st.Takeovers, "throttled", st.Throttled)
	}
	job.FetchRange = limitRanges(p.blobRanges(img, d), s.declared.limit(img.path(), d))
	job.NoRanges = func() {
		if !rp.noRanges.Swap(true) {
			s.log.Info("upstream does not answer byte ranges as asked; blobs come as one stream from now on",
				"repository", rp.Name, "name", img.name, "digest", d)
		}
	}
	return job
}

// blobLocator is an upstream that can fetch a range from where its
// registry redirected a blob request (upstream.Client.BlobAt).
type blobLocator interface {
	BlobAt(ctx context.Context, image, location string, start, end int64) (*http.Response, error)
}

// blobRanges returns the fetch.RangeFunc of blob d of image. When the registry
// redirects the first range (to a CDN or a bucket), later ranges go
// straight to where it pointed, and through the registry again when that
// URL is refused (a signed URL that expired answers 401 or 403).
func (p *proxy) blobRanges(img imageRef, d store.Digest) fetch.RangeFunc {
	s, rp := p.s, p.repo
	var mu sync.Mutex      // guards location
	var resolve sync.Mutex // one range at a time asks the registry again
	location := ""         // where the registry redirected the blob
	locator, _ := rp.Upstream.(blobLocator)
	current := func() string {
		mu.Lock()
		defer mu.Unlock()
		return location
	}
	return func(ctx context.Context, start, end int64) (io.ReadCloser, int64, bool, error) {
		at := current()
		var resp *http.Response
		var err error
		for at != "" {
			resp, err = locator.BlobAt(ctx, img.name, at, start, end)
			var ue *upstream.Error
			if !errors.As(err, &ue) || (ue.StatusCode != http.StatusUnauthorized && ue.StatusCode != http.StatusForbidden) {
				break
			}
			s.log.Debug("redirected blob URL refused; asking the registry again", "repository", rp.Name, "digest", d, "status", ue.StatusCode)
			resolve.Lock()
			if now := current(); now != at {
				resolve.Unlock()
				at = now // another range has asked the registry already
				continue
			}
			at = ""
			defer resolve.Unlock()
		}
		if at == "" {
			resp, err = rp.Upstream.BlobRange(ctx, img.name, d.String(), start, end)
			if err == nil && locator != nil && resp.Request != nil && resp.Request.Response != nil {
				mu.Lock()
				location = resp.Request.URL.String()
				mu.Unlock()
			}
		}
		var ue *upstream.Error
		if errors.As(err, &ue) && ue.StatusCode == http.StatusRequestedRangeNotSatisfiable {
			// Refusing bytes 0 to min-1 of a shorter blob instead of
			// cutting the range at its end (as RFC 9110 asks).
			return nil, -1, false, fmt.Errorf("%w: %w", fetch.ErrNoRanges, err)
		}
		if errors.As(err, &ue) && (ue.StatusCode == http.StatusTooManyRequests || ue.StatusCode == http.StatusServiceUnavailable) {
			return nil, -1, false, fmt.Errorf("%w: %w", fetch.ErrThrottled, err) // fewer streams
		}
		if err != nil {
			return nil, -1, false, err
		}
		body := io.ReadCloser(&countingBody{ReadCloser: resp.Body, add: s.m.upstreamBytes.WithLabelValues(img.label()).Add})
		cr := resp.Header.Get("Content-Range")
		first, last, total, ok := parseResponseRange(cr)
		want := total - 1 // the last byte asked for, as the upstream must cut it
		if end >= 0 {
			want = min(end, total-1)
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			return body, resp.ContentLength, false, nil
		case resp.StatusCode == http.StatusPartialContent && ok && total > 0 && first == start && last == want:
			return body, total, true, nil
		}
		body.Close()
		return nil, -1, false, fmt.Errorf("%w: asked for bytes %d-%d, got %d with Content-Range %q", fetch.ErrNoRanges, start, end, resp.StatusCode, cr)
	}
}

// blobFetcher returns the function that GETs blob d of image upstream,
// from an offset when a broken download resumes, counting the bytes.
func (p *proxy) blobFetcher(img imageRef, d store.Digest) fetch.Func {
	s, rp := p.s, p.repo
	return func(ctx context.Context, offset, total int64) (io.ReadCloser, int64, error) {
		end := int64(-1)
		if offset > 0 && total > 0 {
			end = total - 1
		}
		resp, err := rp.Upstream.BlobRange(ctx, img.name, d.String(), offset, end)
		if err != nil {
			return nil, -1, err
		}
		body := io.ReadCloser(&countingBody{ReadCloser: resp.Body, add: s.m.upstreamBytes.WithLabelValues(img.label()).Add})
		if offset == 0 {
			return body, resp.ContentLength, nil
		}
		switch start, _, _, ok := parseResponseRange(resp.Header.Get("Content-Range")); {
		case resp.StatusCode == http.StatusPartialContent && ok && start == offset:
			return body, -1, nil
		case resp.StatusCode == http.StatusOK:
			// The upstream ignored Range: skip what is on disk already.
			if _, err := io.CopyN(io.Discard, body, offset); err != nil {
				body.Close()
				return nil, -1, fmt.Errorf("%w: skipping to byte %d: %w", errUpstreamBroken, offset, err)
			}
			return body, -1, nil
		}
		body.Close()
		return nil, -1, fmt.Errorf("%w: asked for bytes from %d, got %d with Content-Range %q", errUpstreamBroken, offset, resp.StatusCode, resp.Header.Get("Content-Range"))
	}
}

// parseResponseRange reads a response's Content-Range, "bytes first-last/total"; total is -1 for "*".
// ok is false for anything else, or first > last, or last >= total.
func parseResponseRange(v string) (first, last, total int64, ok bool) {
	v, ok = strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, 0, false
	}
	span, size, ok := strings.Cut(v, "/")
	if !ok {
		return 0, 0, 0, false
	}
	a, b, ok := strings.Cut(span, "-")
	if !ok {
		return 0, 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	total = -1
	var err3 error
	if size != "*" {
		total, err3 = strconv.ParseInt(size, 10, 64)
	}
	if err1 != nil || err2 != nil || err3 != nil || first < 0 || first > last || (total >= 0 && last >= total) {
		return 0, 0, 0, false
	}
	return first, last, total, true
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
