package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

// Source is the registry copied from (upstream.Client). Successful calls
// return a 2xx response whose body the caller closes.
type Source interface {
	Catalog(ctx context.Context, query url.Values) (*http.Response, error)
	Tags(ctx context.Context, image string, query url.Values) (*http.Response, error)
	Manifest(ctx context.Context, method, image, ref string) (*http.Response, error)
	Blob(ctx context.Context, method, image, dgst string) (*http.Response, error)
	// Referrers answers 404 (an error) where the source has no referrers
	// API.
	Referrers(ctx context.Context, image, dgst, artifactType string) (*http.Response, error)
}

// Bounds on what a source can make a run hold or do.
const (
	maxManifest  = 4 << 20 // bytes of one manifest or referrers index
	maxListBody  = 4 << 20 // bytes of one catalog or tag list page
	maxPages     = 1000    // pages of one catalog or tag list
	maxNames     = 100_000 // repositories of a catalog, tags of a repository
	pageSize     = 1000
	maxChildren  = 1000 // manifests of one index
	maxReferrers = 100  // referrers of one manifest
	maxDepth     = 4    // index → child (→ referrer → …) nesting
)

// maxListBytes bounds the bytes of the names of one whole list (100k
// names of 255 bytes fit); a variable for the test.
var maxListBytes = 32 << 20

// list reads a paged list (the catalog or a tag list): get asks for a
// page given n and last; key is the JSON field. Pages must advance (each
// last name above the one before) and stop within maxPages and maxNames:
// a source that never ends is an error, not a hang.
func list(ctx context.Context, what, key string, get func(url.Values) (*http.Response, error)) ([]string, error) {
	var all []string
	q := url.Values{"n": {strconv.Itoa(pageSize)}}
	last, held := "", 0
	for page := 0; ; page++ {
		if page == maxPages || len(all) > maxNames || held > maxListBytes {
			return nil, fmt.Errorf("%s: over %d pages, %d names or %d MiB of names: the list does not end", what, maxPages, maxNames, maxListBytes>>20)
		}
		resp, err := get(q)
		var ue *upstream.Error
		if errors.As(err, &ue) && ue.StatusCode == http.StatusBadRequest && q.Has("n") {
			// Distribution refuses an n over its catalog's maxentries
			// (PAGINATION_NUMBER_INVALID): let the source choose.
			q.Del("n")
			resp, err = get(q)
		}
		if err != nil {
			return nil, err
		}
		var body map[string]json.RawMessage
		err = json.NewDecoder(io.LimitReader(resp.Body, maxListBody)).Decode(&body)
		next := nextLast(resp.Header.Get("Link"))
		resp.Body.Close()
		var names []string
		if err == nil {
			if raw, ok := body[key]; ok && string(raw) != "null" {
				err = json.Unmarshal(raw, &names)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: page %d is not a list: %v", what, page+1, err)
		}
		all = append(all, names...)
		for _, n := range names {
			held += len(n)
		}
		if next == "" || len(names) == 0 {
			return all, nil
		}
		if next <= last {
			return nil, fmt.Errorf("%s: page %d goes back to %q: the list does not end", what, page+1, truncate(next, 80))
		}
		last = next
		q.Set("last", next)
	}
}

// nextLast is the last= of a Link header's next page: only the parameter
// is taken, the next request goes to the same source (a Link naming
// another host is not followed there).
func nextLast(link string) string {
	if !strings.Contains(link, `rel="next"`) {
		return ""
	}
	start, end := strings.Index(link, "<"), strings.Index(link, ">")
	if start < 0 || end < start {
		return ""
	}
	u, err := url.Parse(link[start+1 : end])
	if err != nil {
		return ""
	}
	return u.Query().Get("last")
}

// catalog lists the source's repositories.
func catalog(ctx context.Context, src Source) ([]string, error) {
	return list(ctx, "catalog", "repositories", func(q url.Values) (*http.Response, error) { return src.Catalog(ctx, q) })
}

// tags lists a repository's tags.
func tags(ctx context.Context, src Source, repo string) ([]string, error) {
	return list(ctx, repo+": tag list", "tags", func(q url.Values) (*http.Response, error) { return src.Tags(ctx, repo, q) })
}

// headDigest asks the digest a tag points at with a HEAD ("" when the
// source does not say).
func headDigest(ctx context.Context, src Source, repo, tag string) (store.Digest, error) {
	resp, err := src.Manifest(ctx, http.MethodHead, repo, tag)
	if err != nil {
		return store.Digest{}, err
	}
	resp.Body.Close()
	d, err := store.ParseDigest(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return store.Digest{}, nil
	}
	return d, nil
}

// manifest is one manifest read from the source.
type manifest struct {
	digest    store.Digest
	mediaType string
	body      []byte
	parsed    parsedManifest
}

// parsedManifest is what a copy needs of a manifest.
type parsedManifest struct {
	MediaType string       `json:"mediaType"`
	Config    *descriptor  `json:"config"`
	Layers    []descriptor `json:"layers"`
	Manifests []descriptor `json:"manifests"`
	Subject   *descriptor  `json:"subject"`
}

type descriptor struct {
	MediaType string    `json:"mediaType"`
	Digest    string    `json:"digest"`
	Size      int64     `json:"size"`
	URLs      []string  `json:"urls"`
	Platform  *platform `json:"platform"`
}

type platform struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Variant      string `json:"variant"`
}

