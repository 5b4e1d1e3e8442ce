package server

import (
	"bytes"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/fakehub"
	"github.com/berth-registry/berth/store/storetest"
	"github.com/berth-registry/berth/upstream"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// hubLab is a fake Docker Hub (fakehub over go-containerregistry's
// registry) and a berth proxying it as "hub", with a log to read.
type hubLab struct {
	hub  *fakehub.Hub
	seed *httptest.Server // the registry behind the hub, for pushes
	b    *testBerth
	log  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func newHubLab(t *testing.T, hub *fakehub.Hub, tagTTL time.Duration) *hubLab {
	t.Helper()
	backend := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	hub.Backend = backend
	hub.Start()
	seed := httptest.NewServer(backend)
	t.Cleanup(func() { hub.Close(); seed.Close() })
	lg := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(lg, nil))
	uc, err := upstream.New(upstream.Options{URL: hub.URL(), HeaderTimeout: 5 * time.Second, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	st := storetest.Open(t)
	o := Options{DefaultRepository: "hub", Store: st, Logger: logger, Registry: prometheus.NewRegistry(), FetchTimeout: time.Minute,
		Repositories: []Repository{{Name: "hub", Kind: KindProxy, Upstream: uc, UpstreamHost: hub.Host(),
			DockerHub: true, TagTTL: tagTTL, NotFoundTTL: time.Minute, ServeStale: true, AnonymousPull: true}}}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler("hub"))
	t.Cleanup(func() { hs.Close(); waitNoDownloads(t, s) })
	return &hubLab{hub: hub, seed: seed, log: lg,
		b: &testBerth{t: t, srv: s, http: hs, store: st, reg: o.Registry, host: strings.TrimPrefix(hs.URL, "http://")}}
}

func (l *hubLab) push(t *testing.T, repo string, img v1.Image) {
	t.Helper()
	ref, _ := name.ParseReference(strings.TrimPrefix(l.seed.URL, "http://")+"/"+repo, name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
}

func (l *hubLab) pull(t *testing.T, repo string) error {
	t.Helper()
	img, err := remote.Image(l.b.ref(repo))
	if err == nil {
		err = validate.Image(img)
	}
	return err
}

func (l *hubLab) gauge(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := l.b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	return -1
}

// TestDockerHubBudget: the budget the hub reports is on /metrics and the
// status page; once spent, a cached tag is served as it is with no
// upstream request, a miss is answered 429 with Retry-After at once with
// no upstream request, and the hub is asked again when its Retry-After
// ends; the start and the end are logged once each.
func TestDockerHubBudget(t *testing.T) {
	lab := newHubLab(t, &fakehub.Hub{Limit: 3, Window: time.Hour, RetryAfter: 1}, 0) // tag_ttl 0: every tag pull revalidates
	for _, r := range []string{"library/a:v1", "library/b:v1", "library/c:v1", "library/d:v1"} {
		lab.push(t, r, randomImage(t, 1024, 1))
	}
	if err := lab.pull(t, "a:v1"); err != nil {
		t.Fatal(err)
	}
	if l, r, w := lab.gauge(t, "berth_upstream_ratelimit_limit"), lab.gauge(t, "berth_upstream_ratelimit_remaining"), lab.gauge(t, "berth_upstream_ratelimit_window_seconds"); l != 3 || r != 2 || w != 3600 {
		t.Fatalf("gauges limit %v remaining %v window %v, want 3 2 3600", l, r, w)
	}
	page := string(readAll(t, lab.b.get("GET", "/")))
	if !strings.Contains(page, "pulls left: 2 of 3 per 1 h") {
		t.Errorf("status page does not show the budget:\n%s", page)
	}
	for _, r := range []string{"b:v1", "c:v1"} {
		if err := lab.pull(t, r); err != nil {
			t.Fatal(err)
		}
	}
	if r, spent := lab.gauge(t, "berth_upstream_ratelimit_remaining"), lab.gauge(t, "berth_upstream_ratelimit_spent"); r != 0 || spent != 1 {
		t.Fatalf("after 3 pulls: remaining %v spent %v, want 0 1", r, spent)
	}

	before := lab.hub.Stats().Requests
	if err := lab.pull(t, "a:v1"); err != nil {
		t.Fatalf("cached image while the budget is spent: %v", err)
	}
	resp := lab.b.get("GET", "/v2/d/manifests/v1")
	readAll(t, resp)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("cold pull while spent: %d Retry-After %q, want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := lab.hub.Stats().Requests; n != before {
		t.Fatalf("%d upstream requests while the budget was spent, want 0", n-before)
	}
	if n := strings.Count(lab.log.String(), "upstream pull budget spent"); n != 1 {
		t.Errorf("spent logged %d times, want 1", n)
	}
	if n := testutil.ToFloat64(lab.b.srv.m.upstreamErrors.WithLabelValues("hub", "budget")); n < 1 {
		t.Errorf("refusals not counted: %v", n)
	}
}

// TestBudgetRenewedAfterRetryAfter: a 429 spends the budget only until
// its Retry-After; then the hub is asked again and the end is logged.
func TestBudgetRenewedAfterRetryAfter(t *testing.T) {
	lab := newHubLab(t, &fakehub.Hub{Limit: 5, Window: time.Hour, RetryAfter: 1}, time.Hour)
	lab.push(t, "library/a:v1", randomImage(t, 1024, 1))
	lab.hub.SetRemaining(0)
	resp := lab.b.get("GET", "/v2/a/manifests/v1")
	readAll(t, resp)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("hub's 429: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	spentAt := time.Now()
	lab.hub.SetRemaining(5)
	before := lab.hub.Stats().Requests
	deadline := time.Now().Add(10 * time.Second)
	for lab.pull(t, "a:v1") != nil {
		if time.Now().After(deadline) {
			t.Fatal("never asked the hub again after Retry-After")
		}
		if time.Since(spentAt) < 900*time.Millisecond && lab.hub.Stats().Requests != before {
			t.Fatal("the hub was asked before Retry-After ended")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(lab.log.String(), "upstream pull budget renewed") {
		t.Error("the end of the spent budget was not logged")
	}
}

// TestTokensShared: 50 clients pulling one image cold cost one token
// request; a failing token endpoint reaches the client as what it is
// (429, 503), never as a 404.
func TestTokensShared(t *testing.T) {
	lab := newHubLab(t, &fakehub.Hub{}, time.Hour)
	lab.push(t, "library/app:v1", randomImage(t, 64<<10, 3))
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- lab.pull(t, "app:v1")
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := lab.hub.Stats()
	if n := st.TokenRequests["repository:library/app:pull"]; n != 1 || len(st.TokenRequests) != 1 {
		t.Fatalf("token requests %v, want one for repository:library/app:pull", st.TokenRequests)
	}

	for _, tc := range []struct {
		status int
		code   string
	}{{http.StatusTooManyRequests, codeTooManyRequests.name}, {http.StatusServiceUnavailable, codeUnavailable.name}} {
		lab.hub.SetTokenFailure(tc.status)
		repo := "other" + tc.code
		resp := lab.b.get("GET", "/v2/"+strings.ToLower(repo)+"/manifests/v1")
		if got := respCode(t, resp); resp.StatusCode != tc.status || got != tc.code {
			t.Errorf("token endpoint answering %d: client got %d %s", tc.status, resp.StatusCode, got)
		}
	}
}

// TestFailoverShown: a proxy over two URLs serves from the second while
// the first fails, and the status page and /metrics say the first is
// offline.
func TestFailoverShown(t *testing.T) {
	down, up := newFakeUpstream(t), newFakeUpstream(t)
	up.push("library/app", "v1", randomImage(t, 1024, 1))
	down.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	var clients []*upstream.Client
	for _, f := range []*fakeUpstream{down, up} {
		c, err := upstream.New(upstream.Options{URL: f.srv.URL, Attempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	fo, err := upstream.NewFailover(clients, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.Upstream, r.DockerHub = fo, true })
	img, err := remote.Image(b.ref("app:v1"))
	if err == nil {
		err = validate.Image(img)
	}
	if err != nil {
		t.Fatalf("pull with the first URL down: %v", err)
	}
	page := string(readAll(t, b.get("GET", "/")))
	if !strings.Contains(page, down.srv.URL+" (offline until") {
		t.Errorf("status page does not show the offline URL:\n%s", page)
	}
	mfs, _ := b.reg.Gather()
	var offline []string
	for _, mf := range mfs {
		if mf.GetName() == "berth_upstream_url_offline" {
			for _, m := range mf.Metric {
				if m.GetGauge().GetValue() == 1 {
					for _, l := range m.Label {
						if l.GetName() == "url" {
							offline = append(offline, l.GetValue())
						}
					}
				}
			}
		}
	}
	if len(offline) != 1 || offline[0] != down.srv.URL {
		t.Errorf("berth_upstream_url_offline = 1 for %v, want only %s", offline, down.srv.URL)
	}
}
