//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPodmanAndBuildah: Debian's podman and buildah with a registries.conf
// that mirrors docker.io through berth, and a second berth as a
// digest-only mirror (pull-from-mirror = "digest-only"): pulls by tag and
// by digest get the upstream's digests; a runnable image runs with
// --network none; buildah builds from the image;
// with the first mirror gone, a pull by digest comes from the second and
// a pull by tag does not (it falls back to Docker Hub, which the sandbox
// cannot reach).
func TestPodmanAndBuildah(t *testing.T) {
	clientRow(t, "podman", "registries.conf mirror and digest-only mirror: pull by tag and digest; run --network none")
	clientRow(t, "buildah", "buildah from through a registries.conf mirror")
	up := startRegistry(t)
	want := up.push(t, "library/pb:v1", testImage(t, "amd64", 2, 128<<10))
	first, second := startBerth(t, proxyConfig(up.proxy)), startBerth(t, proxyConfig(up.proxy))
	dir := t.TempDir()
	conf := fmt.Sprintf(`[[registry]]
prefix = "docker.io"
location = "registry-1.docker.io"
[[registry.mirror]]
location = %q
insecure = true
[[registry.mirror]]
location = %q
insecure = true
pull-from-mirror = "digest-only"
`, first.addr, second.addr)
	os.WriteFile(filepath.Join(dir, "registries.conf"), []byte(conf), 0o644)
	env := append([]string{"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(dir, "registries.conf"), "HOME=" + dir}, noNet...)
	storage := []string{"--root", dir + "/root", "--runroot", dir + "/run", "--storage-driver", "vfs"}
	podman := func(args ...string) (string, error) {
		o, e, err := runIn("", 3*time.Minute, env, "podman", append(append(clone(storage), "--cgroup-manager", "cgroupfs", "--events-backend", "none"), args...)...)
		return o + e, err
	}
	if out, err := podman("pull", "--quiet", "docker.io/library/pb:v1"); err != nil {
		t.Fatalf("podman pull by tag: %v\n%s", err, out)
	}
	out, _ := podman("image", "inspect", "--format", "{{.Digest}}", "docker.io/library/pb:v1")
	if strings.TrimSpace(out) != want.String() {
		t.Fatalf("podman digest %s, want %s", out, want)
	}
	if n := first.metric(t, "berth_cache_results_total", `kind="manifest"`); n < 1 {
		t.Error("the tag pull did not go through the first mirror")
	}
	if out, err := podman("pull", "--quiet", "docker.io/library/pb@"+want.String()); err != nil {
		t.Fatalf("podman pull by digest: %v\n%s", err, out)
	}
	// A runnable image (berth's own, built by scripts/mkimage) runs from
	// the mirror with no network. runc here may not raise rlimits, so the
	// container gets lower ones than podman's defaults.
	run(t, 3*time.Minute, []string{"CGO_ENABLED=0"}, "go", "run", "../scripts/mkimage", "-version", "e2e-podman",
		"-push", up.addr+"/library/runnable:v1", "-insecure", "linux/amd64="+berthBin)
	if out, err := podman("run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
		"docker.io/library/runnable:v1", "version"); err != nil || !strings.Contains(out, "berth ") || !strings.Contains(out, "go go1.") { // berth version, run in the container
		t.Fatalf("podman run through the mirror: %v\n%s", err, out)
	}
	bo, be, err := runIn("", 3*time.Minute, env, "buildah", append(clone(storage), "from", "--pull-always", "docker.io/library/pb:v1")...)
	if err != nil {
		t.Fatalf("buildah from: %v\n%s%s", err, bo, be)
	}
	ctrName := strings.TrimSpace(bo)
	if got, _, _ := runIn("", time.Minute, env, "buildah", append(clone(storage), "inspect", "--format", "{{.FromImageDigest}}", ctrName)...); strings.TrimSpace(got) != want.String() {
		t.Errorf("buildah from: image digest %q, want %s", strings.TrimSpace(got), want)
	}

	// The first mirror goes away.
	first.proc.stop(syscall.SIGTERM, 20*time.Second)
	podman("rmi", "-a", "-f")
	before := second.metric(t, "berth_cache_results_total", `kind="manifest"`)
	if out, err := podman("pull", "--quiet", "docker.io/library/pb@"+want.String()); err != nil {
		t.Fatalf("pull by digest with the first mirror gone: %v\n%s", err, out)
	}
	if n := second.metric(t, "berth_cache_results_total", `kind="manifest"`); n <= before {
		t.Error("the digest pull did not come from the digest-only mirror")
	}
	if out, err := podman("pull", "--quiet", "docker.io/library/pb:v1"); err == nil || !strings.Contains(out, "registry-1.docker.io") {
		t.Errorf("a tag pull with only the digest-only mirror: %v, want a failure at Docker Hub itself:\n%s", err, out)
	}
}

// clone copies s, so appends to it never share its array.
func clone(s []string) []string { return append([]string{}, s...) }
