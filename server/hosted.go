package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/store"
)

// serve answers the full distribution API for a hosted repository.
func (h *hosted) serve(w http.ResponseWriter, r *http.Request, img imageRef, rt route) error {
	s, path := h.s, img.path()
	m := r.Method
	read := m == http.MethodGet || m == http.MethodHead
	switch {
	case rt.kind == routeManifest && read:
		return answerManifest(w, r, h.impl, img, rt)
	case rt.kind == routeManifest && m == http.MethodPut:
		return h.putManifest(w, r, img, rt)
	case rt.kind == routeManifest && m == http.MethodDelete:
		return h.deleteManifest(w, r, img, rt)
	case rt.kind == routeBlob && read:
		return h.blob(w, r, img, rt.digest)
	case rt.kind == routeBlob && m == http.MethodDelete:
		if err := s.blobs.Unlink(r.Context(), path, rt.digest); err != nil {
			return err
		}
		w.WriteHeader(http.StatusAccepted)
		return nil
	case rt.kind == routeUploads && m == http.MethodPost:
		return h.startUpload(w, r, img, rt)
	case rt.kind == routeUpload && m == http.MethodGet:
		u, err := s.pushes.GetUpload(r.Context(), path, rt.uploadID)
		if err != nil {
			return err
		}
		uploadHeaders(w, rt.name, u)
		w.WriteHeader(http.StatusNoContent)
		return nil
	case rt.kind == routeUpload && m == http.MethodPatch:
		return h.patchUpload(w, r, img, rt)
	case rt.kind == routeUpload && m == http.MethodPut:
		return h.finishUpload(w, r, img, rt)
	case rt.kind == routeUpload && m == http.MethodDelete:
		if err := s.pushes.DeleteUpload(r.Context(), path, rt.uploadID); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	case rt.kind == routeTags && read:
		return serveTags(w, r, h, img, rt.name)
	case rt.kind == routeReferrers && read:
		return serveReferrers(w, r, h, img, rt.digest)
	}
	return errf(codeUnsupported, "%s not allowed on %s", m, rt.kind)
}

// manifest finds /v2/<name>/manifests/<ref> (end-3) in the store.
func (h *hosted) manifest(ctx context.Context, img imageRef, rt route, _ bool) (manifestAnswer, error) {
	s, path := h.s, img.path()
	d := rt.digest
	if d.IsZero() {
		ti, err := s.manifests.ResolveTag(ctx, path, rt.ref)
		if err != nil {
			return manifestAnswer{}, err
		}
		d = ti.Digest
	}
	m, err := s.manifests.GetManifest(ctx, path, d)
	if err != nil {
		return manifestAnswer{}, err
	}
	s.cacheResult(ctx, h.repo, "manifest", resultHit, "cache")
	return manifestAnswer{m: m}, nil
}

