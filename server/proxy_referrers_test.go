package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// artifactFor returns a small artifact of artifactType whose subject is img.
func artifactFor(t *testing.T, img v1.Image, artifactType string) v1.Image {
	t.Helper()
	desc, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	art := mutate.MediaType(randomImage(t, 256, 1), types.OCIManifestSchema1)
	art = mutate.ConfigMediaType(art, types.MediaType(artifactType))
	return mutate.Subject(art, *desc).(v1.Image)
}

type referrersIndex struct {
	Manifests []struct {
		Digest       string `json:"digest"`
		ArtifactType string `json:"artifactType"`
	} `json:"manifests"`
}

func getReferrers(t *testing.T, b *testBerth, path string) (int, referrersIndex, http.Header) {
	t.Helper()
	resp := b.get("GET", path)
	body := readAll(t, resp)
	var idx referrersIndex
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &idx); err != nil {
			t.Fatalf("%s: %v\n%s", path, err, body)
		}
	}
	return resp.StatusCode, idx, resp.Header
}

// TestProxyReferrers: a proxy passes the referrers API through (with the
// artifactType filter), the referrers are then pullable through it, the
// list is served stale when the upstream fails, an upstream without the
// API gets its 404 passed on, and the tag schema works as tags.
func TestProxyReferrers(t *testing.T) {
	up := newFakeUpstream(t)
	img := mutate.MediaType(randomImage(t, 1024, 1), types.OCIManifestSchema1)
	d := up.push("library/app", "v1", img)
	sig := artifactFor(t, img, "application/vnd.example.sig")
	sd := up.push("library/app", "sig", sig)
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.DockerHub, r.TagTTL = true, 0 })

	status, idx, _ := getReferrers(t, b, "/v2/app/referrers/"+d.String())
	if status != 200 || len(idx.Manifests) != 1 || idx.Manifests[0].Digest != sd.String() || idx.Manifests[0].ArtifactType != "application/vnd.example.sig" {
		t.Fatalf("referrers through the proxy: %d %+v", status, idx)
	}
	status, idx, hdr := getReferrers(t, b, "/v2/app/referrers/"+d.String()+"?artifactType=application/vnd.other")
	if status != 200 || len(idx.Manifests) != 0 || hdr.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("filtered: %d %+v %q", status, idx, hdr.Get("OCI-Filters-Applied"))
	}
	if _, err := remote.Image(b.ref("app@" + sd.String())); err != nil {
		t.Fatalf("the referrer is not pullable through the proxy: %v", err)
	}

	// The upstream fails: the cached list is served stale.
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/referrers/") {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	status, idx, _ = getReferrers(t, b, "/v2/app/referrers/"+d.String())
	if status != 200 || len(idx.Manifests) != 1 || b.cacheCount("referrers", resultStale) != 1 {
		t.Fatalf("upstream down: %d %+v, stale %v", status, idx, b.cacheCount("referrers", resultStale))
	}

	// An upstream without the API: its 404 reaches the client, which then
	// uses the tag schema, a tag like any other.
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/referrers/") {
			http.Error(w, `{"errors":[{"code":"NOT_FOUND"}]}`, http.StatusNotFound)
			return true
		}
		return false
	})
	if status, _, _ := getReferrers(t, b, "/v2/app/referrers/"+d.String()); status != http.StatusNotFound {
		t.Fatalf("upstream without the API: %d, want 404", status)
	}
	tagSchema := "sha256-" + d.Hex + ".sig"
	want := up.push("library/app", tagSchema, sig)
	resp := b.get("GET", "/v2/app/manifests/"+tagSchema, "Accept", string(types.OCIManifestSchema1))
	readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("tag-schema signature: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
}

// TestGroupReferrersMerged: a group lists the referrers of its hosted and
// proxy members together, each once.
func TestGroupReferrersMerged(t *testing.T) {
	f := newGroupBerth(t, "local")
	img := mutate.MediaType(randomImage(t, 1024, 1), types.OCIManifestSchema1)
	d := f.pub.push("library/app", "v1", img)
	shared := artifactFor(t, img, "application/vnd.example.sig")
	sd := f.pub.push("library/app", "sig", shared)
	own := artifactFor(t, img, "application/vnd.example.sbom")
	for _, a := range []v1.Image{shared, own} {
		ad, _ := a.Digest()
		if err := remote.Write(f.ref("app@"+ad.String()), a); err != nil { // through the group: lands in local
			t.Fatal(err)
		}
	}
	od, _ := own.Digest()
	status, idx, _ := getReferrers(t, f.testBerth, "/v2/app/referrers/"+d.String())
	got := map[string]int{}
	for _, m := range idx.Manifests {
		got[m.Digest]++
	}
	if status != 200 || len(idx.Manifests) != 2 || got[sd.String()] != 1 || got[od.String()] != 1 {
		t.Fatalf("group referrers: %d %+v, want %s and %s once each", status, idx, sd, od)
	}
}
