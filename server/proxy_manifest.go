package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-registry/berth/internal/shared"
	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

// serve answers a pull from a proxy repository. Proxies are read-only.
func (p *proxy) serve(w http.ResponseWriter, r *http.Request, img imageRef, rt route) error {
	rp := p.repo
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errf(codeUnsupported, "repository %q is a proxy repository (read-only); push to a hosted repository", rp.Name)
	}
	switch rt.kind {
	case routeManifest:
		return answerManifest(w, r, p.impl, img, rt)
	case routeBlob:
		return p.blob(w, r, img, rt.digest)
	case routeTags:
		return serveTags(w, r, p, img, rt.name)
	case routeReferrers:
		return serveReferrers(w, r, p, img, rt.digest)
	case routeUploads, routeUpload:
		return errf(codeUnsupported, "repository %q is a proxy repository (read-only)", rp.Name)
	}
	return errf(codeNotFound, "%s is not served by proxy repositories", rt.kind)
}

// cacheResult records how repository rp answered a client's request:
// once per request, under rp (the member, for a request through a group,
// and under the group too). source says where the bytes sent come from:
// "cache" for what was on disk before the request, "upstream" for what
// crossed the upstream link for it (an eager download for the pull in
// progress, a download it joined, included). berth's own requests
// (prefetch, the admin socket) are not counted.
func (s *Server) cacheResult(ctx context.Context, rp *repo, kind, result, source string) {
	s.countResult(ctx, rp.Name, kind, result, source)
}

func (s *Server) countResult(ctx context.Context, repoName, kind, result, source string) {
	info := infoOf(ctx)
	info.result, info.source, info.served = result, source, repoName
	if info.principal.internal {
		return
	}
	s.m.cache.WithLabelValues(repoName, kind, result).Inc()
	if info.group != "" {
		s.m.groupResults.WithLabelValues(info.group, repoName, kind, result).Inc()
	}
}

// served starts the eager layers of an image manifest going out.
func (p *proxy) served(img imageRef, a manifestAnswer) { p.eagerLayers(img, a.m) }

// manifest: GET/HEAD /v2/<name>/manifests/<ref> (end-3) through the
// cache: digests are immutable; tags are fresh for tag_ttl, then
// revalidated with HEAD; stale copies are served when the upstream fails;
// 404s are remembered for not_found_ttl.
func (p *proxy) manifest(ctx context.Context, img imageRef, rt route, head bool) (manifestAnswer, error) {
	s, rp := p.s, p.repo
	path := img.path()
	if !rt.digest.IsZero() {
		if m, err := s.manifests.GetManifest(ctx, path, rt.digest); err == nil {
			s.cacheResult(ctx, rp, "manifest", resultHit, "cache")
			return manifestAnswer{m: m}, nil
		} else if !store.IsNotFound(err) {
			return manifestAnswer{}, err
		}
		return p.manifestMiss(ctx, img, rt.ref, "", head)
	}

	tag := rt.ref
	ti, err := s.manifests.ResolveTag(ctx, path, tag)
	if err != nil && !store.IsNotFound(err) {
		return manifestAnswer{}, err
	}
	if err == nil {
		m, err := s.manifests.GetManifest(ctx, path, ti.Digest)
		if err != nil && !store.IsNotFound(err) {
			return manifestAnswer{}, err
		}
		if err == nil {
			if time.Since(ti.Checked) < rp.TagTTL {
				s.cacheResult(ctx, rp, "manifest", resultHit, "cache")
				return manifestAnswer{m: m}, nil
			}
			return p.revalidateTag(ctx, img, tag, m, head)
		}
	}
	return p.manifestMiss(ctx, img, tag, tag, head)
}

