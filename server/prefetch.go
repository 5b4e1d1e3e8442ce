package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/berth-registry/berth/internal/audit"

	"github.com/berth-registry/berth/store"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// PrefetchEvent reports progress of a prefetch.
type PrefetchEvent struct {
	Image      string `json:"image"`
	Digest     string `json:"digest,omitempty"`
	Kind       string `json:"kind"` // manifest, blob, done, error
	Bytes      int64  `json:"bytes"`
	DoneBytes  int64  `json:"done_bytes"`
	TotalBytes int64  `json:"total_bytes"`
	Error      string `json:"error,omitempty"`
}

// PrefetchOptions choose the platforms of multi-platform images, and
// whether every tag of the image is fetched.
type PrefetchOptions struct {
	Platforms    []string // "os/arch[/variant]"; empty means linux/amd64
	AllPlatforms bool
	// AllTags fetches every tag the image has (its tag list, through the
	// repository it resolves to): a read replica of a hosted repository keeps them warm.
	AllTags bool
}

// ParseImageRef splits "name[:tag][@digest]" into a name and a reference
// (digest over tag; "latest" when neither).
func ParseImageRef(ref string) (name, reference string, err error) {
	name = ref
	if i := strings.LastIndex(name, "@"); i >= 0 {
		name, reference = name[:i], name[i+1:]
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		if reference == "" {
			reference = name[i+1:]
		}
		name = name[:i]
	}
	if reference == "" {
		reference = "latest"
	}
	if err := validateName(name); err != nil {
		return "", "", fmt.Errorf("image %q: %v", ref, err)
	}
	return name, reference, nil
}

