package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestPullThroughAndWarm(t *testing.T) {
	up := newFakeUpstream(t)
	want := up.push("library/app", "v1", randomImage(t, 4096, 3))
	b := newTestBerth(t, up)

	// Round 1 pulls through (one upstream GET per blob), round 2 is served
	// from the cache.
	for round := 1; round <= 2; round++ {
		img, err := remote.Image(b.ref("library/app:v1"))
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if d, _ := img.Digest(); d != want {
			t.Fatalf("digest %s, want %s", d, want)
		}
		if err := validate.Image(img); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		// A reader finishes once the digest is verified, before the
		// blob is committed: round 2 must find it committed, or it
		// joins the download (coalesced) instead of hitting the cache.
		waitNoDownloads(t, b.srv)
	}
	if got := up.count("GET blob"); got != 4 { // config + 3 layers, once each
		t.Errorf("upstream blob GETs = %d, want 4", got)
	}
	if got := up.count("GET manifest"); got != 1 {
		t.Errorf("upstream manifest GETs = %d, want 1", got)
	}
	if misses, hits := b.cacheCount("blob", resultMiss), b.cacheCount("blob", resultHit); misses != 4 || hits < 4 {
		t.Errorf("blob misses = %v (want 4), hits = %v (want >= 4)", misses, hits)
	}
	if hits := b.cacheCount("manifest", resultHit); hits < 1 {
		t.Errorf("manifest hits = %v", hits)
	}
	// Bytes are counted when the handler returns, after the client has
	// its last byte: wait for round 2's last response to be counted.
	fromUp := testutil.ToFloat64(b.srv.m.servedBytes.WithLabelValues("hub", "upstream"))
	eventually(func() bool { return testutil.ToFloat64(b.srv.m.servedBytes.WithLabelValues("hub", "cache")) >= fromUp }, true)
	cache := testutil.ToFloat64(b.srv.m.servedBytes.WithLabelValues("hub", "cache"))
	if cache == 0 || fromUp == 0 || cache < fromUp {
		t.Errorf("served bytes cache=%v upstream=%v", cache, fromUp)
	}
}

func TestDockerHubLibraryPrefix(t *testing.T) {
	up := newFakeUpstream(t)
	want := up.push("library/nginx", "latest", randomImage(t, 512, 1))
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.DockerHub = true })
	for _, ref := range []string{"nginx:latest", "library/nginx:latest", "hub/nginx:latest"} {
		d, err := remote.Head(b.ref(ref))
		if err != nil || d.Digest != want {
			t.Errorf("%s: %v %v", ref, d, err)
		}
	}
}

func TestMultiArchIndex(t *testing.T) {
	up := newFakeUpstream(t)
	idx, err := random.Index(1024, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := up.pushIndex("multi", "latest", idx)
	b := newTestBerth(t, up)
	got, err := remote.Index(b.ref("multi:latest"))
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := got.Digest(); d != want {
		t.Fatalf("index digest %s, want %s", d, want)
	}
	if err := validate.Index(got); err != nil { // fetches every child manifest and blob
		t.Fatal(err)
	}
	resp := b.get("GET", "/v2/multi/manifests/latest")
	readAll(t, resp)
	if ct := resp.Header.Get("Content-Type"); ct != "application/vnd.oci.image.index.v1+json" {
		t.Errorf("Content-Type %q", ct)
	}
	if resp.Header.Get("Docker-Content-Digest") != want.String() || resp.Header.Get("Etag") != `"`+want.String()+`"` {
		t.Errorf("headers %v", resp.Header)
	}
}

// TestConcurrentMissOneFetch: 50 clients ask one uncached blob at once;
// upstream sees exactly one GET and every client gets the right bytes.
func TestConcurrentMissOneFetch(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 8<<20, 1)
	up.push("app", "v1", img)
	dg := firstLayer(t, img)
	b := newTestBerth(t, up)
	// Link the blob to the repository through its manifest, as a client pull does.
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	up.mu.Lock()
	up.latency = 100 * time.Millisecond // all 50 arrive while the first is pending
	up.mu.Unlock()

	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(b.http.URL + "/v2/app/blobs/" + dg.String())
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			if _, err := io.Copy(h, resp.Body); err != nil {
				errs <- err
				return
			}
			if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); resp.StatusCode != 200 || got != dg.String() {
				errs <- fmt.Errorf("status %d digest %s", resp.StatusCode, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := up.count("GET blob"); got != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", got)
	}
	t.Logf("50 concurrent pulls of one uncached blob: %d upstream GET", up.count("GET blob"))
	if c := b.cacheCount("blob", resultCoalesced); c+b.cacheCount("blob", resultMiss)+b.cacheCount("blob", resultHit) != n {
		t.Errorf("cache results do not add up to %d", n)
	}
}

