package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync"

	"github.com/berth-registry/berth/store"
)

// manifest copies repo@d (read already when m is not nil) with what it
// names: blobs, then the chosen children, then the manifest itself.
func (r *run) manifest(ctx context.Context, repo string, d store.Digest, m *manifest, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%s: manifests nested deeper than %d", d, maxDepth)
	}
	if ok, err := r.dst.HasManifest(ctx, repo, d); err != nil || ok {
		return err
	}
	if m == nil {
		var err error
		if m, err = getManifest(ctx, r.src, repo, d.String()); err != nil {
			return err
		}
	}
	partial := false
	for _, c := range m.parsed.Manifests {
		if p := c.Platform; p != nil && !r.rule.wantPlatform(p.OS, p.Architecture, p.Variant) {
			partial = true
			continue
		}
		cd, err := store.ParseDigest(c.Digest)
		if err != nil {
			return fmt.Errorf("%s: child %q: %v", d, truncate(c.Digest, 80), err)
		}
		if err := r.manifest(ctx, repo, cd, nil, depth+1); err != nil {
			return fmt.Errorf("%s: child %s: %w", d, cd, err)
		}
	}
	if err := r.blobs(ctx, repo, m); err != nil {
		return err
	}
	r.count(func(rep *Report) { rep.Manifests++ })
	if r.rule.DryRun {
		return nil
	}
	if err := r.dst.PutManifest(ctx, repo, d, m.mediaType, m.body, partial); err != nil {
		return err
	}
	r.emit(Event{Rule: r.rule.Name, Image: repo, Digest: d.String(), Kind: "manifest", Bytes: int64(len(m.body))})
	return nil
}