// Prefetch pulls image (as a client of listener would name it) into the
// cache: the manifest, the chosen platforms' manifests and every blob,
// through the repository it resolves to, as a client pull would go (and
// coalesced with them), under berth's own principal: not counted as a
// client's cache result. progress (may be nil) gets an event per object.
func (s *Server) Prefetch(ctx context.Context, listener, image string, opts PrefetchOptions, progress func(PrefetchEvent)) error {
	if progress == nil {
		progress = func(PrefetchEvent) {}
	}
	ctx = context.WithValue(ctx, infoKey{}, &reqInfo{principal: principal{internal: true}})
	run := prefetchRun{s: s, listener: listener, opts: opts, progress: progress}
	if !opts.AllTags {
		return run.one(ctx, image)
	}
	if strings.ContainsAny(image[strings.LastIndex(image, "/")+1:], ":@") {
		return fmt.Errorf("prefetch %s: all tags means an image name without a tag or digest", image)
	}
	if err := validateName(image); err != nil {
		return fmt.Errorf("image %q: %v", image, err)
	}
	tags, err := run.allTags(ctx, image)
	if err != nil {
		return fmt.Errorf("prefetch %s: tag list: %w", image, err)
	}
	var failed []string
	for _, tag := range tags {
		if err := run.one(ctx, image+":"+tag); err != nil {
			if ctx.Err() != nil {
				return err
			}
			progress(PrefetchEvent{Image: image + ":" + tag, Kind: "error", Error: err.Error()})
			failed = append(failed, tag)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("prefetch %s: %d of %d tags failed: %s", image, len(failed), len(tags), strings.Join(failed, ", "))
	}
	return nil
}

// prefetchRun is one Prefetch: for a client of listener, with opts.
type prefetchRun struct {
	s        *Server
	listener string
	opts     PrefetchOptions
	progress func(PrefetchEvent)
}

// resolve resolves name as a client of the listener (a repository) names
// it, without a ?ns=.
func (pr prefetchRun) resolve(ctx context.Context, name string) (*repo, imageRef, error) {
	rp, image, err := pr.s.resolve(ctx, "", listenerScope{repo: pr.listener}, name)
	if err != nil {
		return nil, imageRef{}, err
	}
	return rp, rp.image(image), nil
}

// allTags reads image's whole tag list, page by page (at most 1000
// pages of 1000).
func (pr prefetchRun) allTags(ctx context.Context, image string) ([]string, error) {
	rp, img, err := pr.resolve(ctx, image)
	if err != nil {
		return nil, err
	}
	defer pr.s.hosts.forgetSilentHost(rp)
	var all []string
	q := url.Values{"n": {"1000"}}
	for page := 0; page < 1000; page++ {
		tags, more, err := rp.impl.tags(ctx, img, q)
		if err != nil {
			return nil, err
		}
		all = append(all, tags...)
		if !more || len(tags) == 0 {
			break
		}
		q.Set("last", tags[len(tags)-1])
	}
	return all, nil
}

// one prefetches one image reference.
func (pr prefetchRun) one(ctx context.Context, image string) error {
	name, ref, err := ParseImageRef(image)
	if err != nil {
		return err
	}
	rp, img, err := pr.resolve(ctx, name)
	if err != nil {
		return err
	}
	defer pr.s.hosts.forgetSilentHost(rp)
	manifest := func(reference string) (*parsedManifest, error) {
		rt := route{kind: routeManifest, name: name, ref: reference}
		if d, err := store.ParseDigest(reference); err == nil {
			rt.digest = d
		} else if !validTag(reference) {
			return nil, fmt.Errorf("prefetch %s: %q is neither a tag nor a digest", image, reference)
		}
		a, err := rp.impl.manifest(ctx, img, rt, false)
		if err != nil {
			return nil, fmt.Errorf("prefetch %s: %s: %w", image, reference, err)
		}
		rp.impl.served(img, a)
		pm, err := parseManifest(a.m.Body, a.m.MediaType)
		if err != nil {
			return nil, fmt.Errorf("prefetch %s: %s: %w", image, reference, err)
		}
		pr.progress(PrefetchEvent{Image: image, Digest: reference, Kind: "manifest", Bytes: int64(len(a.m.Body))})
		return pm, nil
	}
	top, err := manifest(ref)
	if err != nil {
		return err
	}
	images, err := choosePlatforms(image, top, pr.opts, manifest)
	if err != nil {
		return err
	}
	return pr.blobs(ctx, rp, img, image, prefetchBlobList(images))
}

// choosePlatforms returns the image manifests of top to fetch: top itself,
// or for an index the children of opts' platforms (linux/amd64 when none
// is named), read with manifest.
func choosePlatforms(image string, top *parsedManifest, opts PrefetchOptions, manifest func(string) (*parsedManifest, error)) ([]*parsedManifest, error) {
	if top.index == nil {
		return []*parsedManifest{top}, nil
	}
	want := opts.Platforms
	if len(want) == 0 {
		want = []string{"linux/amd64"}
	}
	var images []*parsedManifest
	for _, c := range top.index.Manifests {
		if p := c.Platform; p != nil {
			plat := p.OS + "/" + p.Architecture
			if !opts.AllPlatforms && !slices.Contains(want, plat) && !slices.Contains(want, plat+"/"+p.Variant) {
				continue
			}
		} else if !opts.AllPlatforms {
			continue
		}
		child, err := manifest(c.Digest.String())
		if err != nil {
			return nil, err
		}
		images = append(images, child)
	}
	if len(images) == 0 {
		return nil, fmt.Errorf("%s: no manifest for platform %s", image, strings.Join(want, ","))
	}
	return images, nil
}

// prefetchBlobList is the configs and distributable layers of images.
func prefetchBlobList(images []*parsedManifest) []v1.Descriptor {
	var blobs []v1.Descriptor
	for _, pm := range images {
		if pm.image == nil {
			continue
		}
		blobs = append(blobs, pm.image.Config)
		for _, l := range pm.image.Layers {
			if !nonDistributable(l.MediaType) {
				blobs = append(blobs, l)
			}
		}
	}
	return blobs
}

// blobs caches blobs through rp, four at a time.
func (pr prefetchRun) blobs(ctx context.Context, rp *repo, img imageRef, image string, blobs []v1.Descriptor) error {
	s, progress := pr.s, pr.progress
	var done, total atomic.Int64
	for _, b := range blobs {
		total.Add(b.Size)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	errs := make(chan error, len(blobs))
	for _, b := range blobs {
		d, err := store.ParseDigest(b.Digest.String())
		if err != nil {
			return fmt.Errorf("prefetch %s: blob %q: %w", image, b.Digest, err)
		}
		wg.Add(1)
		s.goSafe("prefetch blob", func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := rp.impl.cacheBlob(ctx, img, d); err != nil {
				errs <- fmt.Errorf("prefetch %s: blob %s: %w", image, d, err)
				return
			}
			done.Add(b.Size)
			progress(PrefetchEvent{Image: image, Digest: d.String(), Kind: "blob", Bytes: b.Size, DoneBytes: done.Load(), TotalBytes: total.Load()})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	progress(PrefetchEvent{Image: image, Kind: "done", DoneBytes: done.Load(), TotalBytes: total.Load()})
	return nil
}

// adminPrefetch: POST /admin/prefetch (admin listener) with a
// PrefetchRequest; streams one JSON PrefetchEvent per line.
func (s *Server) adminPrefetch(listener string) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		var req PrefetchRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || len(req.Images) == 0 {
			return errf(codeRequestInvalid, `want {"images":[...]}`)
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		events := &lineEvents{enc: json.NewEncoder(w), w: w}
		opts := PrefetchOptions{Platforms: req.Platforms, AllPlatforms: req.AllPlatforms, AllTags: req.AllTags}
		for _, img := range req.Images {
			record(s, r.Context(), audit.Event{Action: audit.Admin, User: adminUser, Image: img, Detail: "prefetch"})
			if err := s.Prefetch(r.Context(), listener, img, opts, func(ev PrefetchEvent) { events.send(ev) }); err != nil {
				events.send(PrefetchEvent{Image: img, Kind: "error", Error: err.Error()})
			}
		}
		return nil
	}
}
