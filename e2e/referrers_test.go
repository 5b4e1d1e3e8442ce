//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReferrersThroughProxy: an artifact attached upstream with oras
// (subject: an image) is listed through berth by oras discover and regctl
// artifact list and fetched by oras pull; with the upstream stopped,
// discover still answers from the cache; a tag-schema signature pushed
// with crane is pulled through berth by its tag.
func TestReferrersThroughProxy(t *testing.T) {
	clientRow(t, "oras", "attach upstream; discover and pull through a proxy, upstream down")
	clientRow(t, "regctl", "artifact list through a proxy")
	up := startRegistry(t)
	d := up.push(t, "library/signed:v1", testImage(t, "amd64", 1, 64<<10))
	b := startBerth(t, proxyConfig(up.proxy))
	home := t.TempDir()
	env := []string{"HOME=" + home}
	work := t.TempDir()
	sigFile := filepath.Join(work, "sig.txt")
	os.WriteFile(sigFile, []byte("signed by the e2e test\n"), 0o644)

	// Attach upstream, directly.
	out, errOut, err := runIn(work, time.Minute, env, tool("oras"), "attach", "--plain-http", "--artifact-type", "application/vnd.example.sig",
		"--format", "json", up.addr+"/library/signed:v1", filepath.Base(sigFile)+":text/plain")
	var attached struct {
		Digest string `json:"digest"`
	}
	if err != nil || json.Unmarshal([]byte(out), &attached) != nil || attached.Digest == "" {
		t.Fatalf("oras attach: %v\n%s%s", err, out, errOut)
	}

	ref := b.addr + "/signed:v1"
	run(t, time.Minute, env, tool("crane"), "manifest", "--insecure", ref) // a client pulled the image through berth
	discover := func() string {
		t.Helper()
		return run(t, time.Minute, env, tool("oras"), "discover", "--plain-http", "--format", "json", ref)
	}
	if out := discover(); !strings.Contains(out, attached.Digest) {
		t.Fatalf("oras discover through berth does not list %s:\n%s", attached.Digest, out)
	}
	run(t, time.Minute, env, tool("regctl"), "registry", "set", "--tls", "disabled", b.addr)
	if out := run(t, time.Minute, env, tool("regctl"), "artifact", "list", "--format", "{{json .}}", ref); !strings.Contains(out, attached.Digest) {
		t.Fatalf("regctl artifact list through berth does not list %s:\n%s", attached.Digest, out)
	}
	pulled := t.TempDir()
	run(t, time.Minute, env, tool("oras"), "pull", "--plain-http", "-o", pulled, b.addr+"/signed@"+attached.Digest)
	if got, _ := os.ReadFile(filepath.Join(pulled, "sig.txt")); string(got) != "signed by the e2e test\n" {
		t.Fatalf("oras pull through berth: %q", got)
	}

	// A tag-schema signature (cosign's sha256-<hex>.sig), pushed with crane.
	sigTag := "sha256-" + d.Hex + ".sig"
	want := up.push(t, "library/signed:"+sigTag, testImage(t, "amd64", 1, 1024))
	if got := strings.TrimSpace(run(t, time.Minute, env, tool("crane"), "digest", "--insecure", b.addr+"/signed:"+sigTag)); got != want.String() {
		t.Fatalf("tag-schema signature through berth: %s, want %s", got, want)
	}

	// Upstream stopped: the referrers come from the cache.
	up.setDown(true)
	time.Sleep(1100 * time.Millisecond) // past tag_ttl
	if out := discover(); !strings.Contains(out, attached.Digest) {
		t.Fatalf("oras discover with the upstream down:\n%s", out)
	}
}
