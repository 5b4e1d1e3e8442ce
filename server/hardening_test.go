package server

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/reghost"
	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"
)

// TestHostEscapeRefused: a ?ns= or host path segment that is not exactly
// a host (the '#' that made the rest of "127.0.0.1:18004#x.lab.internal"
// a URL fragment and sent a proxy's credentials to 127.0.0.1, userinfo,
// a path, a bad port) is 400 and no upstream is made; a real host of the
// allowlist is still served.
func TestHostEscapeRefused(t *testing.T) {
	l := newAllowlistLab(t, true, "*.test")
	l.ups["ghcr.test"].push("org/app", "v1", randomImage(t, 512, 1))
	for _, ns := range []string{
		"127.0.0.1:18004#x.test", "127.0.0.1:18004%23x.test", "robot@ghcr.test", "ghcr.test/evil", "ghcr.test?x=1",
		"ghcr.test:99999", "ghcr.test:0", "ghcr.test:+80", " ghcr.test", "ghcr.test\\x", strings.Repeat("a", 300) + ".test",
	} {
		resp := l.b.get("GET", "/v2/org/app/manifests/v1?ns="+url.QueryEscape(ns))
		if code := respCode(t, resp); resp.StatusCode != 400 || code != codeNameInvalid.name {
			t.Errorf("?ns=%q: %d %s, want 400 NAME_INVALID", ns, resp.StatusCode, code)
		}
	}
	for _, p := range []string{"/v2/127.0.0.1:18004%23x.test/org/app/manifests/v1", "/v2/any/127.0.0.1:1%23x.test/org/app/manifests/v1"} {
		if resp := l.b.get("GET", p); resp.StatusCode != 400 {
			t.Errorf("%s: %d, want 400", p, resp.StatusCode)
		}
	}
	if n := l.made.Load(); n != 0 {
		t.Fatalf("%d upstreams made for hostile hosts", n)
	}
	if resp := l.b.get("GET", "/v2/org/app/manifests/v1?ns=GHCR.test."); resp.StatusCode != 200 {
		t.Fatalf("?ns=GHCR.test. (canonical ghcr.test): %d", resp.StatusCode)
	}
	waitNoDownloads(t, l.b.srv)
	if paths, _ := l.b.store.Repositories(context.Background(), "any/"); strings.Join(paths, " ") != "any/ghcr.test/org/app" {
		t.Errorf("stored under %v, want the canonical host", paths)
	}
}

// TestCredentialsOnlyToTheirHost: berth's allowlist upstream (as main
// wires it) is built from the parsed host, so the server that receives
// the credentials is the host that matched them; here a catcher on
// another port sees none.
func TestCredentialsOnlyToTheirHost(t *testing.T) {
	var caught atomic.Int64
	catcher := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			caught.Add(1)
		}
		w.WriteHeader(404)
	}))
	defer catcher.Close()
	catchPort := catcher.Listener.Addr().(*net.TCPAddr).Port
	up := newFakeUpstream(t)
	var seen []string
	b := newTestBerth(t, up, func(r *Repository, o *Options) {
		o.Resolver = fakeResolver{"x.lab.test": "127.0.0.1"}
		o.Repositories = append(o.Repositories, Repository{Name: "lab", Kind: KindProxy, Hosts: []string{"*.lab.test", "*.lab.test:*"},
			AllowPrivateNetworks: true, AnonymousPull: true, TagTTL: time.Hour,
			NewUpstream: func(host reghost.Host, _ bool) (Upstream, error) {
				seen = append(seen, host.String())
				return upstream.New(upstream.Options{URL: host.URL("http").String(), Username: "robot", Password: "s3cret", Attempts: 1})
			}})
	})
	for _, ns := range []string{fmt.Sprintf("127.0.0.1:%d#x.lab.test", catchPort), fmt.Sprintf("127.0.0.1:%d%%23x.lab.test", catchPort)} {
		readAll(t, b.get("GET", "/v2/any/thing/manifests/v1?ns="+url.QueryEscape(ns)))
	}
	if caught.Load() != 0 || len(seen) != 0 {
		t.Fatalf("the catcher got credentials %d times; upstreams made for %v", caught.Load(), seen)
	}
}