// slowBlob makes upstream send half of each blob, then wait for release.
func slowBlob(up *fakeUpstream, release <-chan struct{}) {
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || kindOf(r.URL.Path) != "blob" {
			return false
		}
		rec := httptest.NewRecorder()
		up.reg.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(rec.Code)
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		<-release
		w.Write(body[len(body)/2:])
		return true
	})
}

func TestStreamsBeforeDownloadCompletes(t *testing.T) {
	up, b, dg := cachedApp(t, 1<<20)
	release := make(chan struct{})
	slowBlob(up, release)

	resp := b.get("GET", "/v2/app/blobs/"+dg.String())
	defer resp.Body.Close()
	half := make([]byte, (1<<20)/2-1)
	readWithin(t, resp.Body, half, "no bytes streamed while upstream was still sending")
	// A second client joins mid-download and also gets its first half.
	resp2 := b.get("GET", "/v2/app/blobs/"+dg.String())
	defer resp2.Body.Close()
	if _, err := io.ReadFull(resp2.Body, make([]byte, len(half))); err != nil {
		t.Fatal(err)
	}
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	all := append(half, rest...)
	if got := fmt.Sprintf("sha256:%x", sha256.Sum256(all)); got != dg.String() {
		t.Fatalf("digest %s, want %s", got, dg)
	}
	if up.count("GET blob") != 1 {
		t.Fatalf("upstream GETs = %d", up.count("GET blob"))
	}
}

func TestDownloadSurvivesClientHangup(t *testing.T) {
	up, b, dg := cachedApp(t, 1<<20)
	release := make(chan struct{})
	slowBlob(up, release)

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", b.http.URL+"/v2/app/blobs/"+dg.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 1000))
	cancel() // the client hangs up mid-blob
	resp.Body.Close()
	close(release)
	waitNoDownloads(t, b.srv)
	if _, err := b.store.StatBlob(context.Background(), store.MustDigest(dg.String())); err != nil {
		t.Fatalf("blob not cached after the client left: %v", err)
	}
	up.setFault(nil)
	resp = b.get("GET", "/v2/app/blobs/"+dg.String())
	readAll(t, resp)
	if up.count("GET blob") != 1 {
		t.Fatalf("refetched after hangup: %d GETs", up.count("GET blob"))
	}
}

