package server

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/internal/policy"
	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The pages to work in: pages of 100 images, search, pull commands, and
// an admin's actions behind a confirmation with a token: delete a hosted
// tag, collect garbage, prefetch.
func TestStatusPageWork(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("library/cached", "v1", randomImage(t, 512, 1))
	ev := &events{}
	b := newTestBerth(t, up, withHosted, withAudit(ev), func(_ *Repository, o *Options) {
		o.Repositories[len(o.Repositories)-1].AnonymousPush = false
		o.Auth.Users = []User{{Name: "root", PasswordHash: mustHash("root-pw"), Admin: true, Pull: []string{"*"}, Push: []string{"*"}},
			{Name: "bob", PasswordHash: mustHash("bob-pw"), Pull: []string{"*"}}}
	})
	root := authn.FromConfig(authn.AuthConfig{Username: "root", Password: "root-pw"})
	img := randomImage(t, 256, 1)
	for i := range 150 {
		if err := remote.Write(b.ref(fmt.Sprintf("local/team/app-%03d:v1", i)), img, remote.WithAuth(root)); err != nil {
			t.Fatal(err)
		}
	}
	get := func(path string, hdr ...string) string {
		t.Helper()
		resp := b.get(http.MethodGet, path, hdr...)
		body := string(readAll(t, resp))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
		return body
	}
	asRoot := []string{"Authorization", basic("root", "root-pw")}

	p1, p2 := get("/ui/repository?name=local"), get("/ui/repository?name=local&page=2")
	if strings.Count(p1, "/ui/image?repo=local") != 100 || !strings.Contains(p1, `rel="next"`) || strings.Count(p2, "/ui/image?repo=local") != 50 || !strings.Contains(p2, "page 2 of 2") {
		t.Errorf("pages: %d then %d images", strings.Count(p1, "/ui/image?repo=local"), strings.Count(p2, "/ui/image?repo=local"))
	}
	if s := get("/ui/search?q=APP-14"); strings.Count(s, "/ui/image?repo=local") != 10 || !strings.Contains(s, "team/app-149") {
		t.Errorf("search app-14: %d hits", strings.Count(s, "/ui/image?repo=local"))
	}
	page := get("/ui/image?repo=local&name=team/app-007", asRoot...)
	if !strings.Contains(page, "docker pull "+b.host+"/local/team/app-007:v1") || !strings.Contains(page, "crictl pull") {
		t.Error("the image page has no pull commands")
	}
	if !strings.Contains(page, "/ui/confirm?action=delete-tag") || strings.Contains(get("/ui/image?repo=local&name=team/app-007", "Authorization", basic("bob", "bob-pw")), "delete…") {
		t.Error("the delete link is not the admin's alone")
	}

	// Delete a tag: the confirmation's token, checked.
	confirm := get("/ui/confirm?action=delete-tag&repo=local&name=team/app-007&tag=v1", asRoot...)
	m := regexp.MustCompile(`name="token" value="([0-9a-f]+)"`).FindStringSubmatch(confirm)
	if m == nil || !strings.Contains(confirm, "Delete the tag local/team/app-007:v1?") {
		t.Fatalf("confirmation page:\n%s", confirm)
	}
	post := func(form url.Values, hdr ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, b.http.URL+"/ui/action", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(readAll(t, resp))
	}
	form := url.Values{"action": {"delete-tag"}, "repo": {"local"}, "name": {"team/app-007"}, "tag": {"v1"}, "token": {m[1]}}
	other := url.Values{"action": {"delete-tag"}, "repo": {"local"}, "name": {"team/app-008"}, "tag": {"v1"}, "token": {m[1]}}
	for what, c := range map[string]struct {
		form url.Values
		hdr  []string
	}{
		"no user":              {form, nil},
		"not an admin":         {form, []string{"Authorization", basic("bob", "bob-pw")}},
		"another site":         {form, append([]string{"Origin", "https://evil.example"}, asRoot...)},
		"the token of another": {other, asRoot},
		"no token":             {url.Values{"action": {"delete-tag"}, "repo": {"local"}, "name": {"team/app-007"}, "tag": {"v1"}}, asRoot},
		"a confirmation of gc": {url.Values{"action": {"gc"}, "token": {m[1]}}, asRoot},
	} {
		if code, _ := post(c.form, c.hdr...); code == http.StatusOK {
			t.Errorf("%s: the action was done", what)
		}
	}
	if code, body := post(form, append([]string{"Origin", b.http.URL}, asRoot...)...); code != http.StatusOK || !strings.Contains(body, "Deleted the tag local/team/app-007:v1.") {
		t.Fatalf("the confirmed delete: %d\n%s", code, body)
	}
	if tags, _ := b.store.Tags(t.Context(), "local/team/app-007"); len(tags) != 0 {
		t.Errorf("tags after the delete: %v", tags)
	}
	if d := ev.of(audit.Delete); len(d) != 1 || d[0].User != "root (status page)" || d[0].Tag != "v1" {
		t.Errorf("audit: %+v", d)
	}

	// Collect garbage, and prefetch an image of the proxy.
	for _, c := range []struct{ query, want string }{
		{"action=gc", "Garbage collection deleted"},
		{"action=prefetch&image=hub/library/cached:v1", "Prefetched hub/library/cached:v1"},
	} {
		page := get("/ui/confirm?"+c.query, asRoot...)
		m := regexp.MustCompile(`name="token" value="([0-9a-f]+)"`).FindStringSubmatch(page)
		q, _ := url.ParseQuery(c.query)
		q.Set("token", m[1])
		if code, body := post(q, asRoot...); code != http.StatusOK || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d\n%s", c.query, code, body)
		}
	}
	if up.count("GET manifest") == 0 {
		t.Error("the prefetch fetched nothing")
	}
}

// The image page says what a tag is: an index's platforms, its
// referrers, and the policy's verdict.
func TestImagePageDetails(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted, func(_ *Repository, o *Options) {
		p := policy.Policy{Name: "prod", Default: policy.Allow}
		if err := p.Check(); err != nil {
			t.Fatal(err)
		}
		o.Repositories[len(o.Repositories)-1].Policy = &p
	})
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: randomImage(t, 300, 1), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: randomImage(t, 300, 1), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}}})
	if err := remote.WriteIndex(b.ref("team/multi:v1"), idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	pushReferrer(t, b, "team/multi", d)
	if _, err := remote.Index(b.ref("team/multi:v1")); err != nil { // a pull: the policy decides
		t.Fatal(err)
	}
	page := string(readAll(t, b.get(http.MethodGet, "/ui/image?repo=local&name=team/multi")))
	for _, want := range []string{"platforms: linux/amd64, linux/arm/v7", "referrers: 1 × application/vnd.oci.image.config.v1&#43;json", "policy: allow by its rules (policy prod, rule default)"} {
		if !strings.Contains(page, want) {
			t.Errorf("image page lacks %q", want)
		}
	}
}
