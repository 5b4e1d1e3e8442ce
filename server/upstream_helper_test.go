package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/store/storetest"
	"github.com/berth-registry/berth/upstream"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeUpstream is go-containerregistry's in-memory registry behind
// httptest, wrapped to count requests, add latency, inject faults and
// demand a bearer token.
type fakeUpstream struct {
	t    testing.TB
	reg  http.Handler
	srv  *httptest.Server
	seed *httptest.Server // the same registry without faults or auth

	mu      sync.Mutex
	counts  map[string]int // "METHOD kind", kind = manifest|blob|tags|ping|token
	paths   map[string]int // "METHOD path"
	fault   func(w http.ResponseWriter, r *http.Request) bool
	latency time.Duration
	rate    int64  // bytes a second each response is sent at (0: as fast as it goes)
	token   string // when set, /v2 requests need "Bearer <token>"
	user    string // when set, /token needs these Basic credentials
	pass    string
	authHdr []string // Authorization headers seen on blob requests
}

func newFakeUpstream(t testing.TB) *fakeUpstream {
	f := &fakeUpstream{t: t, reg: registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)), counts: map[string]int{}, paths: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	f.seed = httptest.NewServer(f.reg)
	t.Cleanup(func() { f.srv.Close(); f.seed.Close() })
	return f
}

func kindOf(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "ping"
	case path == "/token":
		return "token"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.HasSuffix(path, "/tags/list"):
		return "tags"
	}
	return "other"
}

func (f *fakeUpstream) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.counts[r.Method+" "+kindOf(r.URL.Path)]++
	f.paths[r.Method+" "+r.URL.Path]++
	if kindOf(r.URL.Path) == "blob" {
		f.authHdr = append(f.authHdr, r.Header.Get("Authorization"))
	}
	fault, latency, token, user, pass, rate := f.fault, f.latency, f.token, f.user, f.pass, f.rate
	f.mu.Unlock()
	if latency > 0 {
		time.Sleep(latency)
	}
	if rate > 0 {
		w = slowWriter{w, rate}
	}
	if r.URL.Path == "/token" {
		if u, p, _ := r.BasicAuth(); user != "" && (u != user || p != pass) {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"token": token, "expires_in": 300})
		return
	}
	if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="fake"`, f.srv.URL))
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}`, http.StatusUnauthorized)
		return
	}
	if fault != nil && fault(w, r) {
		return
	}
	f.reg.ServeHTTP(w, r)
}

// countPath counts the requests of method whose path ends in suffix.
func (f *fakeUpstream) countPath(method, suffix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for k, c := range f.paths {
		if strings.HasPrefix(k, method+" ") && strings.HasSuffix(k, suffix) {
			n += c
		}
	}
	return n
}

func (f *fakeUpstream) count(methodKind string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[methodKind]
}

func (f *fakeUpstream) setFault(fn func(w http.ResponseWriter, r *http.Request) bool) {
	f.mu.Lock()
	f.fault = fn
	f.mu.Unlock()
}

// push writes img to the upstream as repo:tag and returns its digest.
func (f *fakeUpstream) push(repo, tag string, img v1.Image) v1.Hash {
	f.t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(f.seed.URL, "http://")+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		f.t.Fatal(err)
	}
	d, _ := img.Digest()
	return d
}

func (f *fakeUpstream) pushIndex(repo, tag string, idx v1.ImageIndex) v1.Hash {
	f.t.Helper()
	ref, _ := name.ParseReference(strings.TrimPrefix(f.seed.URL, "http://")+"/"+repo+":"+tag, name.Insecure)
	if err := remote.WriteIndex(ref, idx); err != nil {
		f.t.Fatal(err)
	}
	d, _ := idx.Digest()
	return d
}