// blobList is the config and distributable layers of an image manifest
// (an index has none), each once.
func (m *manifest) blobList() ([]descriptor, error) {
	var out []descriptor
	seen := map[string]bool{}
	add := func(b descriptor) error {
		if len(b.URLs) > 0 || strings.Contains(b.MediaType, "nondistributable") || strings.Contains(b.MediaType, "foreign") {
			return nil // fetched by clients from its URLs, never pushed
		}
		if _, err := store.ParseDigest(b.Digest); err != nil {
			return fmt.Errorf("%s: blob %q: %v", m.digest, truncate(b.Digest, 80), err)
		}
		if b.Size < 0 {
			return fmt.Errorf("%s: blob %s has a negative size", m.digest, b.Digest)
		}
		if !seen[b.Digest] {
			seen[b.Digest] = true
			out = append(out, b)
		}
		return nil
	}
	if m.parsed.Config != nil {
		if err := add(*m.parsed.Config); err != nil {
			return nil, err
		}
	}
	for _, l := range m.parsed.Layers {
		if err := add(l); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// blobs brings m's blobs into the target, Concurrency at a time: those it
// holds are left, those berth holds elsewhere linked, the rest fetched.
func (r *run) blobs(ctx context.Context, repo string, m *manifest) error {
	list, err := m.blobList()
	if err != nil {
		return err
	}
	var need []descriptor
	for _, b := range list {
		d, _ := store.ParseDigest(b.Digest)
		if ok, err := r.dst.HasBlob(ctx, repo, d); err != nil {
			return err
		} else if ok {
			r.count(func(rep *Report) { rep.Present++ })
			continue
		}
		need = append(need, b)
		r.total.Add(b.Size)
	}
	if r.rule.DryRun {
		return r.would(ctx, repo, need)
	}
	return parallel(ctx, r.rule.Concurrency, need, func(b descriptor) error { return r.blob(ctx, repo, b) })
}

// would reports the blobs of need a run would fetch: each digest once,
// none that berth holds already (it would be linked).
func (r *run) would(ctx context.Context, repo string, need []descriptor) error {
	for _, b := range need {
		d, _ := store.ParseDigest(b.Digest)
		r.mu.Lock()
		seen := r.planned[d]
		r.planned[d] = true
		r.mu.Unlock()
		held, err := r.dst.Holds(ctx, d)
		if err != nil {
			return err
		}
		if seen || held {
			r.count(func(rep *Report) { rep.Linked++ })
			continue
		}
		r.count(func(rep *Report) { rep.Blobs++; rep.Bytes += b.Size })
		r.emit(Event{Rule: r.rule.Name, Image: repo, Digest: b.Digest, Kind: "would", Bytes: b.Size})
	}
	return nil
}

// blob brings one blob: linked when berth holds it, else fetched (a
// second try after a failure mid-body).
func (r *run) blob(ctx context.Context, repo string, b descriptor) error {
	d, _ := store.ParseDigest(b.Digest)
	linked, err := r.dst.LinkBlob(ctx, repo, d)
	if err != nil {
		return err
	}
	if linked {
		r.count(func(rep *Report) { rep.Linked++ })
		r.emit(Event{Rule: r.rule.Name, Image: repo, Digest: b.Digest, Kind: "linked", Bytes: b.Size, DoneBytes: r.done.Add(b.Size), TotalBytes: r.total.Load()})
		return nil
	}
	for attempt := 1; ; attempt++ {
		err = r.fetch(ctx, repo, d, b.Size)
		if err == nil || attempt == 2 || ctx.Err() != nil || errors.Is(err, errBadBlob) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	r.count(func(rep *Report) { rep.Blobs++; rep.Bytes += b.Size })
	r.emit(Event{Rule: r.rule.Name, Image: repo, Digest: b.Digest, Kind: "blob", Bytes: b.Size, DoneBytes: r.done.Add(b.Size), TotalBytes: r.total.Load()})
	return nil
}

// errBadBlob marks a blob the source sent wrong (not retried).
var errBadBlob = errors.New("the source sent a blob that does not match its descriptor")

func (r *run) fetch(ctx context.Context, repo string, d store.Digest, size int64) error {
	resp, err := r.src.Blob(ctx, http.MethodGet, repo, d.String())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.ContentLength >= 0 && resp.ContentLength != size {
		return fmt.Errorf("%w: %d bytes announced, the manifest says %d", errBadBlob, resp.ContentLength, size)
	}
	err = r.dst.PutBlob(ctx, repo, d, size, io.LimitReader(resp.Body, size+1))
	if errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch) {
		return fmt.Errorf("%w: %v", errBadBlob, err)
	}
	return err
}

// parallel runs f on each item, at most n at once; the first error is
// returned after all have ended. A panic in f is an error, not the end of
// the process.
func parallel[T any](ctx context.Context, n int, items []T, f func(T) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, max(n, 1))
	for _, it := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := func() (err error) {
				defer func() {
					if p := recover(); p != nil {
						err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
					}
				}()
				return f(it)
			}()
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

// deleteTags deletes the target's tags of repo that the rule would copy
// but the source no longer has (source is its whole valid tag list).
func (r *run) deleteTags(ctx context.Context, repo string, source []string) {
	held, err := r.dst.Tags(ctx, repo)
	if err != nil {
		if !store.IsNotFound(err) {
			r.fail(repo, "", fmt.Errorf("the target's tags: %w", err))
		}
		return
	}
	for _, t := range held {
		if slices.Contains(source, t) || !r.chosenShape(t) {
			continue
		}
		r.deleteTag(ctx, repo, t)
	}
}

// chosenShape: t passes the rule's tag globs and range (newest N is not
// a reason to delete: an older tag the source still has stays).
func (r *run) chosenShape(t string) bool {
	if referrerTagRE.MatchString(t) {
		return !r.rule.NoReferrers
	}
	rng, _ := parseRange(r.rule.Semver)
	return (len(r.rule.Tags) == 0 || anyGlob(r.rule.Tags, t)) && (rng == nil || rng.holds(t))
}

func (r *run) deleteTag(ctx context.Context, repo, tag string) {
	if !r.rule.DryRun {
		if err := r.dst.DeleteTag(ctx, repo, tag); err != nil {
			r.fail(repo, tag, fmt.Errorf("delete: %w", err))
			return
		}
	}
	r.count(func(rep *Report) { rep.Deleted++ })
	r.emit(Event{Rule: r.rule.Name, Image: repo, Tag: tag, Kind: "deleted"})
}

// deleteGone deletes the tags of images the target holds under the rule
// that the source no longer lists (repos: the source's chosen ones).
func (r *run) deleteGone(ctx context.Context, repos []string) {
	if len(r.rule.Repositories) > 0 && !slices.ContainsFunc(r.rule.Repositories, func(p string) bool { return !literal(p) }) {
		return // a listed repository the source lost is an error above, not a deletion
	}
	held, err := r.dst.Images(ctx)
	if err != nil {
		r.fail(r.rule.To, "", fmt.Errorf("the target's images: %w", err))
		return
	}
	for _, img := range held {
		if ctx.Err() != nil || slices.Contains(repos, img) || !r.rule.wantRepository(img) {
			continue
		}
		r.deleteTags(ctx, img, nil)
	}
}