// TestBoundListenerScope: a listener bound to a repository resolves ?ns=
// and host prefixes only among it (and a group's members): a permissive
// allowlist repository elsewhere is not reached, nothing is dialled.
func TestBoundListenerScope(t *testing.T) {
	l := newAllowlistLab(t, true, "*.test", "*")
	hs := httptest.NewServer(l.b.srv.BoundHandler("hub"))
	defer hs.Close()
	for _, p := range []string{"/v2/org/app/manifests/v1?ns=ghcr.test", "/v2/org/app/manifests/v1?ns=127.0.0.1:15000", "/v2/any/ghcr.test/org/app/manifests/v1"} {
		resp, err := http.Get(hs.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if resp.StatusCode == 200 {
			t.Errorf("%s on a listener bound to hub: 200", p)
		}
	}
	if n := l.made.Load(); n != 0 {
		t.Fatalf("a bound listener reached the allowlist repository: %d upstreams made", n)
	}
}

// TestHostTableKeepsNoSilentHost: with forward_ns every ?ns= is passed
// on, so a client can name thousands; a host whose upstream never
// answered with success is not kept (nor its series), and a flood of them
// never makes a real namespace answer 429.
func TestHostTableKeepsNoSilentHost(t *testing.T) {
	up := newFakeUpstream(t)
	d := up.push("library/app", "v1", randomImage(t, 512, 1))
	b := newTestBerth(t, up, func(r *Repository, o *Options) {
		r.ForwardNS, r.DockerHub = true, true
		r.NewUpstream = func(ns reghost.Host, _ bool) (Upstream, error) {
			return upstream.New(upstream.Options{URL: up.srv.URL, Namespace: ns.String(), Attempts: 1})
		}
	})
	for i := 0; i < maxHostProxies+200; i++ {
		resp := b.get("GET", fmt.Sprintf("/v2/library/nosuch/manifests/v1?ns=bogus%d.example", i))
		readAll(t, resp)
		if resp.StatusCode != 404 {
			t.Fatalf("bogus ns %d: %d", i, resp.StatusCode)
		}
	}
	if n := b.srv.hosts.repos.Len(); n != 0 {
		t.Errorf("%d silent hosts kept", n)
	}
	resp := b.get("GET", "/v2/library/app/manifests/v1?ns=ghcr.io")
	readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("a real namespace after the flood: %d", resp.StatusCode)
	}
	if n := b.srv.hosts.repos.Len(); n != 1 {
		t.Errorf("%d hosts kept, want the one that answered", n)
	}
	if n := testutil.CollectAndCount(b.srv.m.cache); n > 12*3 {
		t.Errorf("%d cache series after the flood: silent hosts' series kept", n)
	}
}

// TestHostTableEvicts: past maxHostProxies answering hosts the least
// recently used is dropped, never refused.
func TestHostTableEvicts(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("library/app", "v1", randomImage(t, 256, 1))
	b := newTestBerth(t, up, func(r *Repository, o *Options) {
		r.ForwardNS, r.DockerHub, r.EagerLayers = true, true, false
		r.NewUpstream = func(ns reghost.Host, _ bool) (Upstream, error) {
			return upstream.New(upstream.Options{URL: up.srv.URL, Namespace: ns.String(), Attempts: 1})
		}
	})
	for i := 0; i < maxHostProxies+50; i++ {
		resp := b.get("HEAD", fmt.Sprintf("/v2/library/app/manifests/v1?ns=h%d.example", i))
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("host %d: %d", i, resp.StatusCode)
		}
	}
	if n := b.srv.hosts.repos.Len(); n != maxHostProxies {
		t.Errorf("%d hosts kept, want %d", n, maxHostProxies)
	}
}

