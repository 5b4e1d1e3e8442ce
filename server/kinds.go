package server

import (
	"context"
	"net/http"
	"net/url"

	"github.com/berth-registry/berth/internal/lru"
	"github.com/berth-registry/berth/store"
)

// repository is what a configured repository does with the registry API.
// proxy, hosted and group implement it; dispatch ends in one call of
// serve, and a group asks its members through the reads below.
type repository interface {
	// serve answers one /v2 request routed to the repository, after
	// routing and authorization.
	serve(w http.ResponseWriter, r *http.Request, img imageRef, rt route) error
	// manifest finds the manifest rt names (a tag or a digest), counting
	// the cache result. head: the client asked with HEAD (a proxy relays a
	// HEAD by digest).
	manifest(ctx context.Context, img imageRef, rt route, head bool) (manifestAnswer, error)
	// served is told that a manifest it found goes out (a proxy starts
	// its eager layers): only once any policy has let it.
	served(img imageRef, a manifestAnswer)
	// blob sends blob d (GET or HEAD, ranges included).
	blob(w http.ResponseWriter, r *http.Request, img imageRef, d store.Digest) error
	// tags lists the image's tags: a page of them after q's last, at most
	// q's n (q nil: all of them); more says that a next page may exist.
	tags(ctx context.Context, img imageRef, q url.Values) (tags []string, more bool, err error)
	// referrers lists the manifests whose subject is d, of artifactType
	// when not "".
	referrers(ctx context.Context, img imageRef, d store.Digest, artifactType string) ([]store.Referrer, error)
	// cacheBlob makes sure blob d is on disk for the image (prefetch):
	// fetched when a proxy has not cached it, or an error.
	cacheBlob(ctx context.Context, img imageRef, d store.Digest) error
}

// imageRef is an image in a repository: the repository and the name the
// client asked for within it ("library/alpine" in "hub").
type imageRef struct {
	rp   *repo
	name string
}

// path is where the image lives in the store: "<repository>/<name>".
func (i imageRef) path() string { return i.rp.Name + "/" + i.name }

// at is the key of ref (a tag or a digest) of the image: "<path>@<ref>".
func (i imageRef) at(ref string) string { return i.path() + "@" + ref }

// label is the repository's name, the metrics label the image counts
// under.
func (i imageRef) label() string { return i.rp.Name }

// image returns the reference to name in rp.
func (rp *repo) image(name string) imageRef { return imageRef{rp: rp, name: name} }

// A proxy repository serves an upstream registry through the cache.
type proxy struct {
	*repo
	s *Server
}

// A hosted repository stores what clients push.
type hosted struct {
	*repo
	s *Server
}

// A group serves its members as one: pulls try them in order, pushes go
// to its push_to member.
type group struct {
	*repo
	s        *Server
	members  []*repo                   // proxy and hosted members, nested groups flattened, in order
	answered *lru.Cache[string, *repo] // image name → the member that answered its manifest
	pushTo   *repo                     // the hosted member pushes go to, or nil
}

// newKind makes what rp does, by its kind: the one place a kind is told
// by name. A group's members are set once every repository exists
// (linkGroups).
func (s *Server) newKind(rp *repo) repository {
	switch rp.Kind {
	case KindProxy:
		return &proxy{repo: rp, s: s}
	case KindHosted:
		return &hosted{repo: rp, s: s}
	default: // KindGroup (ValidateRepositories allows no other)
		return &group{repo: rp, s: s}
	}
}

// linkGroups gives each group its members, flattened, and its push_to.
func (s *Server) linkGroups() {
	for _, rp := range s.order {
		if g := rp.asGroup(); g != nil {
			g.members = flatten(s.repos, rp)
			g.answered = lru.New[string, *repo](100_000, 0).WithCost(cacheBytes, lru.StringBytes[*repo])
			g.pushTo = s.repos[rp.PushTo]
		}
	}
}

// asProxy and asGroup return rp as its kind, or nil when it is
// another.
func (rp *repo) asProxy() *proxy { p, _ := rp.kind.(*proxy); return p }
func (rp *repo) asGroup() *group { g, _ := rp.kind.(*group); return g }

// members are a group's proxy and hosted members in pull order (nil for
// another kind).
func (rp *repo) members() []*repo {
	if g := rp.asGroup(); g != nil {
		return g.members
	}
	return nil
}

var (
	_ repository = (*proxy)(nil)
	_ repository = (*hosted)(nil)
	_ repository = (*group)(nil)
)
