package server

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// imageBlobs lists img's config and layer digests.
func imageBlobs(t *testing.T, img v1.Image) []string {
	t.Helper()
	cd, _ := img.ConfigName()
	out := []string{cd.String()}
	ls, _ := img.Layers()
	for _, l := range ls {
		d, _ := l.Digest()
		out = append(out, d.String())
	}
	return out
}

// waitCached waits (bounded) until every digest is in the store.
func waitCached(t *testing.T, b *testBerth, digests []string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, d := range digests {
		for {
			if _, err := b.store.StatBlob(context.Background(), store.MustDigest(d)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("blob %s was not fetched eagerly", d)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func eagerOn(r *Repository, o *Options) { r.EagerLayers, r.DockerHub = true, true }

// TestEagerLayers: serving an image manifest starts the downloads of its
// config and layers before any client asks; the client's pull then reads
// them, one upstream transfer per blob.
func TestEagerLayers(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 256<<10, 4)
	up.push("library/app", "v1", img)
	b := newTestBerth(t, up, eagerOn)
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	blobs := imageBlobs(t, img)
	waitCached(t, b, blobs)
	if n := testutil.ToFloat64(b.srv.m.eager.WithLabelValues("hub")); n != float64(len(blobs)) {
		t.Errorf("berth_eager_downloads_total = %v, want %d", n, len(blobs))
	}
	got, err := remote.Image(b.ref("app:v1"))
	if err == nil {
		err = validate.Image(got)
	}
	if err != nil {
		t.Fatal(err)
	}
	if n := up.count("GET blob"); n != len(blobs) {
		t.Errorf("%d upstream blob GETs for %d blobs", n, len(blobs))
	}
}

// TestEagerLayersJoinedByClient: a client pulling while the eager
// downloads run (a slow upstream) reads each blob from the same download.
func TestEagerLayersJoinedByClient(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 512<<10, 3)
	up.push("library/app", "v1", img)
	b := newTestBerth(t, up, eagerOn)
	up.mu.Lock()
	up.latency = 50 * time.Millisecond
	up.mu.Unlock()
	got, err := remote.Image(b.ref("app:v1"))
	if err == nil {
		err = validate.Image(got)
	}
	if err != nil {
		t.Fatal(err)
	}
	waitNoDownloads(t, b.srv)
	if n, want := up.count("GET blob"), len(imageBlobs(t, img)); n != want {
		t.Errorf("%d upstream blob GETs for %d blobs: a client and the eager downloads fetched twice", n, want)
	}
}

// TestEagerLayersOnePlatform: an index starts nothing (no platform is
// chosen); the manifest of one platform fetches that platform's blobs and
// never another's.
func TestEagerLayersOnePlatform(t *testing.T) {
	up := newFakeUpstream(t)
	idx, err := random.Index(64<<10, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	up.pushIndex("library/multi", "v1", idx)
	b := newTestBerth(t, up, eagerOn)
	readAll(t, b.get("GET", "/v2/multi/manifests/v1"))
	im, _ := idx.IndexManifest()
	first, _ := idx.Image(im.Manifests[0].Digest)
	second, _ := idx.Image(im.Manifests[1].Digest)
	readAll(t, b.get("GET", "/v2/multi/manifests/"+im.Manifests[0].Digest.String()))
	waitCached(t, b, imageBlobs(t, first))
	waitNoDownloads(t, b.srv)
	for _, d := range imageBlobs(t, second) {
		if _, err := b.store.StatBlob(context.Background(), store.MustDigest(d)); err == nil {
			t.Errorf("blob %s of the other platform was fetched", d)
		}
	}
	if n, want := up.count("GET blob"), len(imageBlobs(t, first)); n != want {
		t.Errorf("%d upstream blob GETs, want %d (one platform's)", n, want)
	}
}

// TestEagerRamp: on a fast path three of a manifest's blobs download at a
// time; when none ends for eagerRamp and each gained less than
// eagerSlowRate (a slow path), eagerWide run at once; after a manifest
// that took eagerSlowAnswer to come from upstream, eagerWide from the
// start.
func TestEagerRamp(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		ramp                    time.Duration
		slowRate                float64
		hold                    time.Duration // each blob GET takes this long
		manifestDelay           time.Duration // the upstream's manifest GET takes this long
		wantAtMost, wantAtLeast int
	}{
		// The config besides the layers: one more at once.
		{"fast path", time.Hour, eagerSlowRate, 0, 0, eagerParallel + 1, 1},
		{"long but not slow", 30 * time.Millisecond, 0, time.Second, 0, eagerParallel + 1, eagerParallel + 1},
		{"slow path", 30 * time.Millisecond, eagerSlowRate, time.Second, 0, eagerWide + 1, eagerWide},
		{"slow manifest answer", time.Hour, eagerSlowRate, time.Second, 2 * eagerSlowAnswer, eagerWide + 1, eagerWide + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newFakeUpstream(t)
			img := randomImage(t, 64<<10, 11)
			up.push("library/app", "v1", img)
			var mu sync.Mutex
			now, peak := 0, 0
			up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodGet && kindOf(r.URL.Path) == "manifest" {
					time.Sleep(tc.manifestDelay)
				}
				if r.Method != http.MethodGet || kindOf(r.URL.Path) != "blob" {
					return false
				}
				mu.Lock()
				now++
				peak = max(peak, now)
				mu.Unlock()
				time.Sleep(tc.hold)
				up.reg.ServeHTTP(w, r)
				mu.Lock()
				now--
				mu.Unlock()
				return true
			})
			b := newTestBerth(t, up, eagerOn)
			b.srv.eager.ramp, b.srv.eager.slowRate = tc.ramp, tc.slowRate
			b.srv.eager.slowAnswer = eagerSlowAnswer
			if tc.manifestDelay == 0 {
				b.srv.eager.slowAnswer = time.Hour // however slow the machine answers
			}
			readAll(t, b.get("GET", "/v2/app/manifests/v1"))
			waitCached(t, b, imageBlobs(t, img))
			mu.Lock()
			defer mu.Unlock()
			if peak > tc.wantAtMost || peak < tc.wantAtLeast {
				t.Errorf("%d blob downloads at once, want %d to %d", peak, tc.wantAtLeast, tc.wantAtMost)
			}
		})
	}
}