// TestCorruptUpstreamNeverCached: wrong bytes (same length) or a stream
// cut midway end the client's response with an error, nothing is cached,
// the mismatch is counted, and the next request fetches again.
func TestCorruptUpstreamNeverCached(t *testing.T) {
	for _, mode := range []string{"flip", "cut", "short", "empty"} {
		t.Run(mode, func(t *testing.T) {
			up := newFakeUpstream(t)
			img := randomImage(t, 256<<10, 1)
			up.push("app", "v1", img)
			layers, _ := img.Layers()
			dg, _ := layers[0].Digest()
			b := newTestBerth(t, up)
			readAll(t, b.get("GET", "/v2/app/manifests/v1"))
			up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method != "GET" || kindOf(r.URL.Path) != "blob" {
					return false
				}
				rec := httptest.NewRecorder()
				up.reg.ServeHTTP(rec, r)
				body := bytes.Clone(rec.Body.Bytes())
				w.Header().Set("Content-Length", fmt.Sprint(len(body)))
				switch mode {
				case "flip":
					body[len(body)/2] ^= 0xff
					w.Write(body)
				case "cut":
					w.Write(body[:len(body)/2])
					w.(http.Flusher).Flush()
					conn, _, _ := w.(http.Hijacker).Hijack()
					conn.Close()
				case "short":
					w.Header().Set("Content-Length", fmt.Sprint(len(body)-10))
					w.Write(body[:len(body)-10])
				case "empty": // nothing to hold back but the end
					w.Header().Set("Content-Length", "0")
				}
				return true
			})
			// A fresh connection: Go's client retries a request whose
			// reused connection closes before any response byte.
			fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := fresh.Get(b.http.URL + "/v2/app/blobs/" + dg.String())
			if err == nil {
				body, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				if rerr == nil && resp.StatusCode == 200 && fmt.Sprintf("sha256:%x", sha256.Sum256(body)) != dg.String() {
					t.Fatalf("client received a complete corrupt blob")
				}
				if rerr == nil && resp.StatusCode == 200 {
					t.Fatalf("corrupt download answered 200 with a clean body")
				}
			}
			waitNoDownloads(t, b.srv)
			if _, err := b.store.StatBlob(context.Background(), store.MustDigest(dg.String())); !store.IsNotFound(err) {
				t.Fatalf("corrupt blob cached: %v", err)
			}
			if mode != "cut" {
				if n := testutil.ToFloat64(b.srv.m.digestMismatch.WithLabelValues("hub")); n != 1 {
					t.Errorf("digest mismatches = %v, want 1", n)
				}
			}
			up.setFault(nil)
			resp = b.get("GET", "/v2/app/blobs/"+dg.String())
			if body := readAll(t, resp); fmt.Sprintf("sha256:%x", sha256.Sum256(body)) != dg.String() {
				t.Fatal("refetch after corruption failed")
			}
		})
	}
}

func TestTagRevalidation(t *testing.T) {
	up := newFakeUpstream(t)
	first := up.push("app", "v1", randomImage(t, 512, 1))
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.TagTTL = 100 * time.Millisecond })
	digestOf := func() string {
		resp := b.get("GET", "/v2/app/manifests/v1")
		readAll(t, resp)
		return resp.Header.Get("Docker-Content-Digest")
	}
	if digestOf() != first.String() {
		t.Fatal("first pull")
	}
	if digestOf() != first.String() || up.count("HEAD manifest") != 0 || up.count("GET manifest") != 1 {
		t.Fatalf("fresh tag went upstream: HEAD %d GET %d", up.count("HEAD manifest"), up.count("GET manifest"))
	}
	time.Sleep(150 * time.Millisecond)
	if digestOf() != first.String() || up.count("HEAD manifest") != 1 || up.count("GET manifest") != 1 {
		t.Fatalf("stale tag: HEAD %d GET %d, want 1 1", up.count("HEAD manifest"), up.count("GET manifest"))
	}
	if b.cacheCount("manifest", resultRevalidated) != 1 {
		t.Error("revalidation not counted")
	}
	second := up.push("app", "v1", randomImage(t, 512, 1))
	time.Sleep(150 * time.Millisecond)
	if got := digestOf(); got != second.String() {
		t.Fatalf("after upstream retag: %s, want %s", got, second)
	}
	if up.count("GET manifest") != 2 {
		t.Errorf("manifest GETs = %d, want 2", up.count("GET manifest"))
	}
}

func TestServeStaleWhenUpstreamFails(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 2048, 2)
	want := up.push("app", "v1", img)
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.TagTTL = time.Millisecond })
	if _, err := remote.Image(b.ref("app:v1")); err != nil {
		t.Fatal(err)
	}
	pulled, _ := remote.Image(b.ref("app:v1"))
	if err := validate.Image(pulled); err != nil { // caches every blob
		t.Fatal(err)
	}
	waitNoDownloads(t, b.srv) // and the manifest's commit ends
	for _, status := range []int{503, 429, 500} {
		up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(status)
			return true
		})
		time.Sleep(2 * time.Millisecond)
		img, err := remote.Image(b.ref("app:v1"))
		if err != nil {
			t.Fatalf("upstream %d: %v", status, err)
		}
		if d, _ := img.Digest(); d != want {
			t.Fatalf("stale digest %s", d)
		}
		if err := validate.Image(img); err != nil {
			t.Fatalf("upstream %d: blobs: %v", status, err)
		}
	}
	up.srv.Close() // upstream gone entirely
	time.Sleep(2 * time.Millisecond)
	img2, err := remote.Image(b.ref("app:v1"))
	if err != nil {
		t.Fatalf("upstream down: %v", err)
	}
	if err := validate.Image(img2); err != nil {
		t.Fatal(err)
	}
	if n := b.cacheCount("manifest", resultStale); n < 4 {
		t.Errorf("stale serves = %v, want >= 4", n)
	}
	// Nothing cached and upstream down: a clear error, not a hang.
	resp := b.get("GET", "/v2/other/manifests/v1")
	if resp.StatusCode != http.StatusServiceUnavailable || respCode(t, resp) != codeUnavailable.name {
		t.Errorf("uncached with upstream down: %d", resp.StatusCode)
	}
}

