package server

import (
	"context"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/berth-registry/berth/store"
)

// flatten lists the proxy and hosted repositories of group g in pull
// order, nested groups expanded, each once. The groups were validated
// (ValidateRepositories): members exist and form no cycle.
func flatten(repos map[string]*repo, g *repo) []*repo {
	var out []*repo
	for _, name := range g.Members {
		m := repos[name]
		add := []*repo{m}
		if len(m.Members) > 0 {
			add = flatten(repos, m)
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
func memberImage(m *repo, image string) imageRef {
	if m.DockerHub && !strings.Contains(image, "/") {
		image = "library/" + image
	}
	return m.image(image)
}

// serve answers a request to a group: pulls try the members in order;
// pushes and other writes go to the push_to member.
func (g *group) serve(w http.ResponseWriter, r *http.Request, img imageRef, rt route) error {
	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	if !read || rt.kind == routeUploads || rt.kind == routeUpload {
		if g.pushTo == nil {
			return errf(codeUnsupported, "group %q has no push_to repository; push to a hosted repository", g.Name)
		}
		infoOf(r.Context()).repo = g.pushTo.Name
		return g.pushTo.impl.serve(w, r, g.pushTo.image(img.name), rt)
	}
	switch rt.kind {
	case routeManifest:
		return g.miss(r, img, rt, answerManifest(w, r, g.impl, img, rt))
	case routeBlob:
		return g.miss(r, img, rt, g.blob(w, r, img, rt.digest))
	case routeTags:
		return g.miss(r, img, rt, serveTags(w, r, g, img, rt.name))
	case routeReferrers:
		return serveReferrers(w, r, g, img, rt.digest)
	}
	return errf(codeNotFound, "%s is not served by groups", rt.kind)
}

// miss turns a miss of an anonymous client into the auth challenge when
// the group has members it may not read, so that the client logs in and
// asks again (as a registry does for a private repository). Every such
// miss gets the challenge, so it reveals nothing about what exists.
func (g *group) miss(r *http.Request, img imageRef, rt route, err error) error {
	p := infoOf(r.Context()).principal
	if err == nil || p.user != nil {
		return err
	}
	if re, _ := registryError(err, rt); re.Code.status != http.StatusNotFound {
		return err
	}
	if len(g.readable(r.Context(), img)) < len(g.members) {
		return g.s.challenge(r, rt.name, actionPull, "")
	}
	return err
}

// readable are the members of g the request's principal may read the
// image through (anonymous clients: members that allow anonymous pulls).
func (g *group) readable(ctx context.Context, img imageRef) []*repo {
	p := infoOf(ctx).principal
	out := make([]*repo, 0, len(g.members))
	for _, m := range g.members {
		if memberReadable(p, g.repo, m, img.name) {
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

// manifest: the first member that has the manifest answers; the member
// is remembered for the image's blobs.
func (g *group) manifest(ctx context.Context, img imageRef, rt route, head bool) (manifestAnswer, error) {
	var tried []memberTry
	for _, m := range g.readable(ctx, img) {
		a, err := m.impl.manifest(ctx, memberImage(m, img.name), rt, head)
		if err != nil {
			if !memberMiss(err, rt) {
				return manifestAnswer{}, err
			}
			tried = append(tried, memberTry{m.Name, tryResult(err, rt)})
			continue
		}
		g.answered.Add(img.name, m)
		infoOf(ctx).repo = g.Name
		return a, nil
	}
	return manifestAnswer{}, errf(codeManifestUnknown, "manifest %s:%s not found in group %q", img.name, rt.ref, g.Name).withDetail(map[string]any{"tried": tried})
}

// served tells the member that found the image's manifest.
func (g *group) served(img imageRef, a manifestAnswer) {
	if m, _ := g.answered.Get(img.name); m != nil {
		m.impl.served(memberImage(m, img.name), a)
	}
}

// blobOrder is the order a group asks its members for the image's blobs:
// the member that served its manifest first, then the others.
func (g *group) blobOrder(ctx context.Context, img imageRef) []*repo {
	order := g.readable(ctx, img)
	if first, _ := g.answered.Get(img.name); first != nil && slices.Contains(order, first) {
		order = append([]*repo{first}, slices.DeleteFunc(slices.Clone(order), func(m *repo) bool { return m == first })...)
	}
	return order
}

// blob asks the members in blobOrder.
func (g *group) blob(w http.ResponseWriter, r *http.Request, img imageRef, d store.Digest) error {
	rt := route{kind: routeBlob, name: img.name, ref: d.String(), digest: d}
	var tried []memberTry
	for _, m := range g.blobOrder(r.Context(), img) {
		err := m.impl.blob(w, r, memberImage(m, img.name), d)
		if err == nil || !memberMiss(err, rt) {
			return err
		}
		tried = append(tried, memberTry{m.Name, tryResult(err, rt)})
	}
	return errf(codeBlobUnknown, "blob %s not found in group %q", d, g.Name).withDetail(map[string]any{"tried": tried})
}

// tags merges the members' tags (deduplicated, sorted, paginated by q).
func (g *group) tags(ctx context.Context, img imageRef, q url.Values) ([]string, bool, error) {
	rt := route{kind: routeTags, name: img.name}
	set := map[string]bool{}
	found := false
	for _, m := range g.readable(ctx, img) {
		tags, _, err := m.impl.tags(ctx, memberImage(m, img.name), nil)
		if err != nil {
			if memberMiss(err, rt) {
				continue
			}
			return nil, false, err
		}
		found = true
		for _, t := range tags {
			set[t] = true
		}
	}
	if !found {
		return nil, false, errf(codeNameUnknown, "repository %s unknown in group %q", img.name, g.Name)
	}
	all := slices.Sorted(maps.Keys(set))
	page, next, err := paginate(all, q)
	return page, next != "", err
}

// referrers merges the referrers its members hold (a member whose
// upstream has none, or no API, or is down, is skipped).
func (g *group) referrers(ctx context.Context, img imageRef, d store.Digest, at string) ([]store.Referrer, error) {
	var all []store.Referrer
	seen := map[string]bool{}
	rt := route{kind: routeReferrers, name: img.name, ref: d.String(), digest: d}
	for _, m := range g.readable(ctx, img) {
		refs, err := m.impl.referrers(ctx, memberImage(m, img.name), d, at)
		if err != nil && memberMiss(err, rt) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, ref := range refs {
			if !seen[ref.Digest] {
				seen[ref.Digest] = true
				all = append(all, ref)
			}
		}
	}
	return all, nil
}

// cacheBlob caches blob d through the first member in blobOrder that has
// it.
func (g *group) cacheBlob(ctx context.Context, img imageRef, d store.Digest) error {
	rt := route{kind: routeBlob, name: img.name, ref: d.String(), digest: d}
	err := error(errf(codeBlobUnknown, "blob %s not found in group %q", d, g.Name))
	for _, m := range g.blobOrder(ctx, img) {
		if err = m.impl.cacheBlob(ctx, memberImage(m, img.name), d); err == nil || !memberMiss(err, rt) {
			return err
		}
	}
	return err
}
