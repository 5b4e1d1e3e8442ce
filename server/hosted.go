package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/berth-registry/berth/store"
)

// serveHosted answers the full distribution API for a hosted repository.
func (s *Server) serveHosted(w http.ResponseWriter, r *http.Request, rp *repo, image string, rt route) error {
	path := rp.Name + "/" + image
	m := r.Method
	read := m == http.MethodGet || m == http.MethodHead
	switch {
	case rt.kind == routeManifest && read:
		m, err := s.hostedManifest(r.Context(), path, rt)
		if err != nil {
			return err
		}
		infoOf(r.Context()).source = "cache"
		return serveManifest(w, r, m)
	case rt.kind == routeManifest && m == http.MethodPut:
		return s.putManifest(w, r, path, rt)
	case rt.kind == routeManifest && m == http.MethodDelete:
		return s.deleteManifest(w, r, path, rt)
	case rt.kind == routeBlob && read:
		return s.hostedGetBlob(w, r, path, rt.digest)
	case rt.kind == routeBlob && m == http.MethodDelete:
		if err := s.blobs.Unlink(r.Context(), path, rt.digest); err != nil {
			return err
		}
		w.WriteHeader(http.StatusAccepted)
		return nil
	case rt.kind == routeUploads && m == http.MethodPost:
		return s.startUpload(w, r, rp, path, rt)
	case rt.kind == routeUpload && m == http.MethodGet:
		u, err := s.pushes.GetUpload(r.Context(), path, rt.uploadID)
		if err != nil {
			return err
		}
		uploadHeaders(w, rt.name, u)
		w.WriteHeader(http.StatusNoContent)
		return nil
	case rt.kind == routeUpload && m == http.MethodPatch:
		return s.patchUpload(w, r, path, rt)
	case rt.kind == routeUpload && m == http.MethodPut:
		return s.finishUpload(w, r, path, rt)
	case rt.kind == routeUpload && m == http.MethodDelete:
		if err := s.pushes.DeleteUpload(r.Context(), path, rt.uploadID); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	case rt.kind == routeTags && read:
		return s.hostedTags(w, r, path, rt.name)
	case rt.kind == routeReferrers && read:
		return s.referrers(w, r, path, rt.digest)
	}
	return errf(codeUnsupported, "%s not allowed on %s", m, rt.kind)
}

// hostedManifest finds /v2/<name>/manifests/<ref> (end-3) in the store.
func (s *Server) hostedManifest(ctx context.Context, path string, rt route) (store.Manifest, error) {
	d := rt.digest
	if d.IsZero() {
		ti, err := s.manifests.ResolveTag(ctx, path, rt.ref)
		if err != nil {
			return store.Manifest{}, err
		}
		d = ti.Digest
	}
	m, err := s.manifests.GetManifest(ctx, path, d)
	if err != nil {
		return store.Manifest{}, err
	}
	return m, nil
}

// putManifest: PUT /v2/<name>/manifests/<ref> (end-7). The body is at most
// 4 MiB, must match a digest reference, and every blob and child manifest
// it names must already be in the repository.
func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, path string, rt route) error {
	ctx := r.Context()
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
	if pm.mediaType == mtDockerV1 || pm.mediaType == mtDockerV1Signd {
		return errf(codeManifestInvalid, "schema 1 manifests cannot be pushed")
	}
	for _, b := range pm.blobs {
		ok, err := s.blobs.HasLink(ctx, path, b)
		if err != nil {
			return err
		}
		if ok {
			if _, err := s.blobs.StatBlob(ctx, b); err == nil {
				continue
			} else if !store.IsNotFound(err) {
				return err
			}
		}
		return errf(codeManifestBlobUnknown, "blob %s is not in the repository", b).withDetail(map[string]string{"digest": b.String()})
	}
	for _, c := range pm.children {
		ok, err := s.manifests.HasManifest(ctx, path, c)
		if err != nil {
			return err
		}
		if !ok {
			return errf(codeManifestBlobUnknown, "manifest %s is not in the repository", c).withDetail(map[string]string{"digest": c.String()})
		}
	}
	m := store.Manifest{Digest: d, MediaType: pm.mediaType, Body: body, ArtifactType: pm.artifactType, Annotations: pm.annotations, Hosted: true}
	if pm.subject != nil {
		m.Subject = pm.subject.Digest
	}
	if err := s.manifests.PutManifest(ctx, path, m, tag, pm.refs()); err != nil {
		return err
	}
	for _, t := range extraTags {
		if err := s.manifests.TagChecked(ctx, path, t, d, time.Now()); err != nil {
			return err
		}
	}
	h := w.Header()
	for _, t := range extraTags {
		h.Add("OCI-Tag", t)
	}
	h.Set("Location", "/v2/"+rt.name+"/manifests/"+d.String())
	h.Set("Docker-Content-Digest", d.String())
	if m.Subject != "" {
		h.Set("OCI-Subject", m.Subject)
	}
	w.WriteHeader(http.StatusCreated)
	return nil
}