// TestPageViewSendsNothingUpstream: the status page, however many hosts
// an allowlist repository serves, causes no upstream request.
func TestPageViewSendsNothingUpstream(t *testing.T) {
	l := newAllowlistLab(t, true, "*.test")
	l.ups["ghcr.test"].push("org/app", "v1", randomImage(t, 512, 1))
	readAll(t, l.b.get("GET", "/v2/org/app/manifests/v1?ns=ghcr.test"))
	waitNoDownloads(t, l.b.srv)
	// Age the health so that a probe would be due.
	for _, rp := range l.b.srv.hosts.withHosts() {
		rp.health.mu.Lock()
		rp.health.seen = time.Now().Add(-2 * probeInterval)
		rp.health.mu.Unlock()
	}
	before := l.ups["ghcr.test"].count("GET ping")
	for i := 0; i < 3; i++ {
		readAll(t, l.b.get("GET", "/"))
	}
	time.Sleep(100 * time.Millisecond) // a probe would have been sent by now
	if n := l.ups["ghcr.test"].count("GET ping") - before; n != 0 {
		t.Fatalf("page views sent %d upstream requests", n)
	}
}

// TestReferrersQueryChecked: an artifactType that is not a media type
// (60 KB of it made each cache key 60 KB) is 400 with nothing asked
// upstream; the proxy's tag list checks n and last like hosted does.
func TestReferrersQueryChecked(t *testing.T) {
	up, b, _ := cachedApp(t, 512)
	d := "sha256:" + strings.Repeat("a", 64)
	before := up.count("GET other")
	for _, at := range []string{strings.Repeat("x", 60<<10), "a/" + strings.Repeat("b", 300), "noslash", "a/b;c=d", "a /b"} {
		resp := b.get("GET", "/v2/app/referrers/"+d+"?artifactType="+url.QueryEscape(at))
		readAll(t, resp)
		if resp.StatusCode != 400 {
			t.Errorf("artifactType %.20q: %d, want 400", at, resp.StatusCode)
		}
	}
	if up.count("GET other") != before {
		t.Error("a bad artifactType went upstream")
	}
	for _, q := range []string{"n=99999999999999999999", "n=-1", "n=abc", "last=" + url.QueryEscape("a/b")} {
		resp := b.get("GET", "/v2/app/tags/list?"+q)
		readAll(t, resp)
		if resp.StatusCode != 400 {
			t.Errorf("tags/list?%s: %d, want 400", q, resp.StatusCode)
		}
	}
	if n := up.count("GET tags"); n != 0 {
		t.Errorf("%d bad tag list queries went upstream", n)
	}
	if e := referrersEntryBytes(strings.Repeat("k", 1000), referrersEntry{}); e < 1000 {
		t.Errorf("a referrers entry with a 1000-byte key costs %d", e)
	}
}

// TestEndlessBlobCut: an upstream that answers a blob with no
// Content-Length and never ends is cut at max_blob_size; nothing is
// cached, no temp file is left, the client's response fails.
func TestEndlessBlobCut(t *testing.T) {
	up := newFakeUpstream(t)
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/") || r.Method != "GET" {
			return false
		}
		w.WriteHeader(200) // no Content-Length: chunked
		buf := make([]byte, 64<<10)
		for i := 0; i < 1000; i++ { // 64 MB at most
			if _, err := w.Write(buf); err != nil {
				return true
			}
		}
		return true
	})
	b := newTestBerth(t, up, func(r *Repository, o *Options) { o.MaxBlobSize = 1 << 20; r.RangeFetch = RangeFetch{} })
	d := "sha256:" + strings.Repeat("b", 64)
	resp := b.get("GET", "/v2/app/blobs/"+d)
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 && n > 1<<20 {
		t.Fatalf("sent %d bytes of a blob capped at 1 MiB", n)
	}
	waitNoDownloads(t, b.srv)
	if got := testutil.ToFloat64(b.srv.m.digestMismatch.WithLabelValues("hub")); got != 1 {
		t.Errorf("digest/size mismatches %v, want 1", got)
	}
	if tmp, _ := os.ReadDir(filepath.Join(b.store.Dir(), "tmp")); len(tmp) != 0 {
		t.Errorf("%d temp files left", len(tmp))
	}
}