// getManifest GETs repo's manifest ref; by digest the body must hash to
// it, by tag to the digest the source announced (when it did).
func getManifest(ctx context.Context, src Source, repo, ref string) (*manifest, error) {
	resp, err := src.Manifest(ctx, http.MethodGet, repo, ref)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > maxManifest {
		return nil, fmt.Errorf("%s@%s: manifest is %d bytes, over the %d byte limit", repo, ref, resp.ContentLength, maxManifest)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("%s@%s: reading manifest: %w", repo, ref, err)
	}
	if len(body) > maxManifest {
		return nil, fmt.Errorf("%s@%s: manifest is over the %d byte limit", repo, ref, maxManifest)
	}
	got := store.DigestOf(body)
	want, err := store.ParseDigest(ref)
	if err != nil { // by tag
		want, err = store.ParseDigest(resp.Header.Get("Docker-Content-Digest"))
		if err != nil {
			want = got
		}
	}
	if !want.Verify(body) {
		return nil, fmt.Errorf("%s@%s: the manifest does not match its digest %s (it hashes to %s): refused", repo, ref, want, got)
	}
	m := &manifest{digest: want, mediaType: resp.Header.Get("Content-Type"), body: body}
	if err := json.Unmarshal(body, &m.parsed); err != nil {
		return nil, fmt.Errorf("%s@%s: not a manifest: %v", repo, ref, err)
	}
	if m.parsed.MediaType != "" {
		m.mediaType = m.parsed.MediaType
	}
	if m.mediaType == "" {
		return nil, fmt.Errorf("%s@%s: the manifest has no media type", repo, ref)
	}
	if len(m.parsed.Manifests) > maxChildren {
		return nil, fmt.Errorf("%s@%s: an index of %d manifests (at most %d)", repo, ref, len(m.parsed.Manifests), maxChildren)
	}
	return m, nil
}

// referrers lists the referrers of repo@d through the referrers API (none
// where the source has no such API: their tag-scheme twins are tags).
func referrers(ctx context.Context, src Source, repo string, d store.Digest) ([]descriptor, error) {
	resp, err := src.Referrers(ctx, repo, d.String(), "")
	if err != nil {
		var ue *upstream.Error
		if errors.As(err, &ue) && (ue.StatusCode == http.StatusNotFound || ue.StatusCode == http.StatusMethodNotAllowed || ue.StatusCode == http.StatusBadRequest) {
			return nil, nil // no referrers API
		}
		return nil, err
	}
	defer resp.Body.Close()
	var idx parsedManifest
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxManifest)).Decode(&idx); err != nil {
		return nil, fmt.Errorf("%s@%s: referrers: not an index: %v", repo, d, err)
	}
	if len(idx.Manifests) > maxReferrers {
		idx.Manifests = idx.Manifests[:maxReferrers]
	}
	return idx.Manifests, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
