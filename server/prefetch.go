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

	"github.com/berth-registry/berth/upstream"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// internalKey marks a request berth makes to itself (prefetch): it passes
// through the same handler as client pulls, with every right.
type internalKey struct{}

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
	// same handler): a read replica of a hosted repository keeps them warm.
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
// through the same handler as client pulls, so it is coalesced with them
// and counted in the metrics. progress (may be nil) gets an event per
// object.
func (s *Server) Prefetch(ctx context.Context, listener, image string, opts PrefetchOptions, progress func(PrefetchEvent)) error {
	if progress == nil {
		progress = func(PrefetchEvent) {}
	}
	if !opts.AllTags {
		return s.prefetchOne(ctx, listener, image, opts, progress)
	}
	if strings.ContainsAny(image[strings.LastIndex(image, "/")+1:], ":@") {
		return fmt.Errorf("prefetch %s: all tags means an image name without a tag or digest", image)
	}
	if err := validateName(image); err != nil {
		return fmt.Errorf("image %q: %v", image, err)
	}
	tags, err := s.allTags(ctx, listener, image)
	if err != nil {
		return fmt.Errorf("prefetch %s: tag list: %w", image, err)
	}
	var failed []string
	for _, tag := range tags {
		if err := s.prefetchOne(ctx, listener, image+":"+tag, opts, progress); err != nil {
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

// allTags reads image's whole tag list through the handler, page by page.
func (s *Server) allTags(ctx context.Context, listener, image string) ([]string, error) {
	h := s.Handler(listener)
	ctx = context.WithValue(ctx, internalKey{}, true)
	var all []string
	last := ""
	for page := 0; page < 1000; page++ {
		q := url.Values{"n": {"1000"}}
		if last != "" {
			q.Set("last", last)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/v2/"+image+"/tags/list?"+q.Encode(), nil)
		req.RemoteAddr = "127.0.0.1:0"
		var buf strings.Builder
		rw := &sinkWriter{header: http.Header{}, w: &limitedBuilder{b: &buf, max: 32 << 20}}
		h.ServeHTTP(rw, req)
		if rw.status != http.StatusOK {
			return nil, fmt.Errorf("status %d", rw.status)
		}
		var list struct {
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal([]byte(buf.String()), &list); err != nil {
			return nil, err
		}
		all = append(all, list.Tags...)
		if rw.header.Get("Link") == "" || len(list.Tags) == 0 {
			return all, nil
		}
		last = list.Tags[len(list.Tags)-1]
	}
	return all, nil
}

// prefetchOne is Prefetch of one image reference.
func (s *Server) prefetchOne(ctx context.Context, listener, image string, opts PrefetchOptions, progress func(PrefetchEvent)) error {
	name, ref, err := ParseImageRef(image)
	if err != nil {
		return err
	}
	h := s.Handler(listener)
	ctx = context.WithValue(ctx, internalKey{}, true)
	get := func(path string, w io.Writer) (http.Header, int, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, path, nil)
		req.Header.Set("Accept", upstream.ManifestAccept)
		req.RemoteAddr = "127.0.0.1:0"
		rw := &sinkWriter{header: http.Header{}, w: w}
		h.ServeHTTP(rw, req)
		if rw.status != http.StatusOK {
			return rw.header, rw.status, fmt.Errorf("%s: status %d", path, rw.status)
		}
		return rw.header, rw.status, nil
	}
	var done, total atomic.Int64
	manifest := func(reference string) (*parsedManifest, error) {
		var buf strings.Builder
		h, _, err := get("/v2/"+name+"/manifests/"+reference, &limitedBuilder{b: &buf, max: maxManifestSize})
		if err != nil {
			return nil, err
		}
		pm, err := parseManifest([]byte(buf.String()), h.Get("Content-Type"))
		if err != nil {
			return nil, fmt.Errorf("prefetch %s: %s: %w", image, reference, err)
		}
		progress(PrefetchEvent{Image: image, Digest: reference, Kind: "manifest", Bytes: int64(buf.Len())})
		return pm, nil
	}
	top, err := manifest(ref)
	if err != nil {
		return err
	}
	images := []*parsedManifest{top}
	if top.index != nil {
		want := opts.Platforms
		if len(want) == 0 {
			want = []string{"linux/amd64"}
		}
		images = nil
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
				return err
			}
			images = append(images, child)
		}
		if len(images) == 0 {
			return fmt.Errorf("%s: no manifest for platform %s", image, strings.Join(want, ","))
		}
	}
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
	for _, b := range blobs {
		total.Add(b.Size)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	errs := make(chan error, len(blobs))
	for _, b := range blobs {
		wg.Add(1)
		s.goSafe("prefetch blob", func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cw := &countWriter{add: func(n int64) { done.Add(n) }}
			if _, _, err := get("/v2/"+name+"/blobs/"+b.Digest.String(), cw); err != nil {
				errs <- err
				return
			}
			progress(PrefetchEvent{Image: image, Digest: b.Digest.String(), Kind: "blob", Bytes: b.Size, DoneBytes: done.Load(), TotalBytes: total.Load()})
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

// sinkWriter is the ResponseWriter of an in-process request.
type sinkWriter struct {
	header http.Header
	status int
	w      io.Writer
}

func (s *sinkWriter) Header() http.Header { return s.header }
func (s *sinkWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}
func (s *sinkWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	if s.status != http.StatusOK {
		return len(p), nil
	}
	return s.w.Write(p)
}

type countWriter struct{ add func(int64) }

func (c *countWriter) Write(p []byte) (int, error) { c.add(int64(len(p))); return len(p), nil }

type limitedBuilder struct {
	b   *strings.Builder
	max int
}

func (l *limitedBuilder) Write(p []byte) (int, error) {
	if l.b.Len()+len(p) > l.max {
		return 0, fmt.Errorf("manifest too large")
	}
	return l.b.Write(p)
}

// adminPrefetch: POST /admin/prefetch (admin listener) with
// {"images":[...],"platforms":[...],"all_platforms":bool}; streams one
// JSON event per line.
func (s *Server) adminPrefetch(listener string) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		var req struct {
			Images       []string `json:"images"`
			Platforms    []string `json:"platforms"`
			AllPlatforms bool     `json:"all_platforms"`
			AllTags      bool     `json:"all_tags"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || len(req.Images) == 0 {
			return errf(codeRequestInvalid, `want {"images":[...]}`)
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		var mu sync.Mutex
		enc := json.NewEncoder(w)
		send := func(ev PrefetchEvent) {
			mu.Lock()
			defer mu.Unlock()
			enc.Encode(ev)
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
		}
		for _, img := range req.Images {
			err := s.Prefetch(r.Context(), listener, img, PrefetchOptions{Platforms: req.Platforms, AllPlatforms: req.AllPlatforms, AllTags: req.AllTags}, send)
			if err != nil {
				send(PrefetchEvent{Image: img, Kind: "error", Error: err.Error()})
			}
		}
		return nil
	}
}
