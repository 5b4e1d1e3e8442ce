package server

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/clientcfg"
	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

func TestStatusPageAccess(t *testing.T) {
	f := newAuthBerth(t)
	f.pushAsAlice(t, "internal/team-a/app:v1")
	f.up.push("library/nginx", "latest", randomImage(t, 512, 1))
	readAll(t, f.get("GET", "/v2/library/nginx/manifests/latest", "Authorization", basic("bob", "bob-pw")))

	page := func(path string, hdr ...string) string {
		resp := f.get("GET", path, hdr...)
		body := string(readAll(t, resp))
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
		return body
	}
	anon := page("/")
	if !strings.Contains(anon, ">hub<") || strings.Contains(anon, ">internal<") {
		t.Fatalf("anonymous overview shows the wrong repositories:\n%s", anon)
	}
	if strings.Contains(anon, "<script") {
		t.Fatal("the status page has JavaScript")
	}
	alice := page("/", "Authorization", basic("alice", "alice-pw"))
	if !strings.Contains(alice, ">internal<") || !strings.Contains(alice, "signed in as alice") {
		t.Fatalf("alice's overview:\n%s", alice)
	}
	img := page("/ui/image?repo=internal&name=team-a/app", "Authorization", basic("alice", "alice-pw"))
	if !strings.Contains(img, ">v1<") || !strings.Contains(img, "sha256:") {
		t.Fatalf("image page:\n%s", img)
	}
	// Private pages are 404 to those who may not read them.
	for _, hdr := range [][]string{nil, {"Authorization", basic("bob", "bob-pw")}} {
		resp := f.get("GET", "/ui/image?repo=internal&name=team-a/app", hdr...)
		readAll(t, resp)
		if resp.StatusCode != 404 {
			t.Fatalf("private image page for %v: %d", hdr, resp.StatusCode)
		}
	}
	// Names are escaped, never interpreted.
	resp := f.get("GET", "/ui/image?repo=hub&name=%3Cscript%3E")
	if body := string(readAll(t, resp)); strings.Contains(body, "<script>") {
		t.Fatal("unescaped input in the page")
	}
	resp = f.get("GET", "/ui/login")
	readAll(t, resp)
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("Www-Authenticate"), "Basic") {
		t.Fatalf("login: %d", resp.StatusCode)
	}
}

// TestLookingIsNotPulling: the status page's views of an image leave its
// pull count and last access alone; a client pull moves them.
func TestLookingIsNotPulling(t *testing.T) {
	up := newFakeUpstream(t)
	want := up.push("app", "v1", randomImage(t, 256, 1))
	b := newTestBerth(t, up)
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	waitNoDownloads(t, b.srv)
	d := store.MustDigest(want.String())
	ctx := context.Background()
	hits := eventually(func() int64 { n, _ := b.store.Pulls(ctx, d); return n }, 1) // the cold pull, counted as its handler returns
	last := mustLastAccess(t, b.store, d)
	for _, p := range []string{"/", "/ui/repository?repo=hub", "/ui/image?repo=hub&name=app", "/ui/manifest?repo=hub&name=app&digest=" + d.String()} {
		if resp := b.get("GET", p); resp.StatusCode != 200 {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		} else {
			readAll(t, resp)
		}
	}
	if got, _ := b.store.Pulls(ctx, d); got != hits {
		t.Errorf("pulls %d after looking, %d before", got, hits)
	}
	if got := mustLastAccess(t, b.store, d); !got.Equal(last) {
		t.Errorf("last pulled moved from %v to %v by looking", last, got)
	}
	time.Sleep(time.Millisecond)
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	if got := eventually(func() int64 { n, _ := b.store.Pulls(ctx, d); return n }, hits+1); got != hits+1 {
		t.Errorf("a pull counted %d, want %d", got, hits+1)
	}
}

func mustLastAccess(t *testing.T, st *store.Store, d store.Digest) time.Time {
	t.Helper()
	at, err := st.LastAccess(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// TestGroupPageNamesItsMembers: a group's page points at its members
// instead of saying "nothing stored yet" while they hold content.
func TestGroupPageNamesItsMembers(t *testing.T) {
	f := newAuthBerth(t)
	f.up.push("library/nginx", "latest", randomImage(t, 512, 1))
	readAll(t, f.get("GET", "/v2/hub/library/nginx/manifests/latest"))
	resp := f.get("GET", "/ui/repository?repo=all")
	page := string(readAll(t, resp))
	if resp.StatusCode != 200 || strings.Contains(page, "nothing stored yet") || !strings.Contains(page, `href="/ui/repository?repo=hub"`) {
		t.Errorf("group page: %d\n%s", resp.StatusCode, page)
	}
}

// The client set-up page shows berth clients' files for the URL the
// reader came by, with the registries of repositories the reader may
// see only.
func TestStatusPageClients(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), func(_ *Repository, o *Options) {
		o.Repositories = append(o.Repositories, Repository{Name: "private", Kind: KindProxy, Upstream: &upstream.Client{}, UpstreamHost: "private.example"})
		o.Clients = &clientcfg.Options{DockerMirror: true, Registries: []clientcfg.Registry{
			{Host: "docker.io", Upstream: "https://registry-1.docker.io", Repository: "hub"},
			{Host: "private.example", Upstream: "https://private.example", Repository: "private"},
		}}
	})
	page := string(readAll(t, b.get(http.MethodGet, "/ui/clients")))
	for _, want := range []string{"/etc/containerd/certs.d/docker.io/hosts.toml", "[host.&#34;" + b.http.URL + "&#34;]", "registry-mirrors", b.host + "/hub"} {
		if !strings.Contains(page, want) {
			t.Errorf("client page lacks %q", want)
		}
	}
	if strings.Contains(page, "private.example") {
		t.Error("the page shows a repository anonymous readers may not pull")
	}
}
