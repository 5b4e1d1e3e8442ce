//go:build e2e

package e2e

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestContainerImage: the image scripts/mkimage builds (as make image
// does, here for linux/amd64 only) is pushed into a running berth, pulled
// from it by a Docker daemon and run with --network host: its berth
// answers /v2/, as the non-root user, with its data on the volume.
func TestContainerImage(t *testing.T) {
	clientRow(t, "docker", "pull and run berth's own image from berth (--network host)")
	b := startBerth(t, `
[[repository]]
name = "local"
kind = "hosted"
anonymous_pull = true
anonymous_push = true   # a scratch registry for the test
`)
	ref := b.addr + "/local/berth:e2e"
	run(t, 3*time.Minute, []string{"CGO_ENABLED=0"}, "go", "run", "../scripts/mkimage", "-version", "e2e", "-push", ref, "-insecure",
		"linux/amd64="+berthBin)

	d := startDockerd(t, "")
	d.docker(t, "pull", ref)
	if user := strings.TrimSpace(d.docker(t, "image", "inspect", "--format", "{{.Config.User}}", ref)); user != "65532:65532" {
		t.Errorf("image user %q, want the non-root 65532:65532", user)
	}
	if vols := d.docker(t, "image", "inspect", "--format", "{{json .Config.Volumes}}", ref); !strings.Contains(vols, "/var/lib/berth") {
		t.Errorf("image volumes %s, want /var/lib/berth", vols)
	}
	// --network host and --listen 127.0.0.1:0: the container's berth
	// picks a free loopback port and logs it.
	id := strings.TrimSpace(d.docker(t, "run", "-d", "--network", "host", ref, "serve", "--config", "/etc/berth/berth.toml", "--listen", "127.0.0.1:0"))
	t.Cleanup(func() { runErr(time.Minute, d.env, "docker", "rm", "-f", id) })
	var addr string
	deadline := time.Now().Add(30 * time.Second)
	for addr == "" {
		logs, _ := runErr(30*time.Second, d.env, "docker", "logs", id)
		if m := regexp.MustCompile(`msg=listening addr=(\S+)`).FindStringSubmatch(logs); m != nil {
			addr = m[1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container's berth did not listen:\n%s", logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("/v2/ of the container's berth: %s %s", resp.Status, body)
	}
}
