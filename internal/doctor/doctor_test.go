package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-registry/berth/internal/clientcfg"
)

func write(t *testing.T, root, p, content string) {
	t.Helper()
	full := filepath.Join(root, p)
	os.MkdirAll(filepath.Dir(full), 0o755)
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func levels(fs []Finding) map[string]Finding {
	m := map[string]Finding{}
	for _, f := range fs {
		m[f.Client+" "+f.Registry] = f
	}
	return m
}

// A node set up with berth clients' files (and containerd's config_path)
// pulls every registry through berth, but Docker's non-Hub pulls.
func TestNodeFromGeneratedFiles(t *testing.T) {
	root := t.TempDir()
	files, err := clientcfg.Generate(clientcfg.Options{URL: "http://edge.internal:5000", DockerMirror: true, Registries: []clientcfg.Registry{
		{Host: "docker.io", Upstream: "https://registry-1.docker.io", Repository: "hub"},
		{Host: "ghcr.io", Upstream: "https://ghcr.io", Repository: "ghcr"}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		write(t, root, f.Path, f.Content)
	}
	write(t, root, "etc/containerd/config.toml", `version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
`)
	fs, err := Check(Options{Root: root, URL: "http://edge.internal:5000", Registries: []string{"docker.io", "ghcr.io"}})
	if err != nil {
		t.Fatal(err)
	}
	m := levels(fs)
	for _, k := range []string{"docker docker.io", "containerd docker.io", "containerd ghcr.io", "podman docker.io", "podman ghcr.io", "k3s docker.io", "k3s ghcr.io"} {
		if m[k].Level != OK {
			t.Errorf("%s: %+v", k, m[k])
		}
	}
	if f := m["docker ghcr.io"]; f.Level != Warn || !strings.Contains(f.Why, "Docker mirrors Docker Hub only") {
		t.Errorf("docker ghcr.io: %+v", f)
	}
}

// The ways a node bypasses berth, each named with its fix.
func TestNodeThatBypassesBerth(t *testing.T) {
	root := t.TempDir()
	write(t, root, "etc/docker/daemon.json", `{"log-driver": "json-file"}`)
	write(t, root, "etc/containerd/config.toml", `version = 2
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["http://edge.internal:5000"]
`)
	write(t, root, "etc/containerd/certs.d/docker.io/hosts.toml", "server = \"https://registry-1.docker.io\"\n[host.\"http://edge.internal:5001\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
	write(t, root, "etc/containers/registries.conf", "unqualified-search-registries = [\"docker.io\"]\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n")
	write(t, root, "etc/rancher/k3s/registries.yaml", "mirrors:\n  docker.io:\n    endpoint:\n      - \"https://mirror.gcr.io\"\n")
	fs, err := Check(Options{Root: root, URL: "http://edge.internal:5000"})
	if err != nil {
		t.Fatal(err)
	}
	m := levels(fs)
	for k, want := range map[string]string{
		"docker docker.io":     "registry-mirrors does not name berth",
		"containerd docker.io": "config_path is not set",
		"podman docker.io":     "does not name berth",
		"k3s docker.io":        "does not name berth",
	} {
		if f := m[k]; f.Level != Bad || !strings.Contains(f.Why, want) || f.Fix == "" {
			t.Errorf("%s: %+v, want bad with %q and a fix", k, f, want)
		}
	}
	if !strings.Contains(m["docker docker.io"].Why, "does not read containerd's certs.d") || !strings.Contains(m["containerd docker.io"].Why, "deprecated registry.mirrors") {
		t.Errorf("the reasons leave out the likely cause: %+v / %+v", m["docker docker.io"], m["containerd docker.io"])
	}

	// config_path set (2.x layout): the hosts.toml names the wrong port.
	write(t, root, "etc/containerd/config.toml", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'\n")
	fs, _ = Check(Options{Root: root, URL: "http://edge.internal:5000"})
	if f := levels(fs)["containerd docker.io"]; f.Level != Bad || !strings.Contains(f.Why, "names http://edge.internal:5001, but berth is at edge.internal:5000") {
		t.Errorf("wrong port: %+v", f)
	}
	// Broken files are said to be broken.
	write(t, root, "etc/docker/daemon.json", `{"registry-mirrors": [`)
	fs, _ = Check(Options{Root: root, URL: "http://edge.internal:5000"})
	if f := levels(fs)["docker docker.io"]; f.Level != Bad || !strings.Contains(f.Why, "not JSON") {
		t.Errorf("broken daemon.json: %+v", f)
	}
	if _, err := Check(Options{Root: root, URL: "edge.internal:5000"}); err == nil {
		t.Error("a URL without a scheme accepted")
	}
}

// containerd 2.x: the transfer service takes config_path as one
// directory; a list (2.2's default) finds no hosts.toml.
func TestContainerdTransferService(t *testing.T) {
	root := t.TempDir()
	write(t, root, "etc/containerd/certs.d/docker.io/hosts.toml", "[host.\"http://edge.internal:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
	cases := map[string]struct{ config, level, want string }{
		"a list, transfer service":  {"version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n", Bad, "as one directory, not a list"},
		"one dir, transfer service": {"version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'\n", Warn, "use_local_image_pull = true"},
		"a list, local pull":        {"version = 3\n[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = true\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n", OK, "names berth"},
		"1.x":                       {"version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n", OK, "names berth"},
	}
	for name, c := range cases {
		write(t, root, "etc/containerd/config.toml", c.config)
		fs, _ := Check(Options{Root: root, URL: "http://edge.internal:5000"})
		if f := levels(fs)["containerd docker.io"]; f.Level != c.level || !strings.Contains(f.Why+" "+f.Fix, c.want) {
			t.Errorf("%s: %+v, want %s with %q", name, f, c.level, c.want)
		}
	}
}
