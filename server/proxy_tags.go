package server

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"

	"github.com/berth-registry/berth/upstream"
)

// tags: GET /v2/<name>/tags/list (end-8a/b) from upstream (q passed
// on); the cached tags when the upstream is unavailable and the proxy
// serves stale.
func (p *proxy) tags(ctx context.Context, img imageRef, q url.Values) ([]string, bool, error) {
	s, rp := p.s, p.repo
	resp, err := rp.Upstream.Tags(ctx, img.name, q)
	if err != nil {
		if rp.ServeStale && errors.Is(err, upstream.ErrUnavailable) {
			p.upstreamError(err)
			tags, serr := s.manifests.Tags(ctx, img.path())
			if serr != nil {
				return nil, false, serr
			}
			if len(tags) > 0 {
				s.cacheResult(ctx, rp, "tags", resultStale, "cache")
				return tags, false, nil
			}
		}
		if !errors.Is(err, upstream.ErrNotFound) {
			p.upstreamError(err)
		}
		return nil, false, err
	}
	defer resp.Body.Close()
	var list struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := decodeJSON(resp.Body, &list); err != nil {
		return nil, false, fmt.Errorf("upstream tag list: %w", err)
	}
	s.cacheResult(ctx, rp, "tags", resultMiss, "upstream")
	// A next page may exist when upstream says so, or when this page is
	// as long as asked (some registries send no Link header).
	full := q.Get("n") != "" && strconv.Itoa(len(list.Tags)) == q.Get("n")
	return list.Tags, resp.Header.Get("Link") != "" || full, nil
}

// pageQuery checks a tag list's n and last as hosted repositories do
// (paginate) before they go upstream: n a count, last a tag.
func pageQuery(in url.Values) (url.Values, error) {
	q := url.Values{}
	if ns := in.Get("n"); ns != "" {
		if n, err := strconv.Atoi(ns); err != nil || n < 0 {
			return nil, errf(codePaginationInvalid, "invalid n %q", truncate(ns, 40))
		}
		q.Set("n", ns)
	}
	if last := in.Get("last"); last != "" {
		if !validTag(last) {
			return nil, errf(codePaginationInvalid, "invalid last %q: not a tag", truncate(last, 140))
		}
		q.Set("last", last)
	}
	return q, nil
}
