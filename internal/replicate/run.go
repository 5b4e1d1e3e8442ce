package replicate

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-registry/berth/store"
)

// Target is the hosted repository a rule copies into (server.ReplicaTarget).
// Images are named as in the source; the target adds the rule's prefix.
type Target interface {
	HasManifest(ctx context.Context, image string, d store.Digest) (bool, error)
	// TagDigest is the digest tag points at (zero when there is no such
	// tag).
	TagDigest(ctx context.Context, image, tag string) (store.Digest, error)
	Tags(ctx context.Context, image string) ([]string, error)
	// Images lists the images the target holds (for mirrored deletions).
	Images(ctx context.Context) ([]string, error)
	// HasBlob reports whether image holds blob d.
	HasBlob(ctx context.Context, image string, d store.Digest) (bool, error)
	// Holds reports whether berth holds blob d for any repository.
	Holds(ctx context.Context, d store.Digest) (bool, error)
	// LinkBlob gives image blob d when berth holds it for any repository
	// (false: it must be fetched).
	LinkBlob(ctx context.Context, image string, d store.Digest) (bool, error)
	// PutBlob stores r as blob d of size bytes for image: a body of
	// another digest or size is refused and nothing is kept.
	PutBlob(ctx context.Context, image string, d store.Digest, size int64, r io.Reader) error
	// PutManifest stores a manifest whose blobs and children are in place
	// (partial: an index some of whose children were left out by the
	// rule's platforms).
	PutManifest(ctx context.Context, image string, d store.Digest, mediaType string, body []byte, partial bool) error
	Tag(ctx context.Context, image, tag string, d store.Digest) error
	DeleteTag(ctx context.Context, image, tag string) error
}

// Event reports progress of a run, one per object, as prefetch does.
type Event struct {
	Rule   string `json:"rule"`
	Image  string `json:"image,omitempty"`
	Tag    string `json:"tag,omitempty"`
	Digest string `json:"digest,omitempty"`
	// Kind: repository (its tag list was read), blob (copied), linked
	// (held for another repository), manifest, tag (moved or made),
	// unchanged, deleted, error, would (dry run: a blob that would be
	// fetched, or with Tag a tag that would be made or moved), done.
	Kind       string  `json:"kind"`
	Bytes      int64   `json:"bytes,omitempty"`
	DoneBytes  int64   `json:"done_bytes"`
	TotalBytes int64   `json:"total_bytes"`
	Error      string  `json:"error,omitempty"`
	Report     *Report `json:"report,omitempty"` // on done
}

// Report is what a run did.
type Report struct {
	Rule         string    `json:"rule"`
	DryRun       bool      `json:"dry_run,omitempty"`
	Started      time.Time `json:"started"`
	Took         string    `json:"took"`
	Repositories int       `json:"repositories"`
	Tags         int       `json:"tags"`      // tags made or moved (images copied)
	Unchanged    int       `json:"unchanged"` // tags already at the source's digest
	Manifests    int       `json:"manifests"`
	Blobs        int       `json:"blobs"`  // fetched from the source (dry run: each digest once)
	Bytes        int64     `json:"bytes"`  // of those blobs
	Linked       int       `json:"linked"` // held for another repository (or image), linked
	Present      int       `json:"present"`
	Deleted      int       `json:"deleted"`
	Errors       int       `json:"errors"`
	// FirstErrors are the first errors, each naming its repository and
	// tag.
	FirstErrors []string `json:"first_errors,omitempty"`
}

const maxReportedErrors = 20

// run is one pass of a rule.
type run struct {
	rule *Rule
	src  Source
	dst  Target
	emit func(Event)

	mu      sync.Mutex
	report  Report
	planned map[store.Digest]bool // blobs a dry run counted
	done    atomic.Int64
	total   atomic.Int64
}

// Run copies what rule chooses from src into dst; emit (may be nil) gets
// an event per object. Errors of one repository or tag are counted and
// reported, and the run goes on; the returned error is for a run that
// could not start (the catalog unreadable) or was cancelled.
func Run(ctx context.Context, rule Rule, src Source, dst Target, emit func(Event)) (Report, error) {
	if emit == nil {
		emit = func(Event) {}
	}
	if err := rule.Check(); err != nil {
		return Report{}, err
	}
	if rule.Concurrency == 0 {
		rule.Concurrency = 4
	}
	r := &run{rule: &rule, src: src, dst: dst, emit: emit, planned: map[store.Digest]bool{},
		report: Report{Rule: rule.Name, DryRun: rule.DryRun, Started: time.Now()}}
	repos, err := r.repositories(ctx)
	if err != nil {
		return r.finish(), err
	}
	for _, repo := range repos {
		if ctx.Err() != nil {
			break
		}
		r.repository(ctx, repo)
	}
	if rule.Delete && ctx.Err() == nil {
		r.deleteGone(ctx, repos)
	}
	rep := r.finish()
	emit(Event{Rule: rule.Name, Kind: "done", DoneBytes: r.done.Load(), TotalBytes: r.total.Load(), Report: &rep})
	return rep, ctx.Err()
}

func (r *run) finish() Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.Took = time.Since(r.report.Started).Round(time.Millisecond).String()
	return r.report
}

// count updates the report under its lock.
func (r *run) count(f func(*Report)) {
	r.mu.Lock()
	f(&r.report)
	r.mu.Unlock()
}

