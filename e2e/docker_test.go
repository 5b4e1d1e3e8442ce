//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// dockerd is a private Docker daemon (Debian's docker.io) with berth as its
// registry mirror. Its proxy variables point at a closed port so that a
// fallback to Docker Hub can never leave the machine.
type dockerd struct {
	env []string
}

func startDockerd(t *testing.T, mirror string) *dockerd {
	t.Helper()
	var args []string
	if mirror != "" {
		args = append(args, "--registry-mirror", "http://"+mirror)
	}
	return startDockerdArgs(t, args...)
}

// startDockerdArgs starts a private dockerd with more arguments.
func startDockerdArgs(t *testing.T, extra ...string) *dockerd {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "bd") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := "unix://" + dir + "/docker.sock"
	args := []string{"--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
		"--data-root", dir + "/data", "--exec-root", dir + "/exec", "--pidfile", dir + "/docker.pid", "-H", sock}
	start(t, noNet, "dockerd", append(args, extra...)...)
	// The CLI's config (docker login's credentials) stays with this
	// daemon: in ~/.docker it outlived the test, and skopeo, which reads
	// it too, sent a stale password to a later berth on the same port.
	d := &dockerd{env: append(noNet, "DOCKER_HOST="+sock, "DOCKER_CONFIG="+dir+"/cli")}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := runErr(10*time.Second, d.env, "docker", "version"); err == nil {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatal("dockerd did not start")
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func (d *dockerd) docker(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, 3*time.Minute, d.env, "docker", args...)
}

// TestDockerRegistryMirror is the seed scenario: a Docker daemon with
// registry-mirrors pulls "nginx"-style images through berth; the second
// pull is served from the cache; with the upstream down the cached tag and
// blobs still serve.
func TestDockerRegistryMirror(t *testing.T) {
	clientRow(t, "docker", "registry-mirrors: cold and warm pull, upstream down")
	up := startRegistry(t)
	img := testImage(t, "amd64", 3, 1<<20)
	want := up.push(t, "library/e2e-nginx:latest", img)
	b := startBerth(t, proxyConfig(up.proxy))
	d := startDockerd(t, b.addr)

	pull := func(ref string) {
		t.Helper()
		d.docker(t, "pull", ref)
		out := d.docker(t, "image", "inspect", "--format", "{{json .RepoDigests}}", ref)
		if !strings.Contains(out, want.String()) {
			t.Fatalf("%s: repo digests %s, want %s", ref, out, want)
		}
	}
	pull("e2e-nginx:latest") // through the mirror, as /v2/library/e2e-nginx/...
	// The manifest started the downloads of config and layers (eager
	// layers); docker's blob requests joined them or found them done.
	missesAfterFirst := b.metric(t, "berth_cache_results_total", `kind="blob"`, `result="miss"`) +
		b.metric(t, "berth_cache_results_total", `kind="blob"`, `result="coalesced"`) +
		b.metric(t, "berth_cache_results_total", `kind="blob"`, `result="hit"`)
	upBytes := b.metric(t, "berth_upstream_bytes_total")
	if missesAfterFirst != 4 { // config + 3 layers
		t.Errorf("first pull blob requests = %v, want 4", missesAfterFirst)
	}
	if n := b.metric(t, "berth_eager_downloads_total"); n < 1 || n > 4 {
		t.Errorf("berth_eager_downloads_total = %v, want 1 to 4 (of config + 3 layers; docker may start some first)", n)
	}
	for _, l := range mustLayers(t, img) {
		if n := up.gets(l); n != 1 {
			t.Errorf("blob %s: %d upstream GETs, want 1", l, n)
		}
	}
	d.docker(t, "rmi", "e2e-nginx:latest")
	pull("e2e-nginx:latest")
	hits := b.metric(t, "berth_cache_results_total", `kind="blob"`, `result="hit"`)
	if got := b.metric(t, "berth_upstream_bytes_total"); got != upBytes || hits < 3 {
		t.Errorf("second pull: upstream bytes %v → %v, blob hits %v; want no upstream bytes and hits", upBytes, got, hits)
	}
	t.Logf("docker pull twice: first pull blob requests %v, blob hits %v, bytes from cache %v", missesAfterFirst, hits,
		b.metric(t, "berth_served_bytes_total", `source="cache"`))

	// Directly by host, without library/ (Docker Hub style upstream).
	pull(b.addr + "/e2e-nginx:latest")

	// Upstream down: the cached tag is served stale, blobs from disk.
	up.setDown(true)
	time.Sleep(1100 * time.Millisecond)
	d.docker(t, "rmi", "e2e-nginx:latest", b.addr+"/e2e-nginx:latest")
	pull("e2e-nginx:latest")
	if n := b.metric(t, "berth_cache_results_total", `kind="manifest"`, `result="stale"`); n < 1 {
		t.Errorf("stale serves = %v", n)
	}
	fmt.Fprintln(os.Stderr, "docker mirror scenario ok")
}
