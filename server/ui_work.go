package server

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/store"
)

// The pages to work in: search across repositories, pull commands, and
// for an admin user the actions (delete a hosted tag, prefetch an image,
// collect garbage), each behind a confirmation page whose form carries a
// token only that page gives that user for that action (no other site
// can make a signed-in browser act), checked with the Origin.

// maxSearchResults bounds a search page.
const maxSearchResults = 200

// uiSearch: GET /ui/search?q=, the images whose name contains q in the
// repositories the reader may see.
func uiSearch(s *Server) uiPageFunc {
	return func(r *http.Request, p principal) (string, map[string]any, error) {
		q := strings.ToLower(strings.TrimSpace(r.URL.Query().Get("q")))
		if len(q) > 100 {
			q = q[:100]
		}
		type hit struct{ Repo, Image string }
		var hits []hit
		more := false
		if q != "" {
			paths, err := s.index.Repositories(r.Context(), "")
			if err != nil {
				return "", nil, err
			}
			for _, path := range paths {
				name, image, _ := strings.Cut(path, "/")
				rp := s.repos[name]
				if rp == nil || !visible(p, rp) || !strings.Contains(strings.ToLower(path), q) || !allowed(p, rp, image, actionPull) {
					continue
				}
				if len(hits) == maxSearchResults {
					more = true
					break
				}
				hits = append(hits, hit{name, image})
			}
		}
		return "search", map[string]any{"Title": "search", "Q": q, "Hits": hits, "More": more, "Max": maxSearchResults}, nil
	}
}

// pullCommands are copy-ready pulls of ref (HOST/REPOSITORY/IMAGE:TAG)
// for each client.
func pullCommands(ref string) []string {
	return []string{"docker pull " + ref, "podman pull " + ref, "crictl pull " + ref, "crane pull --insecure " + ref + " image.tar"}
}

// uiAction is an action of the admin pages.
type uiAction struct {
	Kind             string // delete-tag, gc, prefetch
	Repo, Name, Tag  string // delete-tag
	Image            string // prefetch
	Question, Target string // what the confirmation page asks
}

// actionFrom reads an action from a request's form or query.
func actionFrom(r *http.Request) (uiAction, error) {
	a := uiAction{Kind: r.FormValue("action"), Repo: r.FormValue("repo"), Name: r.FormValue("name"), Tag: r.FormValue("tag"), Image: strings.TrimSpace(r.FormValue("image"))}
	switch a.Kind {
	case "delete-tag":
		if validateName(a.Name) != nil || !validTag(a.Tag) {
			return a, errf(codeRequestInvalid, "want a repository, an image name and a tag")
		}
		a.Target = a.Repo + "/" + a.Name + ":" + a.Tag
		a.Question = "Delete the tag " + a.Target + "? The image stays if another tag or an index names it; garbage collection frees the rest."
	case "gc":
		a.Target, a.Question = "gc", "Collect garbage now: delete the blobs no manifest names (those younger than the grace period stay)?"
	case "prefetch":
		if _, _, err := ParseImageRef(a.Image); err != nil || len(a.Image) > 300 {
			return a, errf(codeRequestInvalid, "want an image such as library/nginx:1.27")
		}
		a.Target, a.Question = a.Image, "Prefetch "+a.Image+" into the cache (its layers cross the upstream link now)?"
	default:
		return a, errf(codeRequestInvalid, "no such action")
	}
	return a, nil
}

func actionToken(user string, a uiAction) string {
	m := hmac.New(sha256.New, uiKey)
	m.Write([]byte("action\x00" + user + "\x00" + a.Kind + "\x00" + a.Target))
	return hex.EncodeToString(m.Sum(nil))
}

// uiConfirm: GET /ui/confirm?action=..., the page that asks before an
// admin action, with its token.
func uiConfirm(s *Server) uiPageFunc {
	return func(r *http.Request, p principal) (string, map[string]any, error) {
		if p.user == nil || !p.user.Admin {
			return "", nil, errf(codeDenied, "actions need an admin user (admin = true in its [[user]]): sign in at /ui/login")
		}
		a, err := actionFrom(r)
		if err != nil {
			return "", nil, err
		}
		return "confirm", map[string]any{"Title": "confirm", "A": a, "Token": actionToken(p.name(), a)}, nil
	}
}

// uiDo: POST /ui/action, a confirmed admin action.
func uiDo(s *Server) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := s.auth.authenticate(r)
		if err != nil {
			s.writeError(w, r, s.loginFailed(r, err, errWrongCredentials), route{}, formatText)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
		a, aerr := actionFrom(r)
		switch origin := r.Header.Get("Origin"); {
		case p.user == nil || !p.user.Admin:
			s.writeError(w, r, errf(codeDenied, "actions need an admin user (admin = true in its [[user]])"), route{}, formatText)
			return
		case aerr != nil:
			s.writeError(w, r, aerr, route{}, formatText)
			return
		case origin != "" && !sameOrigin(origin, r.Host),
			!hmac.Equal([]byte(r.PostFormValue("token")), []byte(actionToken(p.name(), a))):
			s.writeError(w, r, errf(codeDenied, "this action did not come from berth's own confirmation page"), route{}, formatText)
			return
		}
		ctx := context.WithValue(r.Context(), infoKey{}, &reqInfo{principal: p, client: clientAddr(r)})
		msg, err := doAction(ctx, s, p, a)
		if err != nil {
			s.writeError(w, r, err, route{}, formatText)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		uiTemplates.ExecuteTemplate(w, "done", map[string]any{"Title": "done", "User": p.name(), "Message": msg, "A": a})
	}
}

