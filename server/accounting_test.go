package server

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// pullImage pulls ref whole as a client does (manifest, config, layers)
// and returns the bytes the registry sent for them.
func pullImage(t *testing.T, ref name.Reference) int64 {
	t.Helper()
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	raw, _ := img.RawManifest()
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	n := int64(len(raw) + len(cfg))
	layers, _ := img.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		m, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		n += m
	}
	return n
}

// accounting is the counters a scenario checks.
type accounting struct {
	hit, miss, coalesced float64 // berth_cache_results_total of repo
	cache, upstream      float64 // berth_served_bytes_total of repo
}

func accountingOf(b *testBerth, repo string) accounting {
	var a accounting
	for _, kind := range []string{"manifest", "blob"} {
		a.hit += testutil.ToFloat64(b.srv.m.cache.WithLabelValues(repo, kind, resultHit))
		a.miss += testutil.ToFloat64(b.srv.m.cache.WithLabelValues(repo, kind, resultMiss))
		a.coalesced += testutil.ToFloat64(b.srv.m.cache.WithLabelValues(repo, kind, resultCoalesced))
	}
	a.cache = testutil.ToFloat64(b.srv.m.servedBytes.WithLabelValues(repo, "cache"))
	a.upstream = testutil.ToFloat64(b.srv.m.servedBytes.WithLabelValues(repo, "upstream"))
	return a
}

func (a accounting) minus(o accounting) accounting {
	return accounting{a.hit - o.hit, a.miss - o.miss, a.coalesced - o.coalesced, a.cache - o.cache, a.upstream - o.upstream}
}

// TestAccounting: one definition, checked scenario by scenario. A byte
// that crossed the upstream link for a pull (an eager download's for the
// pull in progress included) is an upstream byte; a byte on disk before
// the pull began is a cache byte. Each manifest and blob a client is
// sent counts once, under the repository that answered, through a group
// too (and under the group in berth_group_*). Pulls are manifest GETs of
// clients: not HEADs, not berth's own prefetch.
func TestAccounting(t *testing.T) {
	for _, eagerOn := range []bool{true, false} {
		t.Run(fmt.Sprintf("eager=%v", eagerOn), func(t *testing.T) {
			up := newFakeUpstream(t)
			img := randomImage(t, 64<<10, 3)
			d := up.push("app", "v1", img)
			b := newTestBerth(t, up, withHosted, func(r *Repository, o *Options) {
				r.EagerLayers = eagerOn
				o.DefaultRepository = "hub"
				o.Repositories = append(o.Repositories, Repository{Name: "all", Kind: KindGroup, Members: []string{"local", "hub"}, AnonymousPull: true})
			})
			md := store.MustDigest(d.String())
			blobs := float64(1 + 3) // config and layers
			step := func(what string, pull func() int64, want func(size float64) accounting, repo string) {
				t.Helper()
				before := accountingOf(b, repo)
				size := float64(pull())
				waitNoDownloads(t, b.srv)
				// The server counts a request when its handler returns,
				// which may be just after the client has read the body.
				w := want(size)
				got := eventually(func() accounting { return accountingOf(b, repo).minus(before) }, w)
				t.Logf("%-28s expected %+v measured %+v", what, w, got)
				if got != w {
					t.Errorf("%s: counters %+v, want %+v", what, got, w)
				}
			}
			var pulled float64 // the image's bytes
			step("cold pull", func() int64 { n := pullImage(t, b.ref("app:v1")); pulled = float64(n); return n },
				func(n float64) accounting { return accounting{miss: 1 + blobs, upstream: n} }, "hub")
			step("warm pull", func() int64 { return pullImage(t, b.ref("app:v1")) },
				func(n float64) accounting { return accounting{hit: 1 + blobs, cache: n} }, "hub")
			groupBefore := testutil.ToFloat64(b.srv.m.groupBytes.WithLabelValues("all", "hub", "cache"))
			step("warm pull through a group", func() int64 { return pullImage(t, b.ref("all/app:v1")) },
				func(n float64) accounting { return accounting{hit: 1 + blobs, cache: n} }, "hub")
			if g := testutil.ToFloat64(b.srv.m.groupBytes.WithLabelValues("all", "hub", "cache")) - groupBefore; g == 0 {
				t.Error("the group's own counter did not see the pull through it")
			}
			// The status page's totals: one cold pull all from upstream,
			// two warm ones all from the cache, the group's included.
			eventually(func() float64 { return testutil.ToFloat64(b.srv.m.servedBytes.WithLabelValues("hub", "cache")) }, 2*pulled)
			page := string(readAll(t, b.get("GET", "/")))
			for _, want := range []string{
				"cache hit ratio<b>" + ratio(2*(1+blobs), 3*(1+blobs)) + "</b>",
				"served from cache<b>" + humanBytes(2*pulled) + "</b>",
				"from upstream " + humanBytes(pulled) + "<",
			} {
				if !strings.Contains(page, want) {
					t.Errorf("status page lacks %q", want)
				}
			}
			// A hosted image through the group counts under the hosted
			// repository, from the cache (its disk).
			local := randomImage(t, 8<<10, 1)
			if err := remote.Write(b.ref("local/tool:v1"), local); err != nil {
				t.Fatal(err)
			}
			step("hosted image through a group", func() int64 { return pullImage(t, b.ref("all/tool:v1")) },
				func(n float64) accounting { return accounting{hit: 1 + 2, cache: n} }, "local")
			// HEADs and berth's own prefetch are not pulls.
			for i := 0; i < 3; i++ {
				resp := b.get("HEAD", "/v2/app/manifests/v1")
				resp.Body.Close()
			}
			if err := b.srv.Prefetch(context.Background(), "hub", "app:v1", PrefetchOptions{}, nil); err != nil {
				t.Fatal(err)
			}
			pulls := eventually(func() int64 { n, _ := b.store.Pulls(context.Background(), md); return n }, 3)
			if n, last := b.store.Pulls(context.Background(), md); pulls != 3 || last.IsZero() {
				t.Errorf("pulls %d (last %v), want 3: cold, warm, through the group", n, last)
			}
		})
	}
}

// eventually returns f's value once it equals want, or its last value
// after 5 s: for counters the server updates when a handler returns.
func eventually[T comparable](f func() T, want T) T {
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := f()
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}
