//go:build e2e

package e2e

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/bcrypt"
)

// TestWebUIWithKeyboard: the status page in headless Chromium, worked
// with the keyboard alone as an admin: search for an image (type, Enter),
// open it, delete a hosted tag through its confirmation, prefetch an
// image and collect garbage from the overview, approve a held image. A screenshot of each page
// goes to build/screenshots.
func TestWebUIWithKeyboard(t *testing.T) {
	clientRow(t, "chromium", "web UI by keyboard: search, delete a hosted tag, prefetch, gc, approve")
	up := startRegistry(t)
	up.push(t, "library/ui-cached:v1", testImage(t, "amd64", 1, 64<<10))
	hash, _ := bcrypt.GenerateFromPassword([]byte("root-pw"), bcrypt.MinCost)
	b := startBerth(t, proxyConfig(up.proxy)+fmt.Sprintf(`
[[repository]]
name = "local"
kind = "hosted"
anonymous_pull = true

[[repository]]
name = "quarantine"       # the same upstream, with new images held
kind = "proxy"
url = "http://%s"
library_prefix = true
policy = "aged"

[[policy]]
name = "aged"
min_age = "72h"

[[user]]
name = "root"
password_hash = %q
admin = true
pull = ["*"]
push = ["*"]
`, up.proxy, hash))
	root := authn.FromConfig(authn.AuthConfig{Username: "root", Password: "root-pw"})
	for _, tag := range []string{"v1", "v2"} {
		ref, _ := name.ParseReference(b.addr+"/local/team/webapp:"+tag, name.Insecure)
		if err := remote.Write(ref, testImage(t, "amd64", 1, 32<<10), remote.WithAuth(root)); err != nil {
			t.Fatal(err)
		}
	}
	base := "http://" + b.addr
	br := startBrowser(t, map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("root:root-pw"))})
	var shots []string

	// The overview, then search by keyboard: Tab to the box, type, Enter.
	br.open(base + "/")
	shots = append(shots, br.screenshot("ui-overview.png"))
	if n := br.tabTo("input#q"); n > 3 {
		t.Errorf("the search box is Tab %d, want among the first 3", n)
	}
	br.typeText("webapp")
	br.key("Enter")
	br.settle("/ui/search?q=webapp")
	shots = append(shots, br.screenshot("ui-search.png"))
	if !strings.Contains(br.text(), "team/webapp") {
		t.Fatalf("search page:\n%s", br.text())
	}
	// Into the image, by keyboard.
	br.tabTo(`a[href*="/ui/image?repo=local"]`)
	br.key("Enter")
	br.settle("/ui/image?repo=local&name=team/webapp")
	shots = append(shots, br.screenshot("ui-image.png"))
	if txt := br.text(); !strings.Contains(txt, "docker pull "+b.addr+"/local/team/webapp:v1") || !strings.Contains(txt, "crictl pull") {
		t.Errorf("image page lacks the pull commands:\n%s", txt)
	}
	// Delete v1: its link, the confirmation (the button has the focus), Enter.
	br.tabTo(`a[href*="action=delete-tag"][href$="tag=v1"]`)
	br.key("Enter")
	br.settle("/ui/confirm?action=delete-tag")
	shots = append(shots, br.screenshot("ui-confirm.png"))
	if br.eval("document.activeElement.tagName") != "BUTTON" {
		br.tabTo("button[type=submit]")
	}
	br.key("Enter")
	br.settle("/ui/action")
	shots = append(shots, br.screenshot("ui-done.png"))
	if !strings.Contains(br.text(), "Deleted the tag local/team/webapp:v1.") {
		t.Fatalf("after the delete:\n%s", br.text())
	}
	if tags := strings.Fields(run(t, time.Minute, nil, tool("crane"), "ls", "--insecure", b.addr+"/local/team/webapp")); strings.Join(tags, ",") != "v2" {
		t.Errorf("tags after the delete from the page: %v", tags)
	}

	// Prefetch from the overview's form, then collect garbage.
	br.open(base + "/")
	br.tabTo("input#image")
	br.typeText("hub/library/ui-cached:v1")
	br.key("Enter")
	br.settle("/ui/confirm?action=prefetch")
	br.focused("button[type=submit]")
	br.key("Enter") // the confirmation's button has the focus
	br.settle("/ui/action")
	if !strings.Contains(br.text(), "Prefetched hub/library/ui-cached:v1") {
		t.Fatalf("after the prefetch:\n%s", br.text())
	}
	br.open(base + "/")
	br.tabTo(`a[href="/ui/confirm?action=gc"]`)
	br.key("Enter")
	br.settle("/ui/confirm?action=gc")
	br.focused("button[type=submit]")
	br.key("Enter")
	br.settle("/ui/action")
	if !strings.Contains(br.text(), "Garbage collection deleted") {
		t.Fatalf("after gc:\n%s", br.text())
	}
	// Approve a held image from the "held & refused" page.
	held := b.addr + "/quarantine/library/ui-cached:v1"
	if out, err := runErr(time.Minute, nil, tool("crane"), "digest", "--insecure", held); err == nil || !strings.Contains(out, "quarantined") {
		t.Fatalf("a new image through the aged policy: %v\n%s", err, out)
	}
	br.open(base + "/ui/policy")
	shots = append(shots, br.screenshot("ui-held.png"))
	br.tabTo(`form[action="/ui/approve"] button`)
	br.key("Enter")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(br.text(), "approved") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := runErr(time.Minute, nil, tool("crane"), "digest", "--insecure", held); err != nil {
		t.Errorf("the approved image: %v\n%s", err, out)
	}
	for _, page := range []struct{ url, file string }{
		{base + "/ui/repository?name=local", "ui-repository.png"},
		{base + "/ui/clients", "ui-clients.png"},
		{base + "/ui/policy", "ui-policy.png"},
	} {
		br.open(page.url)
		shots = append(shots, br.screenshot(page.file))
	}
	t.Logf("screenshots: %s", strings.Join(shots, ", "))
}