// putManifest: PUT /v2/<name>/manifests/<ref> (end-7). The body is at most
// 4 MiB, must match a digest reference, and every blob and child manifest
// it names must already be in the repository.
func (h *hosted) putManifest(w http.ResponseWriter, r *http.Request, img imageRef, rt route) error {
	s, ctx, path := h.s, r.Context(), img.path()
	if r.ContentLength > maxManifestSize {
		return errf(codeManifestTooLarge, "manifest is %d bytes, over the %d byte limit", r.ContentLength, maxManifestSize)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxManifestSize+1))
	if err != nil {
		return errf(codeManifestInvalid, "reading manifest: %v", err)
	}
	if len(body) > maxManifestSize {
		return errf(codeManifestTooLarge, "manifest is over the %d byte limit", maxManifestSize)
	}
	d := store.DigestOf(body)
	tag := ""
	// Push by digest may name tags as parameters (?tag=a&tag=b).
	extraTags := r.URL.Query()["tag"]
	for _, t := range extraTags {
		if !validTag(t) {
			return errf(codeManifestInvalid, "invalid tag %q", t).withDetail(map[string]string{"tag": t})
		}
	}
	if !rt.digest.IsZero() {
		if !rt.digest.Verify(body) {
			return errf(codeDigestInvalid, "manifest does not match digest %s", rt.digest).withDetail(map[string]string{"computed": d.String()})
		}
		d = rt.digest
	} else {
		tag = rt.ref
	}
	pm, err := parseManifest(body, r.Header.Get("Content-Type"))
	if err != nil {
		return err
	}
	if pm.schema1() {
		return errf(codeManifestInvalid, "schema 1 manifests cannot be pushed")
	}
	refs, err := checkRefs(ctx, s, path, pm, false)
	if err != nil {
		return err
	}
	tags := append(slices.DeleteFunc([]string{tag}, func(t string) bool { return t == "" }), extraTags...)
	ev := audit.Event{Action: audit.Push, Repository: h.repo.Name, Image: img.name, Digest: d.String(), MediaType: pm.mediaType, Size: int64(len(body))}
	before, err := pushTags(ctx, s, h.repo, path, tags, ev)
	if err != nil {
		return err
	}
	m := store.Manifest{Digest: d, MediaType: pm.mediaType, Body: body, ArtifactType: pm.artifactType, Annotations: pm.annotations, Subject: pm.subject, Hosted: true}
	if err := s.manifests.PutManifest(ctx, path, m, tag, refs); err != nil {
		return err
	}
	for _, t := range extraTags {
		if err := s.manifests.TagChecked(ctx, path, t, d, time.Now()); err != nil {
			return err
		}
	}
	tagEvents(s, ctx, ev, tags, before)
	hd := w.Header()
	for _, t := range extraTags {
		hd.Add("OCI-Tag", t)
	}
	hd.Set("Location", "/v2/"+rt.name+"/manifests/"+d.String())
	hd.Set("Docker-Content-Digest", d.String())
	if m.Subject != "" {
		hd.Set("OCI-Subject", m.Subject)
	}
	w.WriteHeader(http.StatusCreated)
	return nil
}

// checkRefs checks that every blob and child manifest pm names is in the
// repository (path) and returns them, for the store's references; with
// partial an index may lack children (a replication of some platforms).
func checkRefs(ctx context.Context, s *Server, path string, pm *parsedManifest, partial bool) ([]store.Digest, error) {
	for _, b := range pm.blobs {
		ok, err := s.blobs.HasLink(ctx, path, b)
		if err != nil {
			return nil, err
		}
		if ok {
			if _, err := s.blobs.StatBlob(ctx, b); err == nil {
				continue
			} else if !store.IsNotFound(err) {
				return nil, err
			}
		}
		return nil, errf(codeManifestBlobUnknown, "blob %s is not in the repository", b).withDetail(map[string]string{"digest": b.String()})
	}
	refs := pm.refs()
	for _, c := range pm.children {
		ok, err := s.manifests.HasManifest(ctx, path, c)
		if err != nil {
			return nil, err
		}
		if !ok && !partial {
			return nil, errf(codeManifestBlobUnknown, "manifest %s is not in the repository", c).withDetail(map[string]string{"digest": c.String()})
		}
		if !ok { // a platform left out: not a reference the store must hold
			refs = slices.DeleteFunc(refs, func(r store.Digest) bool { return r == c })
		}
	}
	return refs, nil
}