// TestDeclaredSizeBounds: a blob an image manifest declared is cut at
// that size, even when the upstream announces more.
func TestDeclaredSizeBounds(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 4096, 1)
	up.push("app", "v1", img)
	layer := firstLayer(t, img)
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/blobs/"+layer.String()) && r.Method == "GET" {
			w.Header().Set("Content-Length", fmt.Sprint(1<<20))
			w.WriteHeader(200)
			w.Write(make([]byte, 1<<20))
			return true
		}
		return false
	})
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.EagerLayers = false })
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	path := "hub/app@" + layer.String()
	for i := 0; i < 100; i++ { // the sizes are recorded in the background
		if _, ok := b.srv.declared.sizes.Get(path); ok {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	ld, err := store.ParseDigest(layer.String())
	if err != nil {
		t.Fatal(err)
	}
	if got := b.srv.declared.limit("hub/app", ld); got > 8192 {
		t.Fatalf("limit of a declared layer: %d", got)
	}
	resp := b.get("GET", "/v2/app/blobs/"+layer.String())
	readAll(t, resp)
	if resp.StatusCode == 200 {
		t.Fatal("a blob larger than its manifest declared was served")
	}
	waitNoDownloads(t, b.srv)
}

// TestDownloadBudget: one client's cold downloads under way are capped
// (429 with Retry-After past the cap), and a download its client left is
// cancelled after the grace: no temp file, no upstream connection kept.
func TestDownloadBudget(t *testing.T) {
	up := newFakeUpstream(t)
	release := make(chan struct{})
	var started, ended atomic.Int64
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/") || r.Method != "GET" {
			return false
		}
		started.Add(1)
		defer ended.Add(1)
		w.Header().Set("Content-Length", "1000000")
		w.WriteHeader(200)
		w.Write(make([]byte, 64<<10)) // past the client side's buffers
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return true
	})
	defer close(release)
	b := newTestBerth(t, up, func(r *Repository, o *Options) {
		o.MaxDownloadsPerClient, o.AbandonGrace = 3, 200*time.Millisecond
		r.RangeFetch = RangeFetch{}
	})
	var bodies []io.Closer
	for i := 0; i < 4; i++ {
		d := fmt.Sprintf("sha256:%064x", i+1)
		resp := b.get("GET", "/v2/app/blobs/"+d)
		if i < 3 {
			if resp.StatusCode != 200 {
				t.Fatalf("download %d: %d", i, resp.StatusCode)
			}
			bodies = append(bodies, resp.Body)
			continue
		}
		if code := respCode(t, resp); resp.StatusCode != 429 || code != codeTooManyRequests.name || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("download past the per-client cap: %d %s", resp.StatusCode, code)
		}
	}
	for _, c := range bodies {
		c.Close() // the client leaves
	}
	deadline := time.Now().Add(10 * time.Second)
	for ended.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if ended.Load() != 3 {
		t.Fatalf("%d of 3 abandoned downloads ended upstream", ended.Load())
	}
	waitNoDownloads(t, b.srv)
	if tmp, _ := os.ReadDir(filepath.Join(b.store.Dir(), "tmp")); len(tmp) != 0 {
		t.Errorf("%d temp files left", len(tmp))
	}
}

