package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"path"
	"slices"
	"sort"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/store"
)

// Retention is what a hosted repository keeps. A tag stays when it
// matches Keep or the repository's immutable tags, is among the
// KeepNewest newest other tags of its image (by push time), or was pushed
// less than OlderThan ago; the others go. With neither KeepNewest nor
// OlderThan, tags stay. A manifest no tag points at and no remaining
// index names goes UntaggedAfter its push (0: never); a referrer goes with
// its subject. What they held is freed by garbage collection.
type Retention struct {
	KeepNewest    int
	Keep          []string
	OlderThan     time.Duration
	UntaggedAfter time.Duration
	Every         time.Duration // how often it runs (0: when asked)
}

// RetentionReport is what a retention pass removed (or, dry, would).
type RetentionReport struct {
	Repository string   `json:"repository"`
	DryRun     bool     `json:"dry_run,omitempty"`
	Tags       []string `json:"tags"`      // IMAGE:TAG
	Manifests  []string `json:"manifests"` // IMAGE@DIGEST
	Kept       int      `json:"kept"`      // tags that stay
	// Bytes is what the removed manifests and the blobs only they named
	// in the repository hold: at most what garbage collection frees (a
	// blob another repository holds stays).
	Bytes int64  `json:"bytes"`
	Took  string `json:"took"`
}

// RunRetention applies repository name's retention (dry: only says what
// would go).
func RunRetention(ctx context.Context, s *Server, name string, dry bool) (RetentionReport, error) {
	rp := s.repos[name]
	if rp == nil || rp.Kind != KindHosted {
		return RetentionReport{}, errf(codeNameUnknown, "no hosted repository %q", truncate(name, 100))
	}
	if rp.Retention == nil {
		return RetentionReport{}, errf(codeRequestInvalid, "repository %s has no retention rules", name)
	}
	start := time.Now()
	rep := RetentionReport{Repository: name, DryRun: dry, Tags: []string{}, Manifests: []string{}}
	images, err := s.manifests.Repositories(ctx, name+"/")
	if err != nil {
		return rep, err
	}
	for _, p := range images {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if err := retainImage(ctx, s, rp, p, dry, start, &rep); err != nil {
			return rep, fmt.Errorf("retention of %s: %w", p, err)
		}
	}
	rep.Took = time.Since(start).Round(time.Millisecond).String()
	return rep, nil
}

// taggedAt is a tag with what it points at and when it was pushed.
type taggedAt struct {
	tag string
	d   store.Digest
	at  time.Time
}

// retainImage applies rp's retention to one image (its store path p).
func retainImage(ctx context.Context, s *Server, rp *repo, p string, dry bool, now time.Time, rep *RetentionReport) error {
	rt, image := rp.Retention, p[len(rp.Name)+1:]
	names, err := s.manifests.Tags(ctx, p)
	if err != nil {
		return err
	}
	var tags []taggedAt
	for _, t := range names {
		if ti, err := s.manifests.ResolveTag(ctx, p, t); err == nil {
			tags = append(tags, taggedAt{t, ti.Digest, ti.Checked})
		}
	}
	sort.SliceStable(tags, func(i, j int) bool { return tags[i].at.After(tags[j].at) }) // newest first
	live, dropped := map[store.Digest]bool{}, map[store.Digest]bool{}
	newest := 0
	for _, t := range tags {
		keep := rt.KeepNewest == 0 && rt.OlderThan == 0
		if slices.ContainsFunc(rt.Keep, func(g string) bool { ok, _ := path.Match(g, t.tag); return ok }) || immutableRule(rp, t.tag) != "" {
			keep = true
		} else if rt.KeepNewest > 0 && newest < rt.KeepNewest {
			keep, newest = true, newest+1
		} else if rt.OlderThan > 0 && now.Sub(t.at) < rt.OlderThan {
			keep = true
		}
		if keep {
			live[t.d] = true
			rep.Kept++
			continue
		}
		if !dry {
			if err := s.manifests.DeleteTag(ctx, p, t.tag); err != nil && !store.IsNotFound(err) {
				return err
			}
		}
		rep.Tags = append(rep.Tags, image+":"+t.tag)
		dropped[t.d] = true
		if !dry {
			record(s, ctx, audit.Event{Action: audit.Retention, Repository: rp.Name, Image: image, Tag: t.tag, Digest: t.d.String(), Detail: "tag removed by the repository's retention rules"})
		}
	}
	return retainManifests(ctx, s, rp, p, image, live, dropped, dry, now, rep)
}

