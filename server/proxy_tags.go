package server

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/berth-registry/berth/upstream"
)

// proxyTags: GET /v2/<name>/tags/list (end-8a/b) from upstream, rewritten
// to the client's name; the cached tags when the upstream is unavailable.
func (s *Server) proxyTags(w http.ResponseWriter, r *http.Request, rp *repo, image string) error {
	ctx := r.Context()
	q, err := pageQuery(r.URL.Query())
	if err != nil {
		return err
	}
	clientName := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/tags/list")
	resp, err := rp.Upstream.Tags(ctx, image, q)
	if err != nil {
		if rp.ServeStale && errors.Is(err, upstream.ErrUnavailable) {
			s.upstreamError(rp, err)
			tags, serr := s.manifests.Tags(ctx, rp.Name+"/"+image)
			if serr != nil {
				return serr
			}
			if len(tags) > 0 {
				s.cacheResult(r, rp, "tags", resultStale, "cache")
				return writeTagList(w, r, clientName, tags)
			}
		}
		if !errors.Is(err, upstream.ErrNotFound) {
			s.upstreamError(rp, err)
		}
		return err
	}
	defer resp.Body.Close()
	var list struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := decodeJSON(resp.Body, &list); err != nil {
		return fmt.Errorf("upstream tag list: %w", err)
	}
	// A next page may exist when upstream says so, or when this page is
	// as long as asked (some registries send no Link header).
	full := q.Get("n") != "" && strconv.Itoa(len(list.Tags)) == q.Get("n")
	if (resp.Header.Get("Link") != "" || full) && len(list.Tags) > 0 {
		next := url.Values{"last": {list.Tags[len(list.Tags)-1]}}
		if n := q.Get("n"); n != "" {
			next.Set("n", n)
		}
		w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?%s>; rel="next"`, clientName, next.Encode()))
	}
	s.cacheResult(r, rp, "tags", resultMiss, "upstream")
	return writeTagList(w, r, clientName, list.Tags)
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