// deleteManifest: DELETE /v2/<name>/manifests/<digest> removes the
// manifest and its tags (end-9); by tag it removes only the tag.
func (s *Server) deleteManifest(w http.ResponseWriter, r *http.Request, path string, rt route) error {
	ctx := r.Context()
	var err error
	if rt.digest.IsZero() {
		err = s.manifests.DeleteTag(ctx, path, rt.ref)
	} else {
		err = s.manifests.DeleteManifest(ctx, path, rt.digest)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// hostedGetBlob: GET/HEAD /v2/<name>/blobs/<digest> (end-2), only for blobs
// pushed or mounted into this repository.
func (s *Server) hostedGetBlob(w http.ResponseWriter, r *http.Request, path string, d store.Digest) error {
	ctx := r.Context()
	ok, err := s.blobs.HasLink(ctx, path, d)
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
	infoOf(ctx).source = "cache"
	if f.Info.Size >= largeBlob && r.Method == http.MethodGet {
		limitUnsent(ctx)
	}
	serveBlobFile(w, r, d, f.File)
	return nil
}

// startUpload: POST /v2/<name>/blobs/uploads/ (end-4a/b, end-11). With
// ?digest= the body is the whole blob; with ?mount=&from= a blob the
// source repository holds is linked without a transfer; otherwise an
// upload session starts.
func (s *Server) startUpload(w http.ResponseWriter, r *http.Request, rp *repo, path string, rt route) error {
	ctx := r.Context()
	q := r.URL.Query()
	if mount := q.Get("mount"); mount != "" {
		d, err := store.ParseDigest(mount)
		if err != nil {
			return errf(codeDigestInvalid, "mount: %v", err)
		}
		if from := q.Get("from"); from != "" && s.mountable(r, from, d) {
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
		if _, err := io.Copy(bw, r.Body); err != nil {
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
	u, err := s.pushes.CreateUpload(ctx, path)
	if err != nil {
		return err
	}
	uploadHeaders(w, rt.name, u)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// mountable reports whether the repository the client calls from holds d.
func (s *Server) mountable(r *http.Request, from string, d store.Digest) bool {
	if validateName(from) != nil {
		return false
	}
	src, image, err := s.resolve(r, infoOf(r.Context()).listener, from)
	if err != nil {
		return false
	}
	p := infoOf(r.Context()).principal
	holders := []*repo{src}
	if src.Kind == KindGroup {
		holders = s.readableMembers(r, src, image)
	} else if !s.allowed(p, src, image, actionPull) {
		return false // the client may not read the source: no mount
	}
	for _, h := range holders {
		ok, err := s.blobs.HasLink(r.Context(), h.Name+"/"+memberImage(h, image), d)
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
func (s *Server) patchUpload(w http.ResponseWriter, r *http.Request, path string, rt route) error {
	ctx := r.Context()
	start, end, ok, err := parseContentRange(r.Header.Get("Content-Range"))
	if err != nil {
		return s.rangeError(ctx, w, path, rt, err)
	}
	size := int64(-1)
	startAt := int64(-1)
	if ok {
		startAt, size = start, end-start+1
		if r.ContentLength >= 0 && r.ContentLength != size {
			return s.rangeError(ctx, w, path, rt, errf(codeRangeInvalid, "Content-Range covers %d bytes, body has %d", size, r.ContentLength))
		}
	} else if r.ContentLength >= 0 {
		size = r.ContentLength
	}
	u, err := s.pushes.AppendUpload(ctx, path, rt.uploadID, startAt, r.Body, size)
	if err != nil {
		if errors.Is(err, store.ErrRangeInvalid) {
			return s.rangeError(ctx, w, path, rt, err)
		}
		return err
	}
	uploadHeaders(w, rt.name, u)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// rangeError answers 416 with the upload's current Range and Location so
// the client can resume.
func (s *Server) rangeError(ctx context.Context, w http.ResponseWriter, path string, rt route, err error) error {
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
func (s *Server) finishUpload(w http.ResponseWriter, r *http.Request, path string, rt route) error {
	ctx := r.Context()
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
	if r.ContentLength != 0 {
		body, size = r.Body, r.ContentLength
		if start, end, ok, err := parseContentRange(r.Header.Get("Content-Range")); err != nil {
			return err
		} else if ok {
			if u, err := s.pushes.GetUpload(ctx, path, rt.uploadID); err != nil {
				return err
			} else if start != u.Offset {
				return s.rangeError(ctx, w, path, rt, errf(codeRangeInvalid, "chunk starts at %d, upload has %d bytes", start, u.Offset))
			}
			size = end - start + 1
		}
	}
	if _, err := s.pushes.FinishUpload(ctx, path, rt.uploadID, body, size, d); err != nil {
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

// hostedTags: GET /v2/<name>/tags/list (end-8a/b) with n/last.
func (s *Server) hostedTags(w http.ResponseWriter, r *http.Request, path, clientName string) error {
	tags, err := s.manifests.Tags(r.Context(), path)
	if err != nil {
		return err
	}
	if len(tags) == 0 {
		repos, err := s.manifests.Repositories(r.Context(), path+"\x00")
		if err != nil {
			return err
		}
		if len(repos) == 0 {
			return errf(codeNameUnknown, "repository %s unknown", clientName)
		}
	}
	page, next, err := paginate(tags, r.URL.Query())
	if err != nil {
		return err
	}
	if next != "" {
		w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?%s>; rel="next"`, clientName, next))
	}
	return writeTagList(w, r, clientName, page)
}

// referrers: GET /v2/<name>/referrers/<digest> (end-12a/b), an OCI index
// of the manifests whose subject is digest, filtered by artifactType.
func (s *Server) referrers(w http.ResponseWriter, r *http.Request, path string, d store.Digest) error {
	refs, err := s.manifests.Referrers(r.Context(), path, d)
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
