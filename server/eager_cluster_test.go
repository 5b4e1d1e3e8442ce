package server

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/berth-registry/berth/store"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestEagerLayersThroughBalancer: a node behind a balancer (external_url)
// that serves a manifest asks the balancer to prefetch the image's blobs
// instead of fetching them itself; the blobs' owner fetches each once,
// and the pull through the balancer then costs no more upstream GETs. A
// prefetch of a blob the repository holds answers 204 and fetches
// nothing.
func TestEagerLayersThroughBalancer(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 256<<10, 4)
	up.push("library/app", "v1", img)
	owner := newTestBerth(t, up, eagerOn)
	target, _ := url.Parse(owner.http.URL)
	balancer := httptest.NewServer(httputil.NewSingleHostReverseProxy(target)) // every blob hashes to the owner
	defer balancer.Close()
	node := newTestBerth(t, up, eagerOn, func(r *Repository, o *Options) { o.Auth.ExternalURL = balancer.URL })
	readAll(t, node.get("GET", "/v2/app/manifests/v1"))
	blobs := imageBlobs(t, img)
	waitCached(t, owner, blobs)
	waitNoDownloads(t, owner.srv)
	if n := up.count("GET blob"); n != len(blobs) {
		t.Errorf("%d upstream blob GETs for %d blobs", n, len(blobs))
	}
	if n := testutil.ToFloat64(node.srv.m.eager.WithLabelValues("hub")); n != float64(len(blobs)) {
		t.Errorf("the node counted %v eager prefetches, want %d", n, len(blobs))
	}
	if _, count := node.store.Stats(); count != 1 {
		t.Errorf("the node holds %d blobs, want only the manifest", count)
	}
	// The client pulls the blobs through the balancer.
	for _, d := range blobs {
		resp, err := http.Get(balancer.URL + "/v2/app/blobs/" + d)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != http.StatusOK || digestOf(body) != d {
			t.Fatalf("blob %s through the balancer: %d, %d bytes", d, resp.StatusCode, len(body))
		}
	}
	if n := up.count("GET blob"); n != len(blobs) {
		t.Errorf("%d upstream blob GETs after the pull, want %d", n, len(blobs))
	}
	resp := owner.get("GET", "/v2/app/blobs/"+blobs[1], prefetchHeader, "eager")
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("a prefetch of a held blob answered %d, want 204", resp.StatusCode)
	}
}

func digestOf(b []byte) string { return store.DigestOf(b).String() }