func TestNotFoundRemembered(t *testing.T) {
	up := newFakeUpstream(t)
	b := newTestBerth(t, up)
	for i := 0; i < 3; i++ {
		resp := b.get("GET", "/v2/nothing/manifests/latest")
		if resp.StatusCode != 404 || respCode(t, resp) != codeManifestUnknown.name {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if got := up.count("GET manifest"); got != 1 {
		t.Fatalf("upstream asked %d times, want 1", got)
	}
}

// TestHeadUncached: a HEAD of a tag not cached fetches and caches the
// manifest with one upstream GET (clients that only ask HEAD, such as
// crane digest and oras discover, are then served stale like the others);
// a HEAD by digest asks upstream with HEAD and stores nothing; a HEAD of
// a blob never downloads it.
func TestHeadUncached(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 4096, 1)
	want := up.push("app", "v1", img)
	other := up.push("app", "v2", randomImage(t, 1024, 1))
	layers, _ := img.Layers()
	dg, _ := layers[0].Digest()
	sz, _ := layers[0].Size()
	b := newTestBerth(t, up)
	resp := b.get("HEAD", "/v2/app/manifests/v1")
	readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("HEAD manifest: %d %v", resp.StatusCode, resp.Header)
	}
	resp = b.get("HEAD", "/v2/app/manifests/"+other.String())
	readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != other.String() {
		t.Fatalf("HEAD manifest by digest: %d %v", resp.StatusCode, resp.Header)
	}
	resp = b.get("HEAD", "/v2/app/blobs/"+dg.String())
	readAll(t, resp)
	if resp.StatusCode != 200 || resp.ContentLength != sz {
		t.Fatalf("HEAD blob: %d length %d, want %d", resp.StatusCode, resp.ContentLength, sz)
	}
	if up.count("GET manifest") != 1 || up.count("HEAD manifest") != 1 || up.count("GET blob") != 0 || up.count("HEAD blob") != 1 {
		t.Fatalf("upstream counts %v", up.counts)
	}
	waitNoDownloads(t, b.srv)
	if _, n := b.store.Stats(); n != 1 {
		t.Fatalf("HEADs stored %d objects, want the tag's manifest", n)
	}
}

// TestHeadServedStale: a tag only ever asked with HEAD is served stale
// when the upstream is down.
func TestHeadServedStale(t *testing.T) {
	up := newFakeUpstream(t)
	want := up.push("app", "v1", randomImage(t, 1024, 1))
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.TagTTL = time.Millisecond })
	readAll(t, b.get("HEAD", "/v2/app/manifests/v1"))
	waitNoDownloads(t, b.srv)
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	time.Sleep(5 * time.Millisecond) // past tag_ttl
	resp := b.get("HEAD", "/v2/app/manifests/v1")
	readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("HEAD with the upstream down: %d", resp.StatusCode)
	}
	if n := b.cacheCount("manifest", resultStale); n != 1 {
		t.Errorf("stale answers %v, want 1", n)
	}
}