// revalidateTag asks upstream with HEAD whether a stale cached tag still
// points at m (HEAD does not count against Docker Hub's pull limit).
func (p *proxy) revalidateTag(ctx context.Context, img imageRef, tag string, m store.Manifest, head bool) (manifestAnswer, error) {
	s, rp := p.s, p.repo
	path := img.path()
	v, err := shared.Do(ctx, &s.flight, "head\x00"+path+":"+tag, time.Minute, func(ctx context.Context) (any, error) {
		resp, err := rp.Upstream.Manifest(ctx, http.MethodHead, img.name, tag)
		if err != nil {
			return "", err
		}
		resp.Body.Close()
		return resp.Header.Get("Docker-Content-Digest"), nil
	})
	if err != nil && ctx.Err() != nil {
		return manifestAnswer{}, ctx.Err() // this client left; the others were answered
	}
	if err != nil {
		switch {
		case errors.Is(err, upstream.ErrNotFound):
			if err := s.manifests.DeleteTag(ctx, path, tag); err != nil && !store.IsNotFound(err) {
				s.log.Error("forget a tag deleted upstream", "repository", rp.Name, "name", img.name, "tag", tag, "err", err)
			}
			rp.rememberNotFound(img.at(tag))
			s.cacheResult(ctx, rp, "manifest", resultMiss, "")
			return manifestAnswer{}, errf(codeManifestUnknown, "manifest %s:%s not found upstream", img.name, tag)
		case rp.ServeStale && errors.Is(err, upstream.ErrUnavailable):
			p.upstreamError(err)
			s.log.Debug("upstream unavailable, serving stale tag", "repository", rp.Name, "name", img.name, "tag", tag, "err", err)
			s.cacheResult(ctx, rp, "manifest", resultStale, "cache")
			return manifestAnswer{m: m}, nil
		}
		p.upstreamError(err)
		return manifestAnswer{}, err
	}
	if dg := v.(string); dg == m.Digest.String() {
		if err := s.manifests.TagChecked(ctx, path, tag, m.Digest, time.Now()); err != nil {
			return manifestAnswer{}, err
		}
		s.cacheResult(ctx, rp, "manifest", resultRevalidated, "cache")
		return manifestAnswer{m: m}, nil
	}
	return p.manifestMiss(ctx, img, tag, tag, head)
}

// manifestMiss fetches a manifest from upstream (GET) and caches it (for
// a HEAD of a tag too), or relays an upstream HEAD of a digest without
// caching anything.
func (p *proxy) manifestMiss(ctx context.Context, img imageRef, ref, tag string, head bool) (manifestAnswer, error) {
	s, rp := p.s, p.repo
	if rp.notFound(img.at(ref)) {
		s.cacheResult(ctx, rp, "manifest", resultNegative, "")
		return manifestAnswer{}, errf(codeManifestUnknown, "manifest %s:%s not found upstream (remembered)", img.name, ref)
	}
	if m, ok := s.commits.manifest(img.path(), ref); ok {
		s.cacheResult(ctx, rp, "manifest", resultHit, "cache")
		return manifestAnswer{m: m}, nil
	}
	// A HEAD of a tag not cached fetches the manifest like a GET (one
	// shared upstream GET): oras discover and crane digest only ever ask
	// HEAD, and with the tag cached they are served stale when the
	// upstream is down, like every other client. Docker's HEAD of a tag
	// then GET by digest costs the same one upstream GET as before. A
	// HEAD by digest still asks upstream with HEAD and caches nothing.
	if head && tag == "" {
		resp, err := rp.Upstream.Manifest(ctx, http.MethodHead, img.name, ref)
		if err != nil {
			return manifestAnswer{}, p.manifestMissFailed(ctx, img, ref, err)
		}
		resp.Body.Close()
		dg := resp.Header.Get("Docker-Content-Digest")
		if strings.Contains(ref, ":") && dg != "" && dg != ref {
			s.m.digestMismatch.WithLabelValues(img.label()).Inc()
			return manifestAnswer{}, fmt.Errorf("upstream HEAD %s@%s answered digest %s", img.name, ref, dg)
		}
		s.cacheResult(ctx, rp, "manifest", resultMiss, "upstream")
		head := http.Header{}
		for _, h := range []string{"Content-Type", "Docker-Content-Digest", "Content-Length"} {
			if v := resp.Header.Get(h); v != "" {
				head.Set(h, v)
			}
		}
		if dg != "" {
			head.Set("Etag", `"`+dg+`"`)
		}
		return manifestAnswer{head: head}, nil
	}
	v, err := shared.Do(ctx, &s.flight, "get\x00"+img.at(ref), 2*time.Minute, func(ctx context.Context) (any, error) {
		return p.fetchManifest(ctx, img, ref, tag)
	})
	if err != nil {
		return manifestAnswer{}, p.manifestMissFailed(ctx, img, ref, err)
	}
	s.cacheResult(ctx, rp, "manifest", resultMiss, "upstream")
	return manifestAnswer{m: v.(store.Manifest)}, nil
}