// deleteManifest: DELETE /v2/<name>/manifests/<digest> removes the
// manifest and its tags (end-9); by tag it removes only the tag.
func (h *hosted) deleteManifest(w http.ResponseWriter, r *http.Request, img imageRef, rt route) error {
	s, ctx, path := h.s, r.Context(), img.path()
	tag := ""
	if rt.digest.IsZero() {
		tag = rt.ref
	}
	if err := checkTagDelete(ctx, s, h.repo, path, tag, rt.digest); err != nil {
		record(s, ctx, audit.Event{Action: audit.Delete, Repository: h.repo.Name, Image: img.name, Tag: tag, Digest: rt.digest.String(), Outcome: "refused", Detail: err.Error()})
		return err
	}
	var err error
	if tag != "" {
		err = s.manifests.DeleteTag(ctx, path, tag)
	} else {
		err = s.manifests.DeleteManifest(ctx, path, rt.digest)
	}
	if err != nil {
		return err
	}
	record(s, ctx, audit.Event{Action: audit.Delete, Repository: h.repo.Name, Image: img.name, Tag: tag, Digest: rt.digest.String()})
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// blob: GET/HEAD /v2/<name>/blobs/<digest> (end-2), only for blobs
// pushed or mounted into this repository.
func (h *hosted) blob(w http.ResponseWriter, r *http.Request, img imageRef, d store.Digest) error {
	s, ctx := h.s, r.Context()
	ok, err := s.blobs.HasLink(ctx, img.path(), d)
	if err != nil {
		return err
	}
	if !ok {
		return errf(codeBlobUnknown, "blob %s unknown to repository", d)
	}
	f, err := s.blobs.OpenBlob(ctx, d)
	if err != nil {
		return err
	}
	defer f.Close()
	s.cacheResult(ctx, h.repo, "blob", resultHit, "cache")
	serveBlobFile(w, r, d, f.File)
	return nil
}

// tags: GET /v2/<name>/tags/list (end-8a/b) with n/last.
func (h *hosted) tags(ctx context.Context, img imageRef, q url.Values) ([]string, bool, error) {
	s, path := h.s, img.path()
	tags, err := s.manifests.Tags(ctx, path)
	if err != nil {
		return nil, false, err
	}
	if len(tags) == 0 {
		repos, err := s.manifests.Repositories(ctx, path+"\x00")
		if err != nil {
			return nil, false, err
		}
		if len(repos) == 0 {
			return nil, false, errf(codeNameUnknown, "repository %s unknown", img.name)
		}
	}
	page, next, err := paginate(tags, q)
	return page, next != "", err
}

// referrers: GET /v2/<name>/referrers/<digest> (end-12a/b), the manifests
// whose subject is digest.
func (h *hosted) referrers(ctx context.Context, img imageRef, d store.Digest, _ string) ([]store.Referrer, error) {
	return h.s.manifests.Referrers(ctx, img.path(), d)
}

// cacheBlob: a hosted repository has what was pushed to it, or not.
func (h *hosted) cacheBlob(ctx context.Context, img imageRef, d store.Digest) error {
	ok, err := h.s.blobs.HasLink(ctx, img.path(), d)
	if err == nil && !ok {
		err = errf(codeBlobUnknown, "blob %s unknown to repository", d)
	}
	return err
}

// served: nothing follows a hosted manifest going out.
func (h *hosted) served(imageRef, manifestAnswer) {}

// answerManifest answers a manifest GET or HEAD from rp: found, then
// served.
func answerManifest(w http.ResponseWriter, r *http.Request, rp repository, img imageRef, rt route) error {
	a, err := rp.manifest(r.Context(), img, rt, r.Method == http.MethodHead)
	if err != nil {
		return err
	}
	rp.served(img, a)
	return a.write(w, r)
}

// serveTags answers a tag list of rp's image under the client's name,
// with a Link to the next page when there may be one.
func serveTags(w http.ResponseWriter, r *http.Request, rp repository, img imageRef, clientName string) error {
	q, err := pageQuery(r.URL.Query())
	if err != nil {
		return err
	}
	tags, more, err := rp.tags(r.Context(), img, q)
	if err != nil {
		return err
	}
	if more && len(tags) > 0 {
		next := url.Values{"last": {tags[len(tags)-1]}}
		if n := q.Get("n"); n != "" {
			next.Set("n", n)
		}
		w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?%s>; rel="next"`, clientName, next.Encode()))
	}
	return writeTagList(w, r, clientName, tags)
}

// serveReferrers answers the referrers of d in rp.
func serveReferrers(w http.ResponseWriter, r *http.Request, rp repository, img imageRef, d store.Digest) error {
	at, err := artifactTypeQuery(r)
	if err != nil {
		return err
	}
	refs, err := rp.referrers(r.Context(), img, d, at)
	if err != nil {
		return err
	}
	return writeReferrers(w, r, refs)
}

// writeReferrers answers an OCI index of refs, filtered by ?artifactType.
func writeReferrers(w http.ResponseWriter, r *http.Request, refs []store.Referrer) error {
	want := r.URL.Query().Get("artifactType")
	list := make([]store.Referrer, 0, len(refs))
	for _, ref := range refs {
		if want == "" || ref.ArtifactType == want {
			list = append(list, ref)
		}
	}
	if want != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	body := map[string]any{"schemaVersion": 2, "mediaType": mtOCIIndex, "manifests": list}
	w.Header().Set("Content-Type", mtOCIIndex)
	return writeJSONTyped(w, r, body)
}