func randomImage(t testing.TB, size int64, layers int) v1.Image {
	t.Helper()
	img, err := random.Image(size, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// testBerth is a Server over a fresh store, proxying one fake upstream as
// repository "hub" (the default), served by httptest.
type testBerth struct {
	t     testing.TB
	srv   *Server
	http  *httptest.Server
	store *store.Store
	reg   *prometheus.Registry
	host  string
}

type berthOpt func(*Repository, *Options)

func newTestBerth(t testing.TB, up *fakeUpstream, opts ...berthOpt) *testBerth {
	t.Helper()
	st := storetest.Open(t)
	uc, err := upstream.New(upstream.Options{URL: up.srv.URL, Username: up.user, Password: up.pass, HeaderTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rp := Repository{Name: "hub", Kind: KindProxy, Upstream: uc, UpstreamHost: strings.TrimPrefix(up.srv.URL, "http://"),
		TagTTL: time.Hour, NotFoundTTL: time.Minute, ServeStale: true, AnonymousPull: true}
	o := Options{DefaultRepository: "hub", Store: st, Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(), FetchTimeout: time.Minute}
	for _, fn := range opts {
		fn(&rp, &o)
	}
	o.Repositories = append([]Repository{rp}, o.Repositories...)
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler(o.DefaultRepository))
	t.Cleanup(func() {
		hs.Close()
		waitNoDownloads(t, s) // let detached downloads finish before the store check
	})
	return &testBerth{t: t, srv: s, http: hs, store: st, reg: o.Registry, host: strings.TrimPrefix(hs.URL, "http://")}
}

func waitNoDownloads(t testing.TB, s *Server) {
	s.commits.wg.Wait() // manifest commits too
	for i := 0; i < 500; i++ {
		n := s.fetches.Active()
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("downloads still running")
}

func (b *testBerth) ref(s string) name.Reference {
	b.t.Helper()
	ref, err := name.ParseReference(b.host+"/"+s, name.Insecure)
	if err != nil {
		b.t.Fatal(err)
	}
	return ref
}

func (b *testBerth) get(method, path string, hdr ...string) *http.Response {
	b.t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), method, b.http.URL+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return b
}

// cacheCount returns berth_cache_results_total for kind and result.
func (b *testBerth) cacheCount(kind, result string) float64 {
	return testutil.ToFloat64(b.srv.m.cache.WithLabelValues("hub", kind, result))
}

func respCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	var body errorBody
	if err := json.Unmarshal(readAll(t, resp), &body); err != nil || len(body.Errors) == 0 {
		t.Fatalf("status %d: not a registry error body (%v)", resp.StatusCode, err)
	}
	return body.Errors[0].Code
}

// firstLayer returns the digest of img's first layer.
func firstLayer(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) == 0 {
		t.Fatalf("image has no layers: %v", err)
	}
	d, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// cachedApp pushes a one-layer image as app:v1 upstream, starts berth and
// pulls the manifest through it (linking the layer), and returns the
// layer's digest.
func cachedApp(t *testing.T, size int64) (*fakeUpstream, *testBerth, v1.Hash) {
	t.Helper()
	up := newFakeUpstream(t)
	img := randomImage(t, size, 1)
	up.push("app", "v1", img)
	b := newTestBerth(t, up)
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	return up, b, firstLayer(t, img)
}

// readWithin reads len(p) bytes of r within 10 s, or fails the test with
// msg: bytes that must arrive while the upstream is still sending.
func readWithin(t *testing.T, r io.Reader, p []byte, msg string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(r, p); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal(msg)
	}
}

// slowWriter sends at most rate bytes a second: a long link's bandwidth.
type slowWriter struct {
	http.ResponseWriter
	rate int64
}

func (s slowWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), 32<<10)]
		time.Sleep(time.Duration(int64(len(chunk)) * int64(time.Second) / s.rate))
		m, err := s.ResponseWriter.Write(chunk)
		n += m
		if err != nil {
			return n, err
		}
		p = p[len(chunk):]
	}
	return n, nil
}
