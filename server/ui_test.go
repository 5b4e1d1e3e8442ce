package server

import (
	"strings"
	"testing"
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
