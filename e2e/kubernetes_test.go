//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKubernetesNodePull: containerd 2.4.2 with its CRI plugin (built from
// the Go module proxy by install-tools), a certs.d whose docker.io
// hosts.toml names berth, and multipart layer fetch on
// (concurrent_layer_fetch_buffer): crictl pulls as the kubelet would,
// against a cold cache. The image's digest is the upstream's, berth
// answered containerd's ranged chunks with 206s, and the upstream saw one
// GET per blob.
func TestKubernetesNodePull(t *testing.T) {
	clientRow(t, "containerd 2.x", "CRI pull with multipart layer fetch (ranged chunks), certs.d")
	clientRow(t, "crictl", "crictl pull and inspecti, as the kubelet")
	bin := filepath.Join(filepath.Dir(toolsBin), "containerd2")
	if !fileExists(filepath.Join(bin, "containerd")) || !fileExists(filepath.Join(bin, "crictl")) {
		t.Fatalf("containerd 2.x and crictl are not in %s: run make tools", bin)
	}
	up := startRegistry(t)
	img := testImage(t, "amd64", 2, 8<<20)
	want := up.push(t, "library/k8s:v1", img)
	b := startBerth(t, proxyConfig(up.proxy)+"ns_aliases = [\"docker.io\"]   # the lab stands in for Docker Hub\n")

	dir, err := os.MkdirTemp("/tmp", "c2") // short: the socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// certs.d as berth clients writes it, used as it is.
	certs := filepath.Join(generateClients(t, b), "etc", "containerd", "certs.d")
	sock := filepath.Join(dir, "c.sock")
	os.WriteFile(filepath.Join(dir, "config.toml"), []byte(fmt.Sprintf(`version = 3
root = %q
state = %q
[grpc]
  address = %q
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  # multipart layer fetch: ranged chunks of 1 MiB, 4 at a time
  max_concurrent_downloads = 4
  concurrent_layer_fetch_buffer = 1048576
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, certs)), 0o644)
	start(t, noNet, filepath.Join(bin, "containerd"), "--config", filepath.Join(dir, "config.toml"))
	crictl := func(args ...string) (string, error) {
		o, e, err := runIn("", 3*time.Minute, noNet, filepath.Join(bin, "crictl"),
			append([]string{"--runtime-endpoint", "unix://" + sock, "--image-endpoint", "unix://" + sock, "--timeout", "2m"}, args...)...)
		return o + e, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := crictl("images"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd's CRI did not answer")
		}
		time.Sleep(300 * time.Millisecond)
	}
	if out, err := crictl("pull", "docker.io/library/k8s:v1"); err != nil {
		t.Fatalf("crictl pull: %v\n%s", err, out)
	}
	out, errOut, err := runIn("", time.Minute, noNet, filepath.Join(bin, "crictl"),
		"--runtime-endpoint", "unix://"+sock, "--image-endpoint", "unix://"+sock, "inspecti", "-o", "json", "docker.io/library/k8s:v1")
	if err != nil {
		t.Fatalf("crictl inspecti: %v\n%s", err, errOut)
	}
	var insp struct {
		Status struct {
			RepoDigests []string `json:"repoDigests"`
		} `json:"status"`
	}
	json.Unmarshal([]byte(out), &insp)
	if len(insp.Status.RepoDigests) == 0 || !strings.HasSuffix(insp.Status.RepoDigests[0], "@"+want.String()) {
		t.Fatalf("crictl image digests %v, want %s\n%s", insp.Status.RepoDigests, want, out)
	}
	logs, _ := os.ReadFile(b.proc.log)
	ranged := 0
	for _, l := range strings.Split(string(logs), "\n") {
		if strings.Contains(l, "msg=request") && strings.Contains(l, "/blobs/") && strings.Contains(l, "status=206") {
			ranged++
		}
	}
	if ranged == 0 {
		t.Error("berth answered no ranged (206) blob request: containerd's multipart fetch did not reach it")
	}
	for _, l := range mustLayers(t, img) {
		if n := up.gets(l); n != 1 {
			t.Errorf("layer %s: %d upstream GETs, want 1", l, n)
		}
	}
	t.Logf("containerd 2.4.2 CRI pull through berth: %d ranged blob answers (206), 1 upstream GET per layer", ranged)
}
