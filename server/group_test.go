package server

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/store/storetest"
	"github.com/berth-registry/berth/upstream"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/prometheus/client_golang/prometheus"
)

type groupFixture struct {
	*testBerth
	pub, priv *fakeUpstream
}

// newGroupBerth: "hub" proxies pub (Docker Hub style), "private" proxies
// priv (bearer token with credentials), "local" is hosted, and "all" is a
// group of the three, pushing to local. The main listener serves "all".
func newGroupBerth(t *testing.T, pushTo string) *groupFixture {
	t.Helper()
	pub, priv := newFakeUpstream(t), newFakeUpstream(t)
	priv.token, priv.user, priv.pass = "tok", "robot", "secret"
	st := storetest.Open(t)
	client := func(up *fakeUpstream) *upstream.Client {
		c, err := upstream.New(upstream.Options{URL: up.srv.URL, Username: up.user, Password: up.pass, Attempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	o := Options{
		Repositories: []Repository{
			{Name: "hub", Kind: KindProxy, Upstream: client(pub), UpstreamHost: "registry-1.docker.io", DockerHub: true,
				TagTTL: time.Hour, NotFoundTTL: time.Minute, ServeStale: true, AnonymousPull: true},
			{Name: "private", Kind: KindProxy, Upstream: client(priv), UpstreamHost: strings.TrimPrefix(priv.srv.URL, "http://"),
				NSAliases: []string{"ghcr.io"}, TagTTL: time.Hour, NotFoundTTL: time.Minute, ServeStale: true, AnonymousPull: true},
			{Name: "local", Kind: KindHosted, AnonymousPull: true, AnonymousPush: true},
			{Name: "all", Kind: KindGroup, Members: []string{"local", "hub", "private"}, PushTo: pushTo, AnonymousPull: true},
		},
		DefaultRepository: "all", Store: st, Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(),
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler("all"))
	t.Cleanup(func() { hs.Close(); waitNoDownloads(t, s) })
	b := &testBerth{t: t, srv: s, http: hs, store: st, reg: o.Registry, host: strings.TrimPrefix(hs.URL, "http://")}
	return &groupFixture{testBerth: b, pub: pub, priv: priv}
}

func TestGroupPullOrderAndAuth(t *testing.T) {
	f := newGroupBerth(t, "local")
	pubShared := f.pub.push("shared/app", "v1", randomImage(t, 1024, 1))
	f.priv.push("shared/app", "v1", randomImage(t, 1024, 1))
	privOnly := f.priv.push("team/secret", "v1", randomImage(t, 2048, 2))
	libDigest := f.pub.push("library/nginx", "latest", randomImage(t, 512, 1))

	// The same name in two members: the first in order answers.
	if d, err := remote.Head(f.ref("shared/app:v1")); err != nil || d.Digest != pubShared {
		t.Fatalf("shared/app: %v %v, want %s", d, err, pubShared)
	}
	// Only the credentialed upstream has it.
	img, err := remote.Image(f.ref("team/secret:v1"))
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := img.Digest(); d != privOnly {
		t.Fatalf("team/secret digest %s", d)
	}
	before := f.pub.count("HEAD blob") + f.pub.count("GET blob")
	if err := validate.Image(img); err != nil {
		t.Fatal(err)
	}
	// Blobs went to the member that served the manifest, not to hub.
	if after := f.pub.count("HEAD blob") + f.pub.count("GET blob"); after != before {
		t.Errorf("blob requests reached the wrong member: %d", after-before)
	}
	// One-segment names get library/ for the Docker Hub member only.
	if d, err := remote.Head(f.ref("nginx:latest")); err != nil || d.Digest != libDigest {
		t.Fatalf("nginx: %v %v", d, err)
	}
	// Misses everywhere: 404 naming the members tried.
	resp := f.get("GET", "/v2/nothing/here/manifests/v1")
	var body errorBody
	json.Unmarshal(readAll(t, resp), &body)
	if resp.StatusCode != 404 || body.Errors[0].Code != codeManifestUnknown.name || !strings.Contains(body.Errors[0].Message, `group "all"`) {
		t.Fatalf("miss: %d %+v", resp.StatusCode, body)
	}
	detail, _ := json.Marshal(body.Errors[0].Detail)
	for _, m := range []string{"local", "hub", "private"} {
		if !strings.Contains(string(detail), `"member":"`+m+`"`) {
			t.Errorf("detail lacks %s: %s", m, detail)
		}
	}
}

func TestGroupMemberDown(t *testing.T) {
	f := newGroupBerth(t, "local")
	f.pub.push("only/pub", "v1", randomImage(t, 256, 1))
	want := f.priv.push("only/priv", "v1", randomImage(t, 256, 1))
	f.pub.srv.Close() // hub's upstream is down; nothing cached there
	d, err := remote.Head(f.ref("only/priv:v1"))
	if err != nil || d.Digest != want {
		t.Fatalf("a later member should answer: %v %v", d, err)
	}
	img, _ := remote.Image(f.ref("only/priv:v1"))
	if err := validate.Image(img); err != nil {
		t.Fatal(err)
	}
	resp := f.get("GET", "/v2/only/pub/manifests/v1")
	if resp.StatusCode != 404 || !strings.Contains(string(readAll(t, resp)), codeUnavailable.name) {
		t.Fatalf("down member: status %d", resp.StatusCode)
	}
}

func TestGroupPushAndTags(t *testing.T) {
	f := newGroupBerth(t, "local")
	f.pub.push("library/app", "u1", randomImage(t, 256, 1))
	// Push through the group (chunked uploads keep the client's prefix).
	img := randomImage(t, 300<<10, 2)
	if err := remote.Write(f.ref("app:h1"), img); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	// It landed in the hosted member and is pulled back through the group.
	for _, ref := range []string{"app:h1", "local/app:h1"} {
		d, err := remote.Head(f.ref(ref))
		if err != nil || d.Digest != want {
			t.Fatalf("%s: %v %v", ref, d, err)
		}
	}
	// Tags merge hosted and proxied ones.
	resp := f.get("GET", "/v2/app/tags/list")
	if got := string(readAll(t, resp)); got != `{"name":"app","tags":["h1","u1"]}` {
		t.Fatalf("merged tags: %s", got)
	}
	resp = f.get("GET", "/v2/app/tags/list?n=1")
	if got := string(readAll(t, resp)); got != `{"name":"app","tags":["h1"]}` || !strings.Contains(resp.Header.Get("Link"), "last=h1") {
		t.Fatalf("page: %s %q", got, resp.Header.Get("Link"))
	}
	// Through a path prefix the Location keeps the prefix.
	resp = f.do("POST", "/v2/all/app/blobs/uploads/", nil)
	readAll(t, resp)
	if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, "/v2/all/app/blobs/uploads/") {
		t.Fatalf("Location %q", loc)
	}
	// Catalog of the group merges the hosted images and what proxies cached.
	readAll(t, f.get("GET", "/v2/app/manifests/u1")) // cached by hub as library/app
	f.srv.Close()                                    // its commit ends
	resp = f.get("GET", "/v2/_catalog")
	if got := string(readAll(t, resp)); !strings.Contains(got, `"app"`) || !strings.Contains(got, `"library/app"`) {
		t.Fatalf("catalog %s", got)
	}
}

func TestGroupWithoutPushTo(t *testing.T) {
	f := newGroupBerth(t, "")
	resp := f.do("POST", "/v2/app/blobs/uploads/", nil)
	if resp.StatusCode != 405 || !strings.Contains(string(readAll(t, resp)), `group \"all\"`) {
		t.Fatalf("push to group without push_to: %d", resp.StatusCode)
	}
}

func TestRoutingRules(t *testing.T) {
	f := newGroupBerth(t, "local")
	pubD := f.pub.push("org/app", "v1", randomImage(t, 256, 1))
	privD := f.priv.push("org/app", "v1", randomImage(t, 256, 1))
	for _, tc := range []struct {
		path string
		want string
	}{
		{"/v2/org/app/manifests/v1", pubD.String()},                           // listener's group: hub first
		{"/v2/org/app/manifests/v1?ns=docker.io", pubD.String()},              // ns: Docker Hub names
		{"/v2/org/app/manifests/v1?ns=ghcr.io", privD.String()},               // ns alias
		{"/v2/private/org/app/manifests/v1", privD.String()},                  // repository name prefix
		{"/v2/registry-1.docker.io/org/app/manifests/v1", pubD.String()},      // upstream host prefix
		{"/v2/" + f.priv.srv.URL[7:] + "/org/app/manifests/v1", ""},           // host:port is not a valid path segment
		{"/v2/org/app/manifests/v1?ns=" + f.priv.srv.URL[7:], privD.String()}, // ns by host:port
		{"/v2/org/app/manifests/v1?ns=quay.io", ""},                           // unknown ns: 404
	} {
		resp := f.get("GET", tc.path)
		readAll(t, resp)
		got := resp.Header.Get("Docker-Content-Digest")
		if got != tc.want {
			t.Errorf("%s: %d digest %q, want %q", tc.path, resp.StatusCode, got, tc.want)
		}
	}
}

// TestGroupTagsFollowMemberStaleRule: a group lists a proxy member's tags
// with the proxy's own rule. While its upstream is down, a proxy that
// serves stale lends the tags it cached; one that does not is skipped
// like any member that cannot answer (the group used to fall back to the
// cache whatever serve_stale said).
func TestGroupTagsFollowMemberStaleRule(t *testing.T) {
	for _, stale := range []bool{true, false} {
		t.Run(map[bool]string{true: "serve_stale", false: "no_serve_stale"}[stale], func(t *testing.T) {
			up := newFakeUpstream(t)
			up.push("team/app", "v1", randomImage(t, 512, 1))
			st := storetest.Open(t)
			c, err := upstream.New(upstream.Options{URL: up.srv.URL, Attempts: 1})
			if err != nil {
				t.Fatal(err)
			}
			s, err := New(Options{
				Repositories: []Repository{
					{Name: "local", Kind: KindHosted, AnonymousPull: true, AnonymousPush: true},
					{Name: "p", Kind: KindProxy, Upstream: c, UpstreamHost: strings.TrimPrefix(up.srv.URL, "http://"),
						TagTTL: time.Hour, NotFoundTTL: time.Minute, ServeStale: stale, AnonymousPull: true},
					{Name: "g", Kind: KindGroup, Members: []string{"local", "p"}, PushTo: "local", AnonymousPull: true},
				},
				DefaultRepository: "g", Store: st, Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(),
			})
			if err != nil {
				t.Fatal(err)
			}
			hs := httptest.NewServer(s.Handler("g"))
			t.Cleanup(func() { hs.Close(); waitNoDownloads(t, s) })
			b := &testBerth{t: t, srv: s, http: hs, store: st, host: strings.TrimPrefix(hs.URL, "http://")}
			if _, err := remote.Image(b.ref("team/app:v1")); err != nil { // cached in p
				t.Fatal(err)
			}
			if err := remote.Write(b.ref("team/app:v9"), randomImage(t, 256, 1)); err != nil { // pushed to local
				t.Fatal(err)
			}
			up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				w.WriteHeader(http.StatusServiceUnavailable)
				return true
			})
			resp := b.do("GET", "/v2/team/app/tags/list", nil)
			var list struct{ Tags []string }
			if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("tags: %d %v", resp.StatusCode, err)
			}
			resp.Body.Close()
			want := []string{"v9"}
			if stale {
				want = []string{"v1", "v9"}
			}
			if strings.Join(list.Tags, ",") != strings.Join(want, ",") {
				t.Fatalf("tags %v, want %v", list.Tags, want)
			}
		})
	}
}
