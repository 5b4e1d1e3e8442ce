package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

// flatten lists the proxy and hosted repositories of group g in pull
// order, nested groups expanded, each once. The groups were validated
// (ValidateRepositories): members exist and form no cycle.
func (s *Server) flatten(g *repo) []*repo {
	var out []*repo
	for _, name := range g.Members {
		m := s.repos[name]
		add := []*repo{m}
		if m.Kind == KindGroup {
			add = s.flatten(m)
		}
		for _, a := range add {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

// memberImage is how member m names image (Docker Hub proxies add
// library/ to one-segment names).
func memberImage(m *repo, image string) string {
	if m.DockerHub && !strings.Contains(image, "/") {
		return "library/" + image
	}
	return image
}

// serveGroup answers a request to a group: pulls try the members in
// order; pushes and other writes go to the push_to member.
func (s *Server) serveGroup(w http.ResponseWriter, r *http.Request, g *repo, image string, rt route) error {
	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	if !read || rt.kind == routeUploads || rt.kind == routeUpload {
		if g.PushTo == "" {
			return errf(codeUnsupported, "group %q has no push_to repository; push to a hosted repository", g.Name)
		}
		target := s.repos[g.PushTo]
		infoOf(r.Context()).repo = target.Name
		return s.serveHosted(w, r, target, image, rt)
	}
	switch rt.kind {
	case routeManifest:
		return s.groupMiss(r, g, image, rt, s.groupManifest(w, r, g, image, rt))
	case routeBlob:
		return s.groupMiss(r, g, image, rt, s.groupBlob(w, r, g, image, rt))
	case routeTags:
		return s.groupMiss(r, g, image, rt, s.groupTags(w, r, g, image, rt))
	case routeReferrers:
		return s.groupReferrers(w, r, g, image, rt.digest)
	}
	return errf(codeNotFound, "%s is not served by groups", rt.kind)
}

// groupMiss turns a miss of an anonymous client into the auth challenge
// when the group has members it may not read, so that the client logs in
// and asks again (as a registry does for a private repository). Every such
// miss gets the challenge, so it reveals nothing about what exists.
func (s *Server) groupMiss(r *http.Request, g *repo, image string, rt route, err error) error {
	p := infoOf(r.Context()).principal
	if err == nil || p.user != nil {
		return err
	}
	if re, _ := registryError(err, rt); re.Code.status != http.StatusNotFound {
		return err
	}
	if len(s.readableMembers(r, g, image)) < len(g.leaves) {
		return s.challenge(r, rt.name, actionPull, "")
	}
	return err
}

// readableMembers are the members of g the request's principal may read
// image through (anonymous clients: members that allow anonymous pulls).
func (s *Server) readableMembers(r *http.Request, g *repo, image string) []*repo {
	p := infoOf(r.Context()).principal
	out := make([]*repo, 0, len(g.leaves))
	for _, m := range g.leaves {
		if s.memberReadable(p, g, m, image) {
			out = append(out, m)
		}
	}
	return out
}

// memberMiss reports whether err, on route rt, means "try the next
// member": not found there, or its upstream unreachable or refusing.
func memberMiss(err error, rt route) bool {
	re, _ := registryError(err, rt)
	switch re.Code {
	case codeManifestUnknown, codeBlobUnknown, codeNameUnknown, codeUnavailable, codeTooManyRequests, codeDenied:
		return true
	}
	return false
}

type memberTry struct {
	Member string `json:"member"`
	Result string `json:"result"`
}

func tryResult(err error, rt route) string {
	re, _ := registryError(err, rt)
	return re.Code.name
}

// groupManifest: the first member that has the manifest answers; the
// member is remembered for the image's blobs.
func (s *Server) groupManifest(w http.ResponseWriter, r *http.Request, g *repo, image string, rt route) error {
	var tried []memberTry
	for _, m := range s.readableMembers(r, g, image) {
		img := memberImage(m, image)
		var a manifestAnswer
		var err error
		switch m.Kind {
		case KindHosted:
			var man store.Manifest
			man, err = s.hostedManifest(r.Context(), m.Name+"/"+img, rt)
			a = manifestAnswer{m: man}
		case KindProxy:
			a, err = s.proxyManifest(r, m, img, rt)
		}
		if err != nil {
			if !memberMiss(err, rt) {
				return err
			}
			tried = append(tried, memberTry{m.Name, tryResult(err, rt)})
			continue
		}
		g.served.Add(image, m)
		if m.Kind == KindProxy {
			s.eagerLayers(m, img, a.m)
		}
		if m.Kind == KindHosted {
			s.cacheResult(r, m, "manifest", resultHit, "cache")
		}
		infoOf(r.Context()).repo = g.Name
		return a.write(w, r)
	}
	return errf(codeManifestUnknown, "manifest %s:%s not found in group %q", image, rt.ref, g.Name).withDetail(map[string]any{"tried": tried})
}

// groupBlob asks the member that served the image's manifest first, then
// the others in order.
func (s *Server) groupBlob(w http.ResponseWriter, r *http.Request, g *repo, image string, rt route) error {
	d := rt.digest
	order := s.readableMembers(r, g, image)
	if first, _ := g.served.Get(image); first != nil && slices.Contains(order, first) {
		order = append([]*repo{first}, slices.DeleteFunc(slices.Clone(order), func(m *repo) bool { return m == first })...)
	}
	var tried []memberTry
	for _, m := range order {
		img := memberImage(m, image)
		var err error
		switch m.Kind {
		case KindHosted:
			err = s.hostedGetBlob(w, r, m.Name+"/"+img, d)
		case KindProxy:
			err = s.proxyBlob(w, r, m, img, d)
		}
		if err == nil || !memberMiss(err, rt) {
			return err
		}
		tried = append(tried, memberTry{m.Name, tryResult(err, rt)})
	}
	return errf(codeBlobUnknown, "blob %s not found in group %q", d, g.Name).withDetail(map[string]any{"tried": tried})
}

// groupTags merges the members' tags (deduplicated, sorted, paginated).
func (s *Server) groupTags(w http.ResponseWriter, r *http.Request, g *repo, image string, rt route) error {
	clientName := rt.name
	ctx := r.Context()
	set := map[string]bool{}
	found := false
	for _, m := range s.readableMembers(r, g, image) {
		tags, err := s.memberTags(ctx, m, memberImage(m, image))
		if err != nil {
			if memberMiss(err, rt) {
				continue
			}
			return err
		}
		found = true
		for _, t := range tags {
			set[t] = true
		}
	}
	if !found {
		return errf(codeNameUnknown, "repository %s unknown in group %q", clientName, g.Name)
	}
	all := make([]string, 0, len(set))
	for t := range set {
		all = append(all, t)
	}
	slices.Sort(all)
	page, next, err := paginate(all, r.URL.Query())
	if err != nil {
		return err
	}
	if next != "" {
		w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?%s>; rel="next"`, clientName, next))
	}
	return writeTagList(w, r, clientName, page)
}

// memberTags lists a member's tags: a hosted repository's from the store;
// a proxy's from its upstream, or what it cached when that fails.
func (s *Server) memberTags(ctx context.Context, m *repo, image string) ([]string, error) {
	path := m.Name + "/" + image
	if m.Kind == KindHosted {
		tags, err := s.manifests.Tags(ctx, path)
		if err == nil && len(tags) == 0 {
			return nil, errf(codeNameUnknown, "no tags")
		}
		return tags, err
	}
	resp, err := m.Upstream.Tags(ctx, image, nil)
	if err != nil {
		if errors.Is(err, upstream.ErrNotFound) {
			return nil, err
		}
		s.upstreamError(m, err)
		tags, serr := s.manifests.Tags(ctx, path)
		if serr != nil || len(tags) == 0 {
			return nil, errf(codeUnavailable, "upstream unavailable")
		}
		return tags, nil
	}
	defer resp.Body.Close()
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := decodeJSON(resp.Body, &list); err != nil {
		return nil, fmt.Errorf("upstream tag list: %w", err)
	}
	return list.Tags, nil
}

// groupReferrers merges the referrers its hosted members hold.
func (s *Server) groupReferrers(w http.ResponseWriter, r *http.Request, g *repo, image string, d store.Digest) error {
	var all []store.Referrer
	seen := map[string]bool{}
	rt := route{kind: routeReferrers, name: image, ref: d.String(), digest: d}
	for _, m := range s.readableMembers(r, g, image) {
		var refs []store.Referrer
		var err error
		switch m.Kind {
		case KindHosted:
			refs, err = s.manifests.Referrers(r.Context(), m.Name+"/"+memberImage(m, image), d)
		case KindProxy:
			refs, err = s.proxyReferrerList(r, m, memberImage(m, image), d)
			if err != nil && memberMiss(err, rt) {
				continue // this member's upstream has none (or no API), or is down
			}
		}
		if err != nil {
			return err
		}
		for _, ref := range refs {
			if !seen[ref.Digest] {
				seen[ref.Digest] = true
				all = append(all, ref)
			}
		}
	}
	return writeReferrers(w, r, all)
}
