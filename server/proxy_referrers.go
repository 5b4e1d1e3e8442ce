package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/shared"
	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

// referrersEntry is a proxy's cached referrers list for one subject and
// artifactType filter.
//
// The cache is bounded by entries and by bytes (referrersBytes): keys and
// the descriptors' strings and annotations are counted.
type referrersEntry struct {
	refs    []store.Referrer
	noAPI   bool // the upstream answered 404: it has no referrers API
	checked time.Time
}

// referrersKeep is how long a referrers list is kept to be served stale
// when the upstream is down (it is fresh for tag_ttl).
const referrersKeep = 24 * time.Hour

// referrers: GET /v2/<name>/referrers/<digest> (end-12a/b) through a
// proxy: the upstream's list, cached with tag_ttl freshness and served
// stale when the upstream fails. An upstream without the API (404, as
// Docker Hub) gets its 404 passed on, so clients fall back to the tag
// schema (sha256-<hex>.sig), which berth proxies as tags. The list is
// filtered by the request's artifactType, from the cache when fresh.
func (p *proxy) referrers(ctx context.Context, img imageRef, d store.Digest, at string) ([]store.Referrer, error) {
	s, rp := p.s, p.repo
	key := img.at(d.String()) + "?" + at
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
		s.cacheResult(ctx, rp, "referrers", resultHit, "cache")
		return answer()
	}
	v, err := shared.Do(ctx, &s.flight, "referrers\x00"+key, time.Minute, func(ctx context.Context) (any, error) {
		return p.fetchReferrers(ctx, img, d, at)
	})
	switch {
	case err == nil:
		refs := v.([]store.Referrer)
		rp.referrers.Add(key, referrersEntry{refs: refs, checked: time.Now()})
		s.cacheResult(ctx, rp, "referrers", resultMiss, "upstream")
		return refs, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case ok && rp.ServeStale && errors.Is(err, upstream.ErrUnavailable):
		p.upstreamError(err)
		s.cacheResult(ctx, rp, "referrers", resultStale, "cache")
		return answer()
	case errors.Is(err, upstream.ErrNotFound):
		rp.referrers.Add(key, referrersEntry{noAPI: true, checked: time.Now()})
		s.cacheResult(ctx, rp, "referrers", resultMiss, "upstream")
		return nil, err
	}
	p.upstreamError(err)
	return nil, err
}

// fetchReferrers GETs the upstream's referrers index and reads its
// descriptors, dropping any whose digest does not parse.
func (p *proxy) fetchReferrers(ctx context.Context, img imageRef, d store.Digest, artifactType string) ([]store.Referrer, error) {
	rp := p.repo
	resp, err := rp.Upstream.Referrers(ctx, img.name, d.String(), artifactType)
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

// referrersBytes bounds one proxy's referrers cache.
const referrersBytes = 16 << 20

// referrersEntryBytes is what a cached referrers list costs.
func referrersEntryBytes(k string, e referrersEntry) int64 {
	n := int64(len(k)) + 128
	for _, r := range e.refs {
		n += int64(len(r.Digest)+len(r.MediaType)+len(r.ArtifactType)) + 64
		for ak, av := range r.Annotations {
			n += int64(len(ak) + len(av) + 32)
		}
	}
	return n
}

// artifactTypeQuery is the request's artifactType filter, checked as a
// media type (RFC 6838: type/subtype of restricted names, 255 bytes at
// most): it is part of a cache key and goes upstream.
func artifactTypeQuery(r *http.Request) (string, error) {
	at := r.URL.Query().Get("artifactType")
	if at != "" && !validMediaType(at) {
		return "", errf(codeRequestInvalid, "invalid artifactType %q: not a media type", truncate(at, 100))
	}
	return at, nil
}

// validMediaType checks type/subtype of RFC 6838 restricted names, with
// no parameters.
func validMediaType(s string) bool {
	if len(s) > 255 {
		return false
	}
	typ, sub, ok := strings.Cut(s, "/")
	return ok && restrictedName(typ) && restrictedName(sub)
}

func restrictedName(s string) bool {
	if s == "" || len(s) > 127 || !(isAlnum(s[0]) || s[0] >= 'A' && s[0] <= 'Z') {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(isAlnum(c) || c >= 'A' && c <= 'Z' || strings.IndexByte("!#$&-^_.+", c) >= 0) {
			return false
		}
	}
	return true
}