// doAction carries out a confirmed action and says what it did.
func doAction(ctx context.Context, s *Server, p principal, a uiAction) (string, error) {
	by := p.name() + " (status page)"
	switch a.Kind {
	case "delete-tag":
		rp := s.repos[a.Repo]
		if rp == nil || rp.Kind != KindHosted || !visible(p, rp) {
			return "", errf(codeNameUnknown, "no hosted repository %q", truncate(a.Repo, 100))
		}
		path := rp.Name + "/" + a.Name
		if err := checkTagDelete(ctx, s, rp, path, a.Tag, store.Digest{}); err != nil {
			return "", err
		}
		if err := s.manifests.DeleteTag(ctx, path, a.Tag); err != nil {
			return "", err
		}
		record(s, ctx, audit.Event{Action: audit.Delete, User: by, Repository: rp.Name, Image: a.Name, Tag: a.Tag})
		return "Deleted the tag " + a.Target + ".", nil
	case "gc":
		res, err := runningOps{s}.GC(ctx, GCRequest{Grace: -1})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("Garbage collection deleted %d blobs (%s); %d younger than the grace period %s stay.", res.Blobs, humanBytes(float64(res.Bytes)), res.Kept, res.Grace), nil
	case "prefetch":
		record(s, ctx, audit.Event{Action: audit.Admin, User: by, Image: a.Image, Detail: "prefetch"})
		start := time.Now()
		var bytes int64
		err := s.Prefetch(ctx, s.opts.DefaultRepository, a.Image, PrefetchOptions{}, func(ev PrefetchEvent) {
			if ev.Kind == "done" {
				bytes = ev.DoneBytes
			}
		})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("Prefetched %s: %s in %s.", a.Image, humanBytes(float64(bytes)), time.Since(start).Round(time.Millisecond)), nil
	}
	return "", errf(codeRequestInvalid, "no such action")
}

// page is a slice of a long list: 100 entries a page.
type page struct {
	From, To, N, Number, Pages int
	Prev, Next                 int // 0: none
}

const pageSize = 100

// pageOf reads ?page= (from 1) for a list of n.
func pageOf(r *http.Request, n int) page {
	pg := page{N: n, Number: 1, Pages: max(1, (n+pageSize-1)/pageSize)}
	fmt.Sscanf(r.URL.Query().Get("page"), "%d", &pg.Number)
	pg.Number = min(max(pg.Number, 1), pg.Pages)
	pg.From, pg.To = (pg.Number-1)*pageSize, min(pg.Number*pageSize, n)
	if pg.Number > 1 {
		pg.Prev = pg.Number - 1
	}
	if pg.Number < pg.Pages {
		pg.Next = pg.Number + 1
	}
	return pg
}

// tagDetails are what the image page says of a tag's manifest m besides
// its size: the platforms of an index, its referrers (signatures, SBOMs)
// and the verdict of the repository's policy, when there is one.
func tagDetails(ctx context.Context, s *Server, rp *repo, path, tag string, m store.Manifest) (platforms, referrers, verdict string) {
	if pm, err := parseManifest(m.Body, m.MediaType); err == nil && pm.index != nil {
		var ps []string
		for _, c := range pm.index.Manifests {
			if c.Platform != nil {
				ps = append(ps, c.Platform.OS+"/"+c.Platform.Architecture+strings.TrimRight("/"+c.Platform.Variant, "/"))
			}
		}
		platforms = strings.Join(ps, ", ")
	}
	if refs, err := s.manifests.Referrers(ctx, path, m.Digest); err == nil && len(refs) > 0 {
		kinds := map[string]int{}
		for _, r := range refs {
			k := r.ArtifactType
			if k == "" {
				k = r.MediaType
			}
			kinds[k]++
		}
		var parts []string
		for k, n := range kinds {
			parts = append(parts, fmt.Sprintf("%d × %s", n, k))
		}
		slices.Sort(parts)
		referrers = strings.Join(parts, ", ")
	}
	if g, ok := rp.impl.(*gate); ok {
		if p := g.cur.Load(); p != nil {
			verdict = pageVerdict(ctx, s, p, path[len(rp.Name)+1:], tag, m.Digest.String())
		}
	}
	return platforms, referrers, verdict
}

// pageVerdict is what the image page says of policy p for a digest: what
// berth remembered of it (a denied tag, an index let through), else what
// the rules say by name, tag and digest (signatures and age are weighed
// at a pull; berth policy test weighs them now).
func pageVerdict(ctx context.Context, s *Server, p *gatePolicy, image, tag, d string) string {
	if v, ok, err := s.verdicts.GetVerdict(ctx, p.key(d)); err == nil && ok && (v.Decision == string(policy.Allow) || v.Decision == string(policy.Deny)) {
		out := fmt.Sprintf("%s (policy %s, rule %s)", v.Decision, p.Name, v.Rule)
		if v.Decision == string(policy.Deny) && v.Reason != "" {
			out += ": " + v.Reason
		}
		return out
	}
	v := p.Decide(policy.Subject{Image: image, Digest: d, Tags: []string{tag}, Approved: true}, time.Now())
	out := fmt.Sprintf("%s by its rules (policy %s, rule %s)", v.Decision, p.Name, v.Rule)
	if v.Decision == policy.Deny {
		out += ": " + v.Reason
	}
	if p.RequireSignature || p.MinAge > 0 {
		out += "; its signatures and age are weighed at a pull (berth policy test)"
	}
	return out
}
