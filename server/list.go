package server

import (
	"context"
	"strings"
	"time"
)

// ListEntry is one tag of one image, for `berth ls`.
type ListEntry struct {
	Repository string    `json:"repository"`
	Image      string    `json:"image"`
	Tag        string    `json:"tag"`
	Digest     string    `json:"digest"`
	MediaType  string    `json:"media_type"`
	Size       int64     `json:"size"`
	LastPulled time.Time `json:"last_pulled"` // zero: never pulled by a client
	Pulls      int64     `json:"pulls"`       // manifest GETs of clients (not HEADs, not prefetch)
	// Damaged: a pushed image naming content the store no longer holds
	// (berth verify --repair quarantined it); push it again or delete it.
	Damaged bool `json:"damaged,omitempty"`
}

// List returns the tags of the images of repositories (all of them, or
// those under filter, "REPOSITORY[/IMAGE]"), with digests, sizes, last
// pull and pulls. With no repositories it lists every repository the
// index holds. It works on a running server or on a store opened offline,
// and counts no pull.
func List(ctx context.Context, st ListStore, repositories []string, filter string) ([]ListEntry, error) {
	var out []ListEntry
	damaged := map[string]bool{}
	if list, err := st.DamagedImages(ctx); err == nil {
		for _, d := range list {
			damaged[d] = true
		}
	}
	if repositories == nil {
		paths, err := st.Repositories(ctx, "")
		if err != nil {
			return nil, err
		}
		for _, p := range paths {
			if r, _, _ := strings.Cut(p, "/"); len(repositories) == 0 || repositories[len(repositories)-1] != r {
				repositories = append(repositories, r)
			}
		}
	}
	for _, repo := range repositories {
		prefix := repo + "/"
		if filter != "" {
			if filter != repo && !strings.HasPrefix(filter, prefix) {
				continue
			}
			if filter != repo {
				prefix = filter
			}
		}
		paths, err := st.Repositories(ctx, prefix)
		if err != nil {
			return nil, err
		}
		for _, path := range paths {
			image := strings.TrimPrefix(path, repo+"/")
			if filter != repo && filter != "" && path != filter {
				continue
			}
			tags, err := st.Tags(ctx, path)
			if err != nil {
				return nil, err
			}
			for _, tag := range tags {
				ti, err := st.ResolveTag(ctx, path, tag)
				if err != nil {
					continue
				}
				e := ListEntry{Repository: repo, Image: image, Tag: tag, Digest: ti.Digest.String(),
					Damaged: damaged[path+"@"+ti.Digest.String()]}
				e.Pulls, e.LastPulled = st.Pulls(ctx, ti.Digest)
				if m, err := st.PeekManifest(ctx, path, ti.Digest); err == nil {
					e.MediaType = m.MediaType
					e.Size = imageSize(ctx, st, path, m)
				}
				out = append(out, e)
			}
		}
	}
	return out, nil
}