// manifestMissFailed answers a miss the upstream failed: a 404 it gave
// before is answered again while it is unavailable (serve_stale), else
// manifestUpstreamFailed.
func (p *proxy) manifestMissFailed(ctx context.Context, img imageRef, ref string, err error) error {
	s, rp := p.s, p.repo
	if rp.ServeStale && errors.Is(err, upstream.ErrUnavailable) && rp.staleNotFound(img.at(ref)) {
		p.upstreamError(err)
		s.cacheResult(ctx, rp, "manifest", resultNegative, "")
		return errf(codeManifestUnknown, "manifest %s:%s not found upstream (remembered; the upstream is unavailable now)", img.name, ref)
	}
	return p.manifestUpstreamFailed(err, img.at(ref))
}

// manifestUpstreamFailed remembers an upstream 404 or counts another
// failure, and returns err.
func (p *proxy) manifestUpstreamFailed(err error, negKey string) error {
	var re *regError
	switch {
	case errors.As(err, &re):
	case errors.Is(err, upstream.ErrNotFound):
		p.rememberNotFound(negKey)
	default:
		p.upstreamError(err)
	}
	return err
}

// fetchManifest GETs a manifest, checks its size, digest and shape, and
// stores it (with the tag, when fetched by tag).
func (p *proxy) fetchManifest(ctx context.Context, img imageRef, ref, tag string) (store.Manifest, error) {
	s, rp := p.s, p.repo
	asked := time.Now()
	resp, err := rp.Upstream.Manifest(ctx, http.MethodGet, img.name, ref)
	if err != nil {
		return store.Manifest{}, err
	}
	defer resp.Body.Close()
	rp.manifestAnswer.Store(int64(time.Since(asked)))
	if resp.ContentLength > maxManifestSize {
		return store.Manifest{}, errf(codeManifestTooLarge, "upstream manifest is %d bytes, over the %d byte limit", resp.ContentLength, maxManifestSize)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	s.m.upstreamBytes.WithLabelValues(img.label()).Add(float64(len(body)))
	if err != nil {
		return store.Manifest{}, fmt.Errorf("%w: reading the manifest: %w", errUpstreamBroken, err)
	}
	if len(body) > maxManifestSize {
		return store.Manifest{}, errf(codeManifestTooLarge, "upstream manifest is over the %d byte limit", maxManifestSize)
	}
	var dg store.Digest
	if strings.Contains(ref, ":") {
		dg = store.MustDigest(ref) // validated by parsePath
	} else {
		dg = store.DigestOf(body)
		if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
			if hd, err := store.ParseDigest(h); err == nil && hd.Algorithm() != "sha256" {
				dg = hd
			}
		}
	}
	if !dg.Verify(body) {
		s.m.digestMismatch.WithLabelValues(img.label()).Inc()
		s.m.upstreamErrors.WithLabelValues(rp.Name, "digest").Inc()
		return store.Manifest{}, fmt.Errorf("%w: manifest %s@%s does not match digest %s", errUpstreamBroken, img.name, ref, dg)
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" && h != dg.String() {
		s.m.digestMismatch.WithLabelValues(img.label()).Inc()
		s.m.upstreamErrors.WithLabelValues(rp.Name, "digest").Inc()
		return store.Manifest{}, fmt.Errorf("%w: manifest %s:%s: header digest %s, content %s", errUpstreamBroken, img.name, ref, h, dg)
	}
	pm, err := parseManifest(body, resp.Header.Get("Content-Type"))
	if err != nil {
		return store.Manifest{}, err
	}
	m := store.Manifest{Digest: dg, MediaType: pm.mediaType, Body: body, ArtifactType: pm.artifactType, Annotations: pm.annotations, Subject: pm.subject}
	p.commitManifest(img, ref, tag, m, pm.refs())
	return m, nil
}

// pendingCommits are the manifest commits under way: "<path>@<ref>" →
// *pendingManifest, and a WaitGroup Close waits on.
type pendingCommits struct {
	m  sync.Map
	wg sync.WaitGroup
}

// pendingManifest is a verified manifest from upstream whose commit to
// the store is under way.
type pendingManifest struct {
	m    store.Manifest
	refs []store.Digest
}