// retainManifests removes the manifests of an image that nothing keeps:
// live are those its remaining tags point at. Kept too are what a kept
// manifest names (an index's children), referrers of a kept subject, and
// other untagged manifests younger than UntaggedAfter (with 0, any age);
// a manifest whose last tags this pass removed (dropped) goes with them,
// and with it its children and referrers.
func retainManifests(ctx context.Context, s *Server, rp *repo, p, image string, live, dropped map[store.Digest]bool, dry bool, now time.Time, rep *RetentionReport) error {
	all, err := s.manifests.Manifests(ctx, p)
	if err != nil {
		return err
	}
	byDigest := markLive(all, live, dropped, rp.Retention, now)
	liveBlobs := map[store.Digest]bool{}
	for _, m := range all {
		if live[m.Digest] {
			for _, r := range m.Refs {
				liveBlobs[r] = true
			}
		}
	}
	counted := map[store.Digest]bool{}
	for _, m := range all {
		if live[m.Digest] {
			continue
		}
		if !dry {
			if err := s.manifests.DeleteManifest(ctx, p, m.Digest); err != nil && !store.IsNotFound(err) {
				return err
			}
		}
		rep.Manifests = append(rep.Manifests, image+"@"+m.Digest.String())
		rep.Bytes += m.Size
		for _, r := range m.Refs {
			if _, isManifest := byDigest[r]; !isManifest && !liveBlobs[r] && !counted[r] {
				counted[r] = true
				if bi, err := s.blobs.StatBlob(ctx, r); err == nil {
					rep.Bytes += bi.Size
				}
			}
		}
		if !dry {
			record(s, ctx, audit.Event{Action: audit.Retention, Repository: rp.Name, Image: image, Digest: m.Digest.String(), MediaType: m.MediaType, Size: m.Size,
				Detail: "manifest removed by the repository's retention rules"})
		}
	}
	return nil
}

// RetentionRepositories are the hosted repositories with retention
// rules, and how often each runs (0: when asked).
func RetentionRepositories(s *Server) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, rp := range s.order {
		if rp.Kind == KindHosted && rp.Retention != nil {
			out[rp.Name] = rp.Retention.Every
		}
	}
	return out
}

// adminRetention: POST /admin/retention?repository=&dry_run= (no
// repository: every hosted repository with retention rules); answers a
// list of RetentionReports.
func adminRetention(s *Server) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		q := r.URL.Query()
		dry := q.Get("dry_run") != ""
		names := []string{q.Get("repository")}
		if names[0] == "" {
			names = slices.Sorted(maps.Keys(RetentionRepositories(s)))
			if len(names) == 0 {
				return errf(codeRequestInvalid, "no hosted repository of this berth has retention rules")
			}
		}
		reps := []RetentionReport{}
		for _, name := range names {
			rep, err := RunRetention(r.Context(), s, name, dry)
			if err != nil {
				return err
			}
			record(s, r.Context(), audit.Event{Action: audit.Admin, User: adminUser, Repository: rep.Repository, Size: rep.Bytes,
				Detail: fmt.Sprintf("retention (dry run %t): %d tags, %d manifests", dry, len(rep.Tags), len(rep.Manifests))})
			s.log.Info("retention asked by admin", "repository", rep.Repository, "dry_run", dry, "tags", len(rep.Tags), "manifests", len(rep.Manifests), "bytes", rep.Bytes, "took", rep.Took)
			reps = append(reps, rep)
		}
		return writeJSON(w, r, reps)
	}
}

// Retention asks the running berth to apply repository's retention
// ("": every repository that has rules).
func (a AdminClient) Retention(ctx context.Context, repository string, dry bool) ([]RetentionReport, error) {
	q := url.Values{"repository": {repository}}
	if dry {
		q.Set("dry_run", "1")
	}
	var reps []RetentionReport
	resp, err := a.do(ctx, http.MethodPost, "/admin/retention?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(&reps); err != nil {
		return nil, fmt.Errorf("reading the running berth's answer: %w", err)
	}
	return reps, nil
}

// markLive adds to live the manifests of all that stay: those on their
// own (not a child, not a referrer of a subject here) that are young or
// never tagged with UntaggedAfter 0 and not dropped, then what live ones
// name and the referrers of live subjects. It returns all by digest.
func markLive(all []store.ManifestInfo, live, dropped map[store.Digest]bool, rt *Retention, now time.Time) map[store.Digest]store.ManifestInfo {
	byDigest, child := map[store.Digest]store.ManifestInfo{}, map[store.Digest]bool{}
	for _, m := range all {
		byDigest[m.Digest] = m
	}
	for _, m := range all {
		for _, r := range m.Refs {
			if _, isManifest := byDigest[r]; isManifest {
				child[r] = true
			}
		}
	}
	// A manifest stands on its own unless it is a child (of an index)
	// or a referrer (of a subject here): those live by their parent.
	for _, m := range all {
		subject, _ := store.ParseDigest(m.Subject)
		_, hasSubject := byDigest[subject]
		young := rt.UntaggedAfter == 0 || now.Sub(m.Created) < rt.UntaggedAfter
		if !dropped[m.Digest] && young && !child[m.Digest] && !hasSubject {
			live[m.Digest] = true
		}
	}
	// What a live manifest names, and referrers of live subjects, live
	// too: repeat until nothing changes (an index's children's
	// signatures).
	for changed := true; changed; {
		changed = false
		for _, m := range all {
			subject, _ := store.ParseDigest(m.Subject)
			if !live[m.Digest] && m.Subject != "" && live[subject] {
				live[m.Digest], changed = true, true
			}
			if !live[m.Digest] {
				continue
			}
			for _, r := range m.Refs {
				if _, isManifest := byDigest[r]; isManifest && !live[r] {
					live[r], changed = true, true
				}
			}
		}
	}
	return byDigest
}