// TestUploadQuota: upload sessions and their bytes are capped per owner
// and in all; past a cap the push is 429 and other owners go on.
func TestUploadQuota(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted, func(r *Repository, o *Options) {
		o.Uploads = UploadLimits{Sessions: 5, SessionsPerOwner: 3, Bytes: 1 << 20, BytesPerOwner: 64 << 10}
	})
	start := func() *http.Response {
		req, _ := http.NewRequest("POST", b.http.URL+"/v2/local/app/blobs/uploads/", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var loc string
	for i := 0; i < 4; i++ {
		resp := start()
		readAll(t, resp)
		switch {
		case i < 3 && resp.StatusCode != 202:
			t.Fatalf("session %d: %d", i, resp.StatusCode)
		case i == 3 && resp.StatusCode != 429:
			t.Fatalf("session past the per-owner cap: %d", resp.StatusCode)
		}
		if i == 0 {
			loc = resp.Header.Get("Location")
		}
	}
	req, _ := http.NewRequest("PATCH", b.http.URL+loc, strings.NewReader(strings.Repeat("x", 100<<10)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != 429 {
		t.Fatalf("a chunk past the per-owner bytes: %d", resp.StatusCode)
	}
	req, _ = http.NewRequest("PATCH", b.http.URL+loc, strings.NewReader(strings.Repeat("x", 10<<10)))
	resp, _ = http.DefaultClient.Do(req)
	readAll(t, resp)
	if resp.StatusCode != 202 || resp.Header.Get("Range") != "0-10239" {
		t.Fatalf("a chunk within the caps after a refused one: %d %s", resp.StatusCode, resp.Header.Get("Range"))
	}
}

// TestLoginThrottle: after repeated wrong passwords an address gets 429
// with Retry-After without a bcrypt comparison; failures are counted by
// reason; an unknown name is compared against a hash of a configured
// user's cost (its time does not tell it is unknown).
func TestLoginThrottle(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("right"), bcrypt.MinCost)
	b := newTestBerth(t, newFakeUpstream(t), func(r *Repository, o *Options) {
		r.AnonymousPull = false
		o.Auth.Users = []User{{Name: "alice", PasswordHash: hash, Pull: []string{"*"}}}
	})
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	var last *http.Response
	for i := 0; i < loginMaxPerAddr+3; i++ {
		last = b.get("GET", "/v2/", "Authorization", basic("alice", fmt.Sprint("wrong", i)))
		readAll(t, last)
		if i < loginMaxPerAddr && last.StatusCode != 401 {
			t.Fatalf("wrong password %d: %d", i, last.StatusCode)
		}
	}
	if last.StatusCode != 429 || last.Header.Get("Retry-After") == "" {
		t.Fatalf("after %d failures: %d, Retry-After %q", loginMaxPerAddr+3, last.StatusCode, last.Header.Get("Retry-After"))
	}
	// Even the right password waits: the lockout runs no bcrypt.
	if resp := b.get("GET", "/v2/", "Authorization", basic("alice", "right")); resp.StatusCode != 429 {
		t.Fatalf("right password while locked out: %d", resp.StatusCode)
	}
	if n := testutil.ToFloat64(b.srv.m.authFailures.WithLabelValues(failBadPassword)); n != loginMaxPerAddr {
		t.Errorf("bad_password failures %v, want %d", n, loginMaxPerAddr)
	}
	if n := testutil.ToFloat64(b.srv.m.authFailures.WithLabelValues(failThrottled)); n < 3 {
		t.Errorf("throttled failures %v, want >= 3", n)
	}
	known, _ := bcrypt.Cost(hash)
	for _, name := range []string{"bob", "mallory", "x"} {
		if c, err := bcrypt.Cost(b.srv.auth.dummyFor(name)); err != nil || c != known {
			t.Errorf("unknown %q is compared at cost %d, users have %d", name, c, known)
		}
	}
}

// TestLoginBcryptBounded: bcrypt runs in a bounded number of slots; a
// caller past the queue is refused (busy) rather than taking a CPU.
func TestLoginBcryptBounded(t *testing.T) {
	g := newLoginGuard()
	for i := 0; i < cap(g.queue); i++ {
		g.queue <- struct{}{}
	}
	hash, _ := bcrypt.GenerateFromPassword([]byte("x"), bcrypt.MinCost)
	if _, err := g.compare(context.Background(), hash, "x"); err != errLoginBusy {
		t.Fatalf("compare with a full queue: %v, want errLoginBusy", err)
	}
	for i := 0; i < cap(g.queue); i++ {
		<-g.queue
	}
	if ok, err := g.compare(context.Background(), hash, "x"); !ok || err != nil {
		t.Fatalf("compare: %v %v", ok, err)
	}
}

// TestAnonymousMetricsHidePrivate: anonymous /metrics shows nothing of a
// repository anonymous clients cannot pull (not even its name); a user
// with pull on it sees it.
func TestAnonymousMetricsHidePrivate(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	b := newTestBerth(t, newFakeUpstream(t), func(r *Repository, o *Options) {
		o.Repositories = append(o.Repositories, Repository{Name: "secret-team", Kind: KindHosted})
		o.Auth.Users = []User{{Name: "prom", PasswordHash: hash, Pull: []string{"secret-team"}}}
	})
	anon := string(readAll(t, b.get("GET", "/metrics")))
	if strings.Contains(anon, "secret-team") {
		t.Error("anonymous /metrics names a private repository")
	}
	if !strings.Contains(anon, `repository="hub"`) || !strings.Contains(anon, "go_goroutines") && !strings.Contains(anon, "berth_inflight_downloads") {
		t.Error("anonymous /metrics lost the public repository or berth's own series")
	}
	user := string(readAll(t, b.get("GET", "/metrics", "Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("prom:pw")))))
	if !strings.Contains(user, `repository="secret-team"`) {
		t.Error("a user with pull on the repository does not see its series")
	}
	if resp := b.get("GET", "/metrics", "Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("prom:bad"))); resp.StatusCode != 401 {
		t.Errorf("/metrics with a wrong password: %d", resp.StatusCode)
	}
}

// TestConnectionLimits: past the per-client bound a connection is
// answered 429 at once; the connections inside it are served.
func TestConnectionLimits(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: b.srv.Handler("hub")}
	go srv.Serve(b.srv.LimitListener(ln, ConnLimits{Max: 100, PerClient: 3}, true))
	defer srv.Close()
	var held []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		defer c.Close()
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if !strings.HasPrefix(line, "HTTP/1.1 429") {
		t.Fatalf("a connection past the cap got %q", line)
	}
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
		if err == nil && resp.StatusCode == 200 {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a freed place is not reused: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSlowBodyCut: a body that stops coming loses its connection at the
// deadline, while the server goes on serving.
func TestSlowBodyCut(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t))
	b.srv.bodyGrace = 300 * time.Millisecond
	c, err := net.Dial("tcp", b.host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\ngrant_type=")
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	io.Copy(io.Discard, c) // returns when berth closes the connection
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("a stalled body held its connection for %s", d)
	}
	if resp := b.get("GET", "/healthz"); resp.StatusCode != 200 {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
}

// FuzzAllowlistDial holds the allowlist's invariant for any ?ns= a client
// sends: either berth refuses it without making an upstream, or the host
// it dials (the upstream's URL) is exactly the canonical host that
// matched a pattern.
func FuzzAllowlistDial(f *testing.F) {
	for _, s := range []string{"ghcr.test", "127.0.0.1:18004#x.test", "x.test:443", "X.TEST.", "a@b.test", "[::1]:5000", "b.test%2f", "q.test/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ns string) {
		var dialled []string
		up := newFakeUpstream(t)
		b := newTestBerth(t, up, func(r *Repository, o *Options) {
			o.Repositories = append(o.Repositories, Repository{Name: "any", Kind: KindProxy, Hosts: []string{"*.test", "*.test:*"},
				AllowPrivateNetworks: true, AnonymousPull: true, TagTTL: time.Hour,
				NewUpstream: func(host reghost.Host, _ bool) (Upstream, error) {
					u := host.URL("http")
					dialled = append(dialled, u.Host)
					if !host.MatchAny([]string{"*.test", "*.test:*"}) {
						t.Fatalf("made an upstream for %q, which matches no pattern", u.Host)
					}
					return upstream.New(upstream.Options{URL: "http://127.0.0.1:1", Attempts: 1})
				}})
			o.Resolver = loopbackResolver{}
		})
		resp := b.get("GET", "/v2/org/app/manifests/v1?ns="+url.QueryEscape(ns))
		resp.Body.Close()
		for _, d := range dialled {
			h, err := reghost.Parse(ns)
			if err != nil || h.String() != d {
				t.Fatalf("?ns=%q dialled %q; the host parsed from ns is %q (%v)", ns, d, h, err)
			}
		}
	})
}

// loopbackResolver resolves every name to 127.0.0.1 (no DNS).
type loopbackResolver struct{}

func (loopbackResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
}

// TestTokenScopeKeepsNoHost: a token request naming allowlist hosts in
// its scopes resolves them but keeps none in the host table.
func TestTokenScopeKeepsNoHost(t *testing.T) {
	l := newAllowlistLab(t, true, "*.test")
	for i := 0; i < 20; i++ {
		resp := l.b.get("GET", fmt.Sprintf("/token?service=berth&scope=repository:h%d.test/org/app:pull", i))
		readAll(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("token: %d", resp.StatusCode)
		}
	}
	if n := l.b.srv.hosts.repos.Len(); n != 0 {
		t.Fatalf("%d hosts kept from token scopes alone", n)
	}
}
