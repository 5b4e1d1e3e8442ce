package server

import (
	"context"
	"strings"
	"testing"
)

func TestParseImageRefs(t *testing.T) {
	for _, tc := range []struct{ in, name, ref string }{
		{"nginx", "nginx", "latest"},
		{"library/nginx:1.27", "library/nginx", "1.27"},
		{"ghcr.io/org/app:v1", "ghcr.io/org/app", "v1"},
		{"app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "app", "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	} {
		name, ref, err := ParseImageRef(tc.in)
		if err != nil || name != tc.name || ref != tc.ref {
			t.Errorf("%q: %q %q %v", tc.in, name, ref, err)
		}
	}
	if _, _, err := ParseImageRef("Bad//Name"); err == nil {
		t.Error("bad name accepted")
	}
}

// TestPrefetchAllTags: every tag of an image is fetched, through the
// handler, as a read replica needs.
func TestPrefetchAllTags(t *testing.T) {
	up := newFakeUpstream(t)
	for _, tag := range []string{"v1", "v2", "v3"} {
		up.push("library/app", tag, randomImage(t, 1024, 1))
	}
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.DockerHub = true })
	if err := b.srv.Prefetch(context.Background(), "hub", "app", PrefetchOptions{AllTags: true}, nil); err != nil {
		t.Fatal(err)
	}
	waitNoDownloads(t, b.srv)
	tags, err := b.store.Tags(context.Background(), "hub/library/app")
	if err != nil || strings.Join(tags, ",") != "v1,v2,v3" {
		t.Fatalf("tags cached: %v %v", tags, err)
	}
	if err := b.srv.Prefetch(context.Background(), "hub", "app:v1", PrefetchOptions{AllTags: true}, nil); err == nil {
		t.Error("all tags of a tagged reference accepted")
	}
}