// TestBlobOnlyFromRepositoryThatHoldsIt: a blob cached through image A is
// not served as image B's unless upstream confirms B holds it.
func TestBlobOnlyFromRepositoryThatHoldsIt(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 4096, 1)
	up.push("team-a/app", "v1", img)
	dg := firstLayer(t, img)
	// go-containerregistry's registry serves any blob under any name; make
	// this upstream hold team-b's blobs only once they are pushed there.
	var mu sync.Mutex
	teamB := false
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if strings.HasPrefix(r.URL.Path, "/v2/team-b/") && kindOf(r.URL.Path) == "blob" && !teamB {
			w.WriteHeader(404)
			return true
		}
		return false
	})
	b := newTestBerth(t, up)
	pulled, _ := remote.Image(b.ref("team-a/app:v1"))
	if err := validate.Image(pulled); err != nil {
		t.Fatal(err)
	}
	resp := b.get("GET", "/v2/team-b/app/blobs/"+dg.String())
	if resp.StatusCode != 404 || respCode(t, resp) != codeBlobUnknown.name {
		t.Fatalf("blob of team-a served as team-b: %d", resp.StatusCode)
	}
	// Once upstream holds it in team-b too, a HEAD confirms it and the
	// cached copy is served without another GET.
	up.push("team-b/app", "v1", img)
	mu.Lock()
	teamB = true
	mu.Unlock()
	gets := up.count("GET blob")
	resp = b.get("GET", "/v2/team-b/app/blobs/"+dg.String())
	if body := readAll(t, resp); resp.StatusCode != 200 || fmt.Sprintf("sha256:%x", sha256.Sum256(body)) != dg.String() {
		t.Fatalf("confirmed blob: %d", resp.StatusCode)
	}
	if up.count("GET blob") != gets {
		t.Error("confirmed blob was downloaded again")
	}
}

