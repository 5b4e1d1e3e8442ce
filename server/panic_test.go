package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// panickyStore panics on GetManifest, as a bug in a handler's path would.
type panickyStore struct{ Store }

func (panickyStore) GetManifest(context.Context, string, store.Digest) (store.Manifest, error) {
	panic("a bug on the manifest path")
}

// TestHandlerPanicAnswers500: a panic in a request's handler is answered
// 500 with a registry error, logged, counted, and the server goes on.
func TestHandlerPanicAnswers500(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("app", "v1", randomImage(t, 256, 1))
	b := newTestBerth(t, up, func(r *Repository, o *Options) { o.Store = panickyStore{o.Store} })
	d := "sha256:" + strings.Repeat("a", 64)
	for i := 0; i < 3; i++ {
		resp := b.get("GET", "/v2/app/manifests/"+d)
		body := string(readAll(t, resp))
		if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(body, `"UNKNOWN"`) {
			t.Fatalf("panicking handler: %d %s", resp.StatusCode, body)
		}
	}
	if got := testutil.ToFloat64(b.srv.m.panics.WithLabelValues("handler")); got != 3 {
		t.Errorf("berth_panics_total{where=handler} = %v, want 3", got)
	}
	if resp := b.get("GET", "/v2/"); resp.StatusCode != 200 {
		t.Errorf("after the panics /v2/ answers %d", resp.StatusCode)
	}
	metrics := string(readAll(t, b.get("GET", "/metrics")))
	if !strings.Contains(metrics, `berth_panics_total{where="handler"} 3`) || !strings.Contains(metrics, `berth_panics_total{where="store"} 0`) {
		t.Errorf("/metrics lacks the panic counts:\n%s", grepLines(metrics, "berth_panics"))
	}
}

// panickyUpstream panics when a blob download starts, on the download's
// own goroutine.
type panickyUpstream struct{ Upstream }

func (u panickyUpstream) Blob(ctx context.Context, method, image, dgst string) (*http.Response, error) {
	if method == http.MethodGet {
		var p *http.Response
		return p, p.Body.Close() // nil pointer dereference
	}
	return u.Upstream.Blob(ctx, method, image, dgst)
}

func (u panickyUpstream) Referrers(ctx context.Context, image, dgst, artifactType string) (*http.Response, error) {
	panic("upstream Referrers")
}

func (u panickyUpstream) BlobRange(ctx context.Context, image, dgst string, start, end int64) (*http.Response, error) {
	return u.Blob(ctx, http.MethodGet, image, dgst)
}

// TestDownloadGoroutinePanic: a panic on a download's goroutine fails
// that download for every reader (no hang) and is counted; the store
// stays consistent (the cleanup's check).
func TestDownloadGoroutinePanic(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 4096, 1)
	up.push("app", "v1", img)
	layer := firstLayer(t, img)
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.Upstream = panickyUpstream{r.Upstream} })
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := b.get("GET", "/v2/app/blobs/"+layer.String())
			readAll(t, resp)
			if resp.StatusCode < 500 {
				t.Errorf("download that panicked answered %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	waitNoDownloads(t, b.srv)
	// The guard counts once the download's own cleanup has run.
	for i := 0; i < 500 && testutil.ToFloat64(b.srv.m.panics.WithLabelValues("goroutine")) < 1; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(b.srv.m.panics.WithLabelValues("goroutine")); got < 1 {
		t.Errorf("berth_panics_total{where=goroutine} = %v", got)
	}
}

// TestStatusPageSendsNothingUpstream: views of the status page send
// nothing upstream and /readyz, many at once, at most one background
// probe per upstream per interval; with the upstream down they show how long it has been
// unreachable, from real requests' outcomes.
func TestStatusPageSendsNothingUpstream(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("app", "v1", randomImage(t, 256, 1))
	b := newTestBerth(t, up)
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range []string{"/", "/readyz"} {
				if resp := b.get("GET", p); resp.StatusCode != 200 {
					t.Errorf("%s: %d", p, resp.StatusCode)
				} else {
					readAll(t, resp)
				}
			}
		}()
	}
	wg.Wait()
	// The one probe runs in the background; wait for it to land.
	for i := 0; i < 200 && up.count("GET ping") == 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if got := up.count("GET ping"); got != 1 {
		t.Errorf("80 views sent %d pings upstream, want 1 probe", got)
	}
	page := ""
	for i := 0; i < 200; i++ {
		if page = string(readAll(t, b.get("GET", "/"))); strings.Contains(page, "reachable (last answer") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(page, "reachable (last answer") {
		t.Errorf("status page after the probe:\n%s", grepLines(page, "reach"))
	}

	// The upstream goes away; a real pull finds out.
	up.srv.CloseClientConnections()
	up.srv.Close()
	resp := b.get("GET", "/v2/app/manifests/v2")
	readAll(t, resp)
	if resp.StatusCode < 500 {
		t.Fatalf("pull with the upstream down: %d", resp.StatusCode)
	}
	page = string(readAll(t, b.get("GET", "/")))
	if !strings.Contains(page, "unreachable for 0s; nothing cached to serve") { // no image was pulled
		t.Errorf("status page with the upstream down:\n%s", grepLines(page, "reach"))
	}
	ready := string(readAll(t, b.get("GET", "/readyz")))
	if !strings.Contains(ready, `"upstream hub":"unreachable`) || !strings.Contains(ready, "connection refused") {
		t.Errorf("/readyz with the upstream down: %s", ready)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestUpstreamFailureLoggedOncePerCause: a failing upstream is logged at
// WARN with its cause, once per reason a minute, however many pulls fail.
func TestUpstreamFailureLoggedOncePerCause(t *testing.T) {
	up := newFakeUpstream(t)
	var logs syncBuf
	b := newTestBerth(t, up, func(r *Repository, o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"maintenance"}]}`, http.StatusServiceUnavailable)
		return true
	})
	for i := 0; i < 5; i++ {
		resp := b.get("GET", fmt.Sprintf("/v2/app/manifests/t%d", i))
		readAll(t, resp)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("pull %d: %d", i, resp.StatusCode)
		}
	}
	out := logs.String()
	if n := strings.Count(out, `level=WARN msg="upstream failing`); n != 1 {
		t.Errorf("%d WARN lines for 5 failures of one cause, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "503 Service Unavailable") || !strings.Contains(out, "reason=unavailable") {
		t.Errorf("the WARN line lacks the cause:\n%s", out)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
