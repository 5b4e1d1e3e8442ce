//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// generateClients runs berth clients for b (its config, its address) and
// returns the directory the files went to.
func generateClients(t *testing.T, b *berth) string {
	t.Helper()
	out := t.TempDir()
	run(t, time.Minute, nil, berthBin, "clients", "--config", filepath.Join(b.dir, "berth.toml"), "--url", "http://"+b.addr, "--out", out)
	return out
}

// TestGeneratedClientConfigs: the files berth clients writes, given as
// they are to Docker (daemon.json), containerd 1.6 (certs.d) and podman
// (registries.conf.d), make each pull through berth; containerd 2.x with
// crictl uses them in TestKubernetesNodePull.
func TestGeneratedClientConfigs(t *testing.T) {
	clientRow(t, "docker", "berth clients: daemon.json as written")
	clientRow(t, "containerd", "berth clients: certs.d as written (ctr --hosts-dir)")
	clientRow(t, "podman", "berth clients: registries.conf.d drop-in as written")
	up := startRegistry(t)
	want := up.push(t, "library/gen:v1", testImage(t, "amd64", 1, 64<<10)).String()
	b := startBerth(t, proxyConfig(up.proxy)+"ns_aliases = [\"docker.io\"]   # the lab stands in for Docker Hub\n")
	dir := generateClients(t, b)
	pulls := func() float64 { return b.metric(t, "berth_http_requests_total", `kind="manifest"`, `method="GET"`) }

	// Docker, with daemon.json as written.
	before := pulls()
	d := startDockerdArgs(t, "--config-file", filepath.Join(dir, "etc", "docker", "daemon.json"))
	d.docker(t, "pull", "library/gen:v1")
	if got := d.docker(t, "image", "inspect", "--format", "{{index .RepoDigests 0}}", "gen:v1"); !strings.Contains(got, want) {
		t.Errorf("docker pulled %s, want %s", got, want)
	}
	if pulls() <= before {
		t.Error("docker's pull did not go through berth")
	}

	// containerd 1.6, with certs.d as written.
	before = pulls()
	ctr := startContainerd(t)
	ctr("images", "pull", "--hosts-dir", filepath.Join(dir, "etc", "containerd", "certs.d"), "--snapshotter", "native", "docker.io/library/gen:v1")
	if out := ctr("images", "ls"); !strings.Contains(out, want) {
		t.Errorf("containerd pulled:\n%s\nwant %s", out, want)
	}
	if pulls() <= before {
		t.Error("containerd's pull did not go through berth")
	}

	// podman, with the registries.conf.d drop-in as written.
	before = pulls()
	home := t.TempDir()
	env := append([]string{"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(dir, "etc", "containers", "registries.conf.d", "50-berth.conf"), "HOME=" + home}, noNet...)
	storage := []string{"--root", home + "/root", "--runroot", home + "/run", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"}
	if out, errOut, err := runIn("", 3*time.Minute, env, "podman", append(storage, "pull", "--quiet", "docker.io/library/gen:v1")...); err != nil {
		t.Fatalf("podman pull: %v\n%s%s", err, out, errOut)
	}
	if out, _, _ := runIn("", time.Minute, env, "podman", append(storage, "image", "inspect", "--format", "{{.Digest}}", "docker.io/library/gen:v1")...); strings.TrimSpace(out) != want {
		t.Errorf("podman pulled %s, want %s", out, want)
	}
	if pulls() <= before {
		t.Error("podman's pull did not go through berth")
	}
	// berth doctor on the same files (with containerd's config_path, as
	// a node has it) finds every path through berth, and berth answering.
	os.WriteFile(filepath.Join(dir, "etc", "containerd", "config.toml"), []byte("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n"), 0o644)
	if out, err := runErr(time.Minute, nil, berthBin, "doctor", "--root", dir, "--url", "http://"+b.addr, "--image", "library/gen:v1"); err != nil || strings.Count(out, "OK ") != 6 {
		t.Errorf("berth doctor on the generated files: %v\n%s", err, out)
	}
	os.Remove(filepath.Join(dir, "etc", "containerd", "certs.d", "docker.io", "hosts.toml"))
	if out, err := runErr(time.Minute, nil, berthBin, "doctor", "--root", dir, "--url", "http://"+b.addr); err == nil || !strings.Contains(out, "no hosts.toml for docker.io") {
		t.Errorf("berth doctor without the hosts.toml: %v\n%s", err, out)
	}
	t.Logf("client × generated file: docker × %s, containerd 1.6 × %s, podman × %s, containerd 2.x + crictl × certs.d (TestKubernetesNodePull)",
		"/etc/docker/daemon.json", "/etc/containerd/certs.d/docker.io/hosts.toml", "/etc/containers/registries.conf.d/50-berth.conf")
}