func TestRateLimitPassedThrough(t *testing.T) {
	up := newFakeUpstream(t)
	b := newTestBerth(t, up)
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if kindOf(r.URL.Path) == "ping" {
			return false
		}
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(429)
		io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`)
		return true
	})
	resp := b.get("GET", "/v2/app/manifests/v1")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "120" || respCode(t, resp) != codeTooManyRequests.name {
		t.Fatalf("status %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := up.count("GET manifest"); n != 1 {
		t.Errorf("a long Retry-After was retried: %d tries", n)
	}
}

func TestRetriesTransientErrors(t *testing.T) {
	up := newFakeUpstream(t)
	want := up.push("app", "v1", randomImage(t, 512, 1))
	b := newTestBerth(t, up)
	var mu sync.Mutex
	fails := 2
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if kindOf(r.URL.Path) == "manifest" && fails > 0 {
			fails--
			w.WriteHeader(503)
			return true
		}
		return false
	})
	resp := b.get("GET", "/v2/app/manifests/v1")
	readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if n := up.count("GET manifest"); n != 3 {
		t.Errorf("tries = %d, want 3", n)
	}
}

func TestUpstreamBearerToken(t *testing.T) {
	up := newFakeUpstream(t)
	want := up.push("private/app", "v1", randomImage(t, 2048, 2))
	up.token, up.user, up.pass = "s3cret-token", "robot", "pw"
	b := newTestBerth(t, up)
	img, err := remote.Image(b.ref("private/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := img.Digest(); d != want {
		t.Fatal("digest")
	}
	if err := validate.Image(img); err != nil {
		t.Fatal(err)
	}
	if n := up.count("GET token"); n != 1 {
		t.Errorf("token requests = %d, want 1 (one per image)", n)
	}

	// Wrong credentials: a clear error, not a crash or a hang.
	up2 := newFakeUpstream(t)
	up2.push("private/app", "v1", randomImage(t, 512, 1))
	up2.token, up2.user = "tok", "robot"
	up2.pass = "right"
	b2 := newTestBerth(t, up2, func(r *Repository, o *Options) {})
	up2.mu.Lock()
	up2.pass = "changed" // berth still has "right"
	up2.mu.Unlock()
	resp := b2.get("GET", "/v2/private/app/manifests/v1")
	if resp.StatusCode < 400 || resp.StatusCode == 500 {
		t.Fatalf("bad upstream credentials: status %d", resp.StatusCode)
	}
	readAll(t, resp)
}

// TestRedirectDropsAuthorization: blob redirects to storage on another
// host are followed without the upstream's Authorization header.
func TestRedirectDropsAuthorization(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 4096, 1)
	up.push("app", "v1", img)
	dg := firstLayer(t, img)
	up.token = "tok"
	var cdnAuth []string
	var mu sync.Mutex
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		cdnAuth = append(cdnAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		r2, _ := http.NewRequest(r.Method, up.seed.URL+"/v2/app/blobs/"+dg.String(), nil)
		resp, err := http.DefaultClient.Do(r2)
		if err != nil {
			w.WriteHeader(500)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Length", resp.Header.Get("Content-Length"))
		io.Copy(w, resp.Body)
	}))
	defer cdn.Close()
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if kindOf(r.URL.Path) == "blob" && r.Method == "GET" {
			http.Redirect(w, r, cdn.URL+"/storage/"+dg.Hex+"?sig=abc", http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	b := newTestBerth(t, up)
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	resp := b.get("GET", "/v2/app/blobs/"+dg.String())
	if body := readAll(t, resp); fmt.Sprintf("sha256:%x", sha256.Sum256(body)) != dg.String() {
		t.Fatalf("status %d: wrong body", resp.StatusCode)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(cdnAuth) != 1 || cdnAuth[0] != "" {
		t.Fatalf("CDN saw Authorization %q", cdnAuth)
	}
}

func TestRanges(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 100_000, 1)
	up.push("app", "v1", img)
	layers, _ := img.Layers()
	dg, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	full, _ := io.ReadAll(rc)
	b := newTestBerth(t, up)
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	for _, phase := range []string{"miss", "hit"} {
		resp := b.get("GET", "/v2/app/blobs/"+dg.String(), "Range", "bytes=100-199")
		body := readAll(t, resp)
		if resp.StatusCode != 206 || !bytes.Equal(body, full[100:200]) {
			t.Fatalf("%s: status %d, %d bytes", phase, resp.StatusCode, len(body))
		}
		waitNoDownloads(t, b.srv)
	}
	resp := b.get("GET", "/v2/app/blobs/"+dg.String(), "Range", "bytes=999999999-")
	readAll(t, resp)
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("unsatisfiable range: %d", resp.StatusCode)
	}
	resp = b.get("GET", "/v2/app/blobs/"+dg.String(), "If-None-Match", `"`+dg.String()+`"`)
	readAll(t, resp)
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match: %d", resp.StatusCode)
	}
}

func TestErrorResponses(t *testing.T) {
	up := newFakeUpstream(t)
	b := newTestBerth(t, up)
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/v2/Bad_Name/manifests/latest", 400, codeNameInvalid.name},
		{"GET", "/v2/app/blobs/sha256:1234", 400, codeDigestInvalid.name},
		{"GET", "/v2/app/manifests/sha256:zz", 400, codeDigestInvalid.name},
		{"GET", "/v2/app/manifests/missing", 404, codeManifestUnknown.name},
		{"GET", "/v2/app/blobs/" + testDigest, 404, codeBlobUnknown.name},
		{"PUT", "/v2/app/manifests/v1", 405, codeUnsupported.name},
		{"DELETE", "/v2/app/manifests/v1", 405, codeUnsupported.name},
		{"POST", "/v2/app/blobs/uploads/", 405, codeUnsupported.name},
		{"GET", "/v2/app/nothing/here", 404, codeNotFound.name},
		{"GET", "/v2/app/manifests/v1?ns=quay.io", 404, codeNameUnknown.name},
	} {
		resp := b.get(tc.method, tc.path)
		if resp.StatusCode != tc.status || respCode(t, resp) != tc.code {
			t.Errorf("%s %s: status %d, want %d %s", tc.method, tc.path, resp.StatusCode, tc.status, tc.code)
		}
	}
	resp := b.get("GET", "/v2/")
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("/v2/: %d %v", resp.StatusCode, resp.Header)
	}
	readAll(t, resp)
}

func TestOversizeManifestRefused(t *testing.T) {
	up := newFakeUpstream(t)
	b := newTestBerth(t, up)
	big := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":"` + strings.Repeat("a", maxManifestSize) + `"}}`
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if kindOf(r.URL.Path) != "manifest" {
			return false
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		io.WriteString(w, big)
		return true
	})
	resp := b.get("GET", "/v2/app/manifests/huge")
	if resp.StatusCode != http.StatusRequestEntityTooLarge || respCode(t, resp) != codeManifestInvalid.name {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if _, n := b.store.Stats(); n != 0 {
		t.Fatal("oversize manifest stored")
	}
}