// fail records an error of image (and tag) and reports it.
func (r *run) fail(image, tag string, err error) {
	msg := image
	if tag != "" {
		msg += ":" + tag
	}
	msg += ": " + err.Error()
	r.count(func(rep *Report) {
		rep.Errors++
		if len(rep.FirstErrors) < maxReportedErrors {
			rep.FirstErrors = append(rep.FirstErrors, msg)
		}
	})
	r.emit(Event{Rule: r.rule.Name, Image: image, Tag: tag, Kind: "error", Error: err.Error()})
}

// repositories are the rule's listed names, or the source's catalog
// filtered by its globs.
func (r *run) repositories(ctx context.Context) ([]string, error) {
	var names []string
	if len(r.rule.Repositories) > 0 && !slices.ContainsFunc(r.rule.Repositories, func(p string) bool { return !literal(p) }) {
		names = slices.Clone(r.rule.Repositories)
	} else {
		all, err := catalog(ctx, r.src)
		if err != nil {
			return nil, fmt.Errorf("replication %s: the source's catalog: %w", r.rule.Name, err)
		}
		names = all
	}
	var out []string
	for _, n := range names {
		if !ValidName(n) {
			r.fail(truncate(n, 100), "", fmt.Errorf("not a repository name: skipped"))
			continue
		}
		if r.rule.wantRepository(n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// repository copies the chosen tags of repo, then the tag-scheme
// referrers of what it holds, then (Delete) drops tags the source lost.
func (r *run) repository(ctx context.Context, repo string) {
	all, err := tags(ctx, r.src, repo)
	if err != nil {
		r.fail(repo, "", err)
		return
	}
	r.count(func(rep *Report) { rep.Repositories++ })
	r.emit(Event{Rule: r.rule.Name, Image: repo, Kind: "repository"})
	var valid []string
	for _, t := range all {
		if tagRE.MatchString(t) {
			valid = append(valid, t)
		} else {
			r.fail(repo, truncate(t, 130), fmt.Errorf("not a tag: skipped"))
		}
	}
	copied := map[store.Digest]bool{}
	for _, tag := range r.rule.chooseTags(valid) {
		if ctx.Err() != nil {
			return
		}
		if d, ok := r.tag(ctx, repo, tag); ok {
			copied[d] = true
		}
	}
	if !r.rule.NoReferrers {
		for _, tag := range valid {
			m := referrerTagRE.FindStringSubmatch(tag)
			if m == nil || ctx.Err() != nil {
				continue
			}
			if subject, _ := store.ParseDigest("sha256:" + m[1]); copied[subject] {
				r.tag(ctx, repo, tag)
			}
		}
	}
	if r.rule.Delete && ctx.Err() == nil {
		r.deleteTags(ctx, repo, valid)
	}
}

// tag brings repo:tag to the source's digest: a HEAD when nothing
// changed, else the image (and its referrers) then the tag.
func (r *run) tag(ctx context.Context, repo, tag string) (store.Digest, bool) {
	d, err := headDigest(ctx, r.src, repo, tag)
	if err != nil {
		r.fail(repo, tag, err)
		return d, false
	}
	var m *manifest
	if d.IsZero() { // the source did not say: read it
		if m, err = getManifest(ctx, r.src, repo, tag); err != nil {
			r.fail(repo, tag, err)
			return d, false
		}
		d = m.digest
	}
	have, err := r.dst.TagDigest(ctx, repo, tag)
	if err == nil && have == d {
		var ok bool
		if ok, err = r.dst.HasManifest(ctx, repo, d); ok {
			r.count(func(rep *Report) { rep.Unchanged++ })
			r.emit(Event{Rule: r.rule.Name, Image: repo, Tag: tag, Digest: d.String(), Kind: "unchanged"})
			r.referrers(ctx, repo, d, 0)
			return d, true
		}
	}
	if err != nil {
		r.fail(repo, tag, err)
		return d, false
	}
	if err := r.manifest(ctx, repo, d, m, 0); err != nil {
		r.fail(repo, tag, err)
		return d, false
	}
	if !r.rule.DryRun {
		if err := r.dst.Tag(ctx, repo, tag, d); err != nil {
			r.fail(repo, tag, err)
			return d, false
		}
	}
	r.count(func(rep *Report) { rep.Tags++ })
	kind := "tag"
	if r.rule.DryRun {
		kind = "would"
	}
	r.emit(Event{Rule: r.rule.Name, Image: repo, Tag: tag, Digest: d.String(), Kind: kind})
	r.referrers(ctx, repo, d, 0)
	return d, true
}

// referrers copies the referrers of repo@d the source's referrers API
// lists (tag-scheme ones are tags).
func (r *run) referrers(ctx context.Context, repo string, d store.Digest, depth int) {
	if r.rule.NoReferrers || depth >= maxDepth {
		return
	}
	refs, err := referrers(ctx, r.src, repo, d)
	if err != nil {
		r.fail(repo, d.String(), fmt.Errorf("referrers: %w", err))
		return
	}
	for _, ref := range refs {
		rd, err := store.ParseDigest(ref.Digest)
		if err != nil {
			r.fail(repo, d.String(), fmt.Errorf("referrer %q: %v", truncate(ref.Digest, 80), err))
			continue
		}
		if err := r.manifest(ctx, repo, rd, nil, depth+1); err != nil {
			r.fail(repo, rd.String(), fmt.Errorf("referrer of %s: %w", d, err))
			continue
		}
		r.referrers(ctx, repo, rd, depth+1) // a signature of an SBOM
	}
}
