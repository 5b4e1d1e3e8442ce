//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
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
	// A berth that wants credentials: containerd's hosts.toml carries
	// them (berth clients --username), written 0600.
	hash, _ := bcrypt.GenerateFromPassword([]byte("node-pw"), bcrypt.MinCost)
	private := startBerth(t, strings.Replace(proxyConfig(up.proxy), `kind = "proxy"`, `kind = "proxy"
anonymous_pull = false
ns_aliases = ["docker.io"]`, 1)+fmt.Sprintf("\n[[user]]\nname = \"node\"\npassword_hash = %q\npull = [\"hub\"]\n", hash))
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte("node-pw\n"), 0o600)
	dir2 := t.TempDir()
	run(t, time.Minute, nil, berthBin, "clients", "--config", filepath.Join(private.dir, "berth.toml"), "--url", "http://"+private.addr, "--username", "node", "--password-file", pwFile, "--out", dir2)
	hostsFile := filepath.Join(dir2, "etc", "containerd", "certs.d", "docker.io", "hosts.toml")
	if st, err := os.Stat(hostsFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("hosts.toml with credentials: %v %v", st, err)
	}
	ctr("images", "rm", "docker.io/library/gen:v1")
	ctr("images", "pull", "--hosts-dir", filepath.Join(dir2, "etc", "containerd", "certs.d"), "--snapshotter", "native", "docker.io/library/gen:v1")
	if n := private.metric(t, "berth_http_requests_total", `kind="manifest"`, `code="200"`); n < 1 {
		t.Error("containerd's pull with the generated credentials did not go through the private berth")
	}
	t.Logf("client × generated file: docker × %s, containerd 1.6 × %s, podman × %s, containerd 2.x + crictl × certs.d (TestKubernetesNodePull)",
		"/etc/docker/daemon.json", "/etc/containerd/certs.d/docker.io/hosts.toml", "/etc/containers/registries.conf.d/50-berth.conf")
}
