package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/berth-registry/berth/internal/shared"
	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

// referrersEntry is a proxy's cached referrers list for one subject and
// artifactType filter.
type referrersEntry struct {
	refs    []store.Referrer
	noAPI   bool // the upstream answered 404: it has no referrers API
	checked time.Time
}

// referrersKeep is how long a referrers list is kept to be served stale
// when the upstream is down (it is fresh for tag_ttl).
const referrersKeep = 24 * time.Hour

// proxyReferrers: GET /v2/<name>/referrers/<digest> (end-12a/b) through a
// proxy: the upstream's list, cached with tag_ttl freshness and served
// stale when the upstream fails. An upstream without the API (404, as
// Docker Hub) gets its 404 passed on, so clients fall back to the tag
// schema (sha256-<hex>.sig), which berth proxies as tags.
func (s *Server) proxyReferrers(w http.ResponseWriter, r *http.Request, rp *repo, image string, d store.Digest) error {
	refs, err := s.proxyReferrerList(r, rp, image, d)
	if err != nil {
		return err
	}
	return writeReferrers(w, r, refs)
}

// proxyReferrerList returns the referrers of d in rp's upstream (filtered
// by the request's artifactType), from the cache when fresh.
func (s *Server) proxyReferrerList(r *http.Request, rp *repo, image string, d store.Digest) ([]store.Referrer, error) {
	ctx := r.Context()
	at := r.URL.Query().Get("artifactType")
	key := rp.Name + "/" + image + "@" + d.String() + "?" + at
	cached, ok := rp.referrers.Get(key)
	// answer is the cached entry as the client gets it: an upstream
	// without the API keeps answering 404, even while it is down, so that
	// clients keep falling back to the tag schema.
	answer := func() ([]store.Referrer, error) {
		if cached.noAPI {
			return nil, errf(codeManifestUnknown, "the upstream has no referrers API: use the tag schema (%s-%s)", d.Algorithm(), d.Hex())
		}
		return cached.refs, nil
	}
	if ok && time.Since(cached.checked) < rp.TagTTL {
		s.cacheResult(r, rp, "referrers", resultHit, "cache")
		return answer()
	}
	v, err := shared.Do(ctx, &s.flight, "referrers\x00"+key, time.Minute, func(ctx context.Context) (any, error) {
		return s.fetchReferrers(ctx, rp, image, d, at)
	})
	switch {
	case err == nil:
		refs := v.([]store.Referrer)
		rp.referrers.Add(key, referrersEntry{refs: refs, checked: time.Now()})
		s.cacheResult(r, rp, "referrers", resultMiss, "upstream")
		return refs, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case ok && rp.ServeStale && errors.Is(err, upstream.ErrUnavailable):
		s.upstreamError(rp, err)
		s.cacheResult(r, rp, "referrers", resultStale, "cache")
		return answer()
	case errors.Is(err, upstream.ErrNotFound):
		rp.referrers.Add(key, referrersEntry{noAPI: true, checked: time.Now()})
		s.cacheResult(r, rp, "referrers", resultMiss, "upstream")
		return nil, err
	}
	s.upstreamError(rp, err)
	return nil, err
}

// fetchReferrers GETs the upstream's referrers index and reads its
// descriptors, dropping any whose digest does not parse.
func (s *Server) fetchReferrers(ctx context.Context, rp *repo, image string, d store.Digest, artifactType string) ([]store.Referrer, error) {
	resp, err := rp.Upstream.Referrers(ctx, image, d.String(), artifactType)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var idx struct {
		Manifests []store.Referrer `json:"manifests"`
	}
	if err := decodeJSON(resp.Body, &idx); err != nil {
		return nil, fmt.Errorf("%w: referrers index: %w", errUpstreamBroken, err)
	}
	refs := make([]store.Referrer, 0, len(idx.Manifests))
	for _, ref := range idx.Manifests {
		if _, err := store.ParseDigest(ref.Digest); err == nil && ref.Size >= 0 {
			refs = append(refs, ref)
		}
	}
	return refs, nil
}