// commitManifest stores a verified manifest (with its tag, and tags an
// upstream HEAD named) in the background: the client that asked has it at
// once instead of after the fsyncs of the blob file and the index (a few
// milliseconds per manifest, most of a cold manifest's time on a fast
// link). Until the commit ends, requests for it are answered from memory
// (pendingCommits.manifest) and its blobs count as linked
// (pendingCommits.names). A crash before the commit leaves what a crash
// before the upstream answered leaves: nothing.
func (p *proxy) commitManifest(img imageRef, ref, tag string, m store.Manifest, refs []store.Digest) {
	s, rp := p.s, p.repo
	path := img.path()
	pm := &pendingManifest{m: m, refs: refs}
	keys := []string{img.at(m.Digest.String())}
	if ref != m.Digest.String() {
		keys = append(keys, img.at(ref))
	}
	for _, k := range keys {
		s.commits.m.Store(k, pm)
	}
	s.commits.wg.Add(1)
	s.goSafe("manifest commit", func() {
		defer s.commits.wg.Done()
		defer func() {
			for _, k := range keys {
				s.commits.m.CompareAndDelete(k, pm)
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.manifests.PutManifest(ctx, path, m, tag, refs); err != nil {
			// Served all the same: what upstream sent, not kept.
			s.m.passThrough.WithLabelValues(rp.Name, "store_error").Inc()
			s.log.Error("cache manifest", "repository", rp.Name, "name", img.name, "ref", ref, "err", err)
			return
		}
	})
}

// manifest returns the manifest path@ref whose commit is under
// way, if any.
func (c *pendingCommits) manifest(path, ref string) (store.Manifest, bool) {
	if v, ok := c.m.Load(path + "@" + ref); ok {
		return v.(*pendingManifest).m, true
	}
	return store.Manifest{}, false
}

// names reports whether a manifest of path being committed names
// blob d.
func (c *pendingCommits) names(path string, d store.Digest) bool {
	found := false
	c.m.Range(func(k, v any) bool {
		if strings.HasPrefix(k.(string), path+"@") && slices.Contains(v.(*pendingManifest).refs, d) {
			found = true
		}
		return !found
	})
	return found
}

// Close waits for the manifest commits under way; call it before closing
// the store.
func (s *Server) Close() { s.commits.wg.Wait() }

// manifestAnswer is a manifest to send: a stored one, or only the headers
// an upstream HEAD gave for one not cached.
type manifestAnswer struct {
	m    store.Manifest
	head http.Header
}

// digest is the answer's manifest digest ("" when an upstream HEAD did
// not say).
func (a manifestAnswer) digest() string {
	if a.head != nil {
		return a.head.Get("Docker-Content-Digest")
	}
	return a.m.Digest.String()
}

// index is the answer's index, parsed (nil for another manifest, or a
// HEAD's answer).
func (a manifestAnswer) index() *parsedManifest {
	if a.head != nil || (a.m.MediaType != mtOCIIndex && a.m.MediaType != mtDockerList) {
		return nil
	}
	pm, err := parseManifest(a.m.Body, a.m.MediaType)
	if err != nil {
		return nil
	}
	return pm
}

func (a manifestAnswer) write(w http.ResponseWriter, r *http.Request) error {
	if a.head != nil {
		for k, v := range a.head {
			w.Header()[k] = v
		}
		w.WriteHeader(http.StatusOK)
		return nil
	}
	return serveManifest(w, r, a.m)
}

// upstreamError counts an upstream failure by reason and logs it at WARN,
// once per repository and reason a minute (the count says how many).
func (p *proxy) upstreamError(err error) {
	s, rp := p.s, p.repo
	reason := "other"
	switch {
	case errors.Is(err, upstream.ErrBudgetSpent):
		reason = "budget" // refused by berth itself, nothing sent
	case errors.Is(err, upstream.ErrUnavailable):
		reason = "unavailable"
	case errors.Is(err, upstream.ErrDenied):
		reason = "denied"
	case errors.Is(err, context.DeadlineExceeded):
		reason = "timeout"
	case errors.Is(err, store.ErrDigestMismatch):
		reason = "digest"
	case errors.Is(err, store.ErrSizeMismatch):
		reason = "size"
	}
	s.m.upstreamErrors.WithLabelValues(rp.Name, reason).Inc()
	key := rp.Name + "\x00" + reason
	if _, seen := s.loggedCauses.Get(key); !seen {
		s.loggedCauses.Add(key, struct{}{})
		s.log.Warn("upstream failing; more of this kind are only counted for a minute (berth_upstream_errors_total)",
			"repository", rp.Name, "reason", reason, "err", err)
	}
}
