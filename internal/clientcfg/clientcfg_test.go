package clientcfg

import (
	"strings"
	"testing"
)

func byPath(files []File) map[string]File {
	m := map[string]File{}
	for _, f := range files {
		m[f.Path] = f
	}
	return m
}

func TestGenerate(t *testing.T) {
	o := Options{URL: "http://edge.internal:5000/", DockerMirror: true, Default: true, Registries: []Registry{
		{Host: "ghcr.io", Upstream: "https://ghcr.io", Repository: "ghcr"},
		{Host: "docker.io", Upstream: "https://registry-1.docker.io", Repository: "hub"},
	}}
	files, err := Generate(o)
	if err != nil {
		t.Fatal(err)
	}
	m := byPath(files)
	for path, want := range map[string][]string{
		"/etc/docker/daemon.json":                         {`"registry-mirrors": ["http://edge.internal:5000"]`, `"insecure-registries": ["edge.internal:5000"]`},
		"/etc/containerd/certs.d/docker.io/hosts.toml":    {`server = "https://registry-1.docker.io"`, `[host."http://edge.internal:5000"]`, `capabilities = ["pull", "resolve"]`},
		"/etc/containerd/certs.d/ghcr.io/hosts.toml":      {`server = "https://ghcr.io"`},
		"/etc/containerd/certs.d/_default/hosts.toml":     {`[host."http://edge.internal:5000"]`},
		"/etc/containers/registries.conf.d/50-berth.conf": {"prefix = \"docker.io\"\nlocation = \"docker.io\"", `location = "edge.internal:5000/hub"`, `location = "edge.internal:5000/ghcr"`, "insecure = true"},
		"/etc/rancher/k3s/registries.yaml":                {"\"docker.io\":\n    endpoint:\n      - \"http://edge.internal:5000\"", `"*":`},
		"kind-cluster.yaml":                               {`config_path = "/etc/containerd/certs.d"`, "containerPath: /etc/containerd/certs.d"},
	} {
		f, ok := m[path]
		if !ok {
			t.Errorf("no %s", path)
			continue
		}
		for _, w := range want {
			if !strings.Contains(f.Content, w) {
				t.Errorf("%s lacks %q:\n%s", path, w, f.Content)
			}
		}
		if f.Note == "" || f.Client == "" {
			t.Errorf("%s: no client or note", path)
		}
	}
	if strings.Contains(m["/etc/containerd/certs.d/_default/hosts.toml"].Content, "server =") {
		t.Error("_default names a server")
	}

	// https with a private CA, on a loopback address, no Docker Hub at
	// the root, no allowlist.
	files, err = Generate(Options{URL: "https://127.0.0.1:5443", CA: "/etc/berth/ca.crt", Registries: []Registry{{Host: "quay.io", Upstream: "https://quay.io", Repository: "quay"}}})
	if err != nil {
		t.Fatal(err)
	}
	m = byPath(files)
	if _, ok := m["/etc/docker/daemon.json"]; ok {
		t.Error("a daemon.json without a Docker Hub proxy at the root")
	}
	if _, ok := m["/etc/containerd/certs.d/_default/hosts.toml"]; ok {
		t.Error("_default without an allowlist")
	}
	if c := m["/etc/containerd/certs.d/quay.io/hosts.toml"].Content; !strings.Contains(c, `ca = "/etc/berth/ca.crt"`) {
		t.Errorf("hosts.toml without the CA:\n%s", c)
	}
	if c := m["/etc/containers/registries.conf.d/50-berth.conf"].Content; strings.Contains(c, "insecure") {
		t.Errorf("https marked insecure:\n%s", c)
	}
	if c := m["/etc/rancher/k3s/registries.yaml"].Content; !strings.Contains(c, "ca_file: \"/etc/berth/ca.crt\"") {
		t.Errorf("registries.yaml without the CA:\n%s", c)
	}
	for _, bad := range []string{"edge.internal:5000", "ftp://x", "http://x/path", "http://"} {
		if _, err := Generate(Options{URL: bad}); err == nil {
			t.Errorf("URL %q accepted", bad)
		}
	}
}

// Credentials go where a client can carry them, in files made secret.
func TestGenerateWithCredentials(t *testing.T) {
	files, err := Generate(Options{URL: "https://edge.internal:5000", Username: "node", Password: "s3cret", DockerMirror: true,
		Registries: []Registry{{Host: "docker.io", Upstream: "https://registry-1.docker.io", Repository: "hub"}}})
	if err != nil {
		t.Fatal(err)
	}
	m := byPath(files)
	hosts := m["/etc/containerd/certs.d/docker.io/hosts.toml"]
	if !strings.Contains(hosts.Content, `[host."https://edge.internal:5000".header]`) || !strings.Contains(hosts.Content, `authorization = "Basic bm9kZTpzM2NyZXQ="`) || !hosts.Secret {
		t.Errorf("hosts.toml:\n%s (secret %v)", hosts.Content, hosts.Secret)
	}
	k := m["/etc/rancher/k3s/registries.yaml"]
	if !strings.Contains(k.Content, "auth:\n      username: \"node\"\n      password: \"s3cret\"") || !k.Secret {
		t.Errorf("registries.yaml:\n%s", k.Content)
	}
	for _, p := range []string{"/etc/docker/daemon.json", "/etc/containers/registries.conf.d/50-berth.conf"} {
		if f := m[p]; strings.Contains(f.Content, "s3cret") || f.Secret || !strings.Contains(f.Note, "login") {
			t.Errorf("%s carries the password or says nothing of logging in: %+v", p, f)
		}
	}
}
