package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAdminOnlyOnItsOwnListener: the public handler has no /admin
// endpoints, whoever asks (behind a reverse proxy every client is
// loopback); the admin handler has them, and its registry API acts with
// full rights on a private repository, as prefetch does.
func TestAdminOnlyOnItsOwnListener(t *testing.T) {
	f := newAuthBerth(t)
	f.pushAsAlice(t, "internal/team-a/app:v1")
	for _, c := range []struct{ method, path string }{
		{"POST", "/admin/gc"}, {"GET", "/admin/ls"}, {"POST", "/admin/prefetch"},
	} {
		resp := f.get(c.method, c.path)
		readAll(t, resp)
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("public %s %s: %d", c.method, c.path, resp.StatusCode)
		}
	}
	admin := httptest.NewServer(f.srv.AdminHandler("internal"))
	defer admin.Close()
	resp, err := http.Get(admin.URL + "/admin/ls")
	if err != nil {
		t.Fatal(err)
	}
	body := string(readAll(t, resp))
	if resp.StatusCode != 200 || !strings.Contains(body, "team-a/app") {
		t.Errorf("admin ls: %d %s", resp.StatusCode, body)
	}
	resp, err = http.Get(admin.URL + "/v2/internal/team-a/app/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Errorf("private manifest over the admin listener: %d", resp.StatusCode)
	}
	resp = f.get("GET", "/v2/internal/team-a/app/manifests/v1")
	readAll(t, resp)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("private manifest on the public listener without credentials: %d", resp.StatusCode)
	}
}

// TestAdminListUnknownRepository: berth ls and import ask the admin
// listener about a repository; one that does not exist is 404 naming the
// ones that do, not an empty list.
func TestAdminListUnknownRepository(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted)
	admin := httptest.NewServer(b.srv.AdminHandler("local"))
	defer admin.Close()
	resp, err := http.Get(admin.URL + "/admin/ls?filter=nosuch")
	if err != nil {
		t.Fatal(err)
	}
	body := string(readAll(t, resp))
	if resp.StatusCode != 404 || !strings.Contains(body, `no repository \"nosuch\"`) || !strings.Contains(body, "local") {
		t.Fatalf("ls of an unknown repository: %d %s", resp.StatusCode, body)
	}
	resp, _ = http.Get(admin.URL + "/admin/ls?filter=local")
	if readAll(t, resp); resp.StatusCode != 200 {
		t.Fatalf("ls of a known repository: %d", resp.StatusCode)
	}
}