func TestTagsList(t *testing.T) {
	up := newFakeUpstream(t)
	for _, tag := range []string{"a", "b", "c"} {
		up.push("app", tag, randomImage(t, 256, 1))
	}
	b := newTestBerth(t, up)
	resp := b.get("GET", "/v2/hub/app/tags/list?n=2")
	body := string(readAll(t, resp))
	if resp.StatusCode != 200 || !strings.Contains(body, `"name":"hub/app"`) || !strings.Contains(body, `"tags":["a","b"]`) {
		t.Fatalf("tags: %d %s", resp.StatusCode, body)
	}
	if link := resp.Header.Get("Link"); link != `</v2/hub/app/tags/list?last=b&n=2>; rel="next"` {
		t.Errorf("Link %q", link)
	}
	// Upstream down: the cached tags answer.
	readAll(t, b.get("GET", "/v2/app/manifests/a"))
	up.srv.Close()
	resp = b.get("GET", "/v2/app/tags/list")
	if body := string(readAll(t, resp)); resp.StatusCode != 200 || !strings.Contains(body, `"tags":["a"]`) {
		t.Fatalf("stale tags: %d %s", resp.StatusCode, body)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("app", "v1", randomImage(t, 256, 1))
	b := newTestBerth(t, up)
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	waitNoDownloads(t, b.srv)
	resp := b.get("GET", "/metrics")
	body := string(readAll(t, resp))
	for _, want := range []string{
		`berth_http_requests_total{code="200",kind="manifest",method="GET",repository="hub"} 1`,
		`berth_cache_results_total{kind="manifest",repository="hub",result="miss"} 1`,
		`berth_store_blobs 1`,
		`berth_inflight_downloads 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if resp := b.get("GET", p); resp.StatusCode != 200 {
			t.Errorf("%s: %d", p, resp.StatusCode)
		}
	}
}

// TestHeadThenDigestCachesTag: Docker's pull is HEAD manifests/<tag>, then
// GET manifests/<digest>; the tag must end up cached so that it can be
// served (stale) when the upstream is down.
func TestHeadThenDigestCachesTag(t *testing.T) {
	up := newFakeUpstream(t)
	want := up.push("app", "v1", randomImage(t, 512, 1))
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.TagTTL = time.Millisecond })
	resp := b.get("HEAD", "/v2/app/manifests/v1")
	readAll(t, resp)
	readAll(t, b.get("GET", "/v2/app/manifests/"+resp.Header.Get("Docker-Content-Digest")))
	up.srv.Close()
	time.Sleep(2 * time.Millisecond)
	for _, method := range []string{"HEAD", "GET"} {
		resp = b.get(method, "/v2/app/manifests/v1")
		readAll(t, resp)
		if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.String() {
			t.Fatalf("%s with upstream down: %d", method, resp.StatusCode)
		}
	}
}

// TestNotFoundAnsweredWhileUpstreamDown: past not_found_ttl a remembered
// 404 is asked again; when the upstream is down then, the client gets the
// 404 again (GET and HEAD), not 503: clients that fall back on a 404 (the
// referrers tag schema) keep working.
func TestNotFoundAnsweredWhileUpstreamDown(t *testing.T) {
	up := newFakeUpstream(t)
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.NotFoundTTL = time.Millisecond })
	for _, m := range []string{"GET", "HEAD"} {
		if resp := b.get(m, "/v2/nothing/manifests/"+m); resp.StatusCode != 404 {
			t.Fatalf("%s: %d", m, resp.StatusCode)
		}
	}
	time.Sleep(5 * time.Millisecond)
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool { w.WriteHeader(http.StatusBadGateway); return true })
	for _, m := range []string{"GET", "HEAD"} {
		resp := b.get(m, "/v2/nothing/manifests/"+m)
		readAll(t, resp)
		if resp.StatusCode != 404 {
			t.Errorf("%s with the upstream down: %d, want the remembered 404", m, resp.StatusCode)
		}
	}
	if resp := b.get("GET", "/v2/never-asked/manifests/x"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a name never asked, upstream down: %d, want 503", resp.StatusCode)
	}
}
