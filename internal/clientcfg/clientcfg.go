// Package clientcfg writes the configuration each kind of client needs to
// pull through berth: Docker's daemon.json, containerd's certs.d
// hosts.toml files, podman's and CRI-O's registries.conf, k3s' and rke2's
// registries.yaml and a kind cluster's config. berth clients prints or
// writes them; the status page shows them.
package clientcfg

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
)

// Registry is a registry berth proxies: clients that name Host are sent
// to berth.
type Registry struct {
	Host       string // as clients name it: docker.io, ghcr.io, registry.lab:5000
	Upstream   string // its own URL (https://registry-1.docker.io): the fallback
	Repository string // the berth repository that proxies it (a path prefix)
}

// Options describe berth as its clients see it.
type Options struct {
	// URL is berth's address for clients: http(s)://host[:port].
	URL string
	// Registries are the proxied registries, by the names clients use.
	Registries []Registry
	// Default: berth answers any registry (an allowlist or forward_ns
	// proxy): containerd's _default and k3s' "*" send them all to it.
	Default bool
	// DockerMirror: berth's root serves Docker Hub images (its default
	// repository proxies Docker Hub), as Docker's registry-mirrors needs.
	DockerMirror bool
	// CA is where berth's CA certificate is on a node (https with a
	// private CA; "" for none).
	CA string
	// Username and Password are a berth user's, for a berth whose
	// repositories do not allow anonymous pulls (mirrors get no
	// credentials from their clients): written into the files that can
	// carry them.
	Username, Password string
}

// File is one generated file: Path is where it goes on a node.
type File struct {
	Client  string `json:"client"`
	Path    string `json:"path"`
	Content string `json:"content"`
	Note    string `json:"note,omitempty"`   // what to do after writing it
	Secret  bool   `json:"secret,omitempty"` // it holds credentials: mode 0600
}

// Generate returns the files for every client kind.
func Generate(o Options) ([]File, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("berth's URL %q: want http(s)://host[:port]", o.URL)
	}
	o.URL = u.Scheme + "://" + u.Host
	regs := slices.Clone(o.Registries)
	slices.SortFunc(regs, func(a, b Registry) int { return strings.Compare(a.Host, b.Host) })
	var files []File
	if f, ok := docker(o, u); ok {
		files = append(files, f)
	}
	files = append(files, containerd(o, regs)...)
	files = append(files, podman(o, u, regs), k3s(o, u, regs), kind())
	for i := range files {
		files[i].Secret = o.Username != "" && (files[i].Client == "containerd" || files[i].Client == "k3s")
	}
	return files, nil
}

// insecure reports whether clients must be told berth speaks plain HTTP
// (Docker treats 127.0.0.0/8 as insecure by itself).
func insecure(u *url.URL) bool { return u.Scheme == "http" }

func loopback(host string) bool {
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

func docker(o Options, u *url.URL) (File, bool) {
	if !o.DockerMirror {
		return File{}, false
	}
	var b strings.Builder
	fmt.Fprintf(&b, "{\n  \"registry-mirrors\": [%q]", o.URL)
	if insecure(u) && !loopback(u.Hostname()) {
		fmt.Fprintf(&b, ",\n  \"insecure-registries\": [%q]", u.Host)
	}
	b.WriteString("\n}\n")
	note := "merge into an existing daemon.json, then: systemctl restart docker. Docker mirrors Docker Hub only; pull other registries as " + u.Host + "/<repository>/<image>."
	if o.Username != "" {
		note += " Docker sends a mirror no credentials: the Docker Hub proxy needs anonymous_pull = true for it (docker login " + u.Host + " covers pulls named " + u.Host + "/...)."
	}
	if o.CA != "" {
		note += " Put berth's CA in /etc/docker/certs.d/" + u.Host + "/ca.crt."
	}
	return File{Client: "docker", Path: "/etc/docker/daemon.json", Content: b.String(), Note: note}, true
}

// hostsTOML is containerd's hosts.toml sending pulls of a registry to
// berth (server: the registry itself, for what berth cannot answer).
func hostsTOML(o Options, server string) string {
	var b strings.Builder
	if server != "" {
		fmt.Fprintf(&b, "server = %q\n\n", server)
	}
	fmt.Fprintf(&b, "[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", o.URL)
	if o.CA != "" {
		fmt.Fprintf(&b, "  ca = %q\n", o.CA)
	}
	if o.Username != "" {
		fmt.Fprintf(&b, "  [host.%q.header]\n    authorization = %q\n", o.URL, "Basic "+base64.StdEncoding.EncodeToString([]byte(o.Username+":"+o.Password)))
	}
	return b.String()
}

func containerd(o Options, regs []Registry) []File {
	note := "containerd reads certs.d only with config_path set: containerd 1.6/1.7 [plugins.\"io.containerd.grpc.v1.cri\".registry] config_path = \"/etc/containerd/certs.d\"; " +
		"2.x [plugins.\"io.containerd.cri.v1.images\".registry] config_path = \"/etc/containerd/certs.d\" (restart containerd after setting it; hosts.toml files are read per pull)"
	var files []File
	for _, r := range regs {
		files = append(files, File{Client: "containerd", Path: "/etc/containerd/certs.d/" + r.Host + "/hosts.toml", Content: hostsTOML(o, r.Upstream), Note: note})
	}
	if o.Default {
		files = append(files, File{Client: "containerd", Path: "/etc/containerd/certs.d/_default/hosts.toml", Content: hostsTOML(o, ""), Note: note})
	}
	return files
}

func podman(o Options, u *url.URL, regs []Registry) File {
	var b strings.Builder
	b.WriteString("# Pulls of these registries go to berth first (CRI-O and podman read\n# registries.conf.d; skopeo and buildah too).\n")
	for _, r := range regs {
		location := strings.TrimPrefix(strings.TrimPrefix(r.Upstream, "https://"), "http://")
		if r.Host == "docker.io" {
			location = "docker.io"
		}
		fmt.Fprintf(&b, "\n[[registry]]\nprefix = %q\nlocation = %q\n[[registry.mirror]]\nlocation = %q\n", r.Host, location, u.Host+"/"+r.Repository)
		if insecure(u) {
			b.WriteString("insecure = true\n")
		}
	}
	note := "the mirror location names berth's repository as a path prefix; podman pull docker.io/library/nginx then asks berth. For berth's CA: /etc/containers/certs.d/" + u.Host + "/ca.crt"
	if o.Username != "" {
		note += ". Credentials: podman login " + u.Host + " (CRI-O: the kubelet's pull secret, or /etc/containers/auth.json)"
	}
	return File{Client: "podman", Path: "/etc/containers/registries.conf.d/50-berth.conf", Content: b.String(), Note: note}
}

func k3s(o Options, u *url.URL, regs []Registry) File {
	var b strings.Builder
	b.WriteString("mirrors:\n")
	hosts := make([]string, 0, len(regs)+1)
	for _, r := range regs {
		hosts = append(hosts, r.Host)
	}
	if o.Default {
		hosts = append(hosts, "*")
	}
	for _, h := range hosts {
		fmt.Fprintf(&b, "  %q:\n    endpoint:\n      - %q\n", h, o.URL)
	}
	if o.CA != "" || o.Username != "" {
		fmt.Fprintf(&b, "configs:\n  %q:\n", u.Host)
	}
	if o.Username != "" {
		fmt.Fprintf(&b, "    auth:\n      username: %q\n      password: %q\n", o.Username, o.Password)
	}
	if o.CA != "" {
		fmt.Fprintf(&b, "    tls:\n      ca_file: %q\n", o.CA)
	}
	return File{Client: "k3s", Path: "/etc/rancher/k3s/registries.yaml", Content: b.String(),
		Note: "k3s and rke2 (/etc/rancher/rke2/registries.yaml) read it at start: systemctl restart k3s (or rke2-server / rke2-agent)"}
}

func kind() File {
	return File{Client: "kind", Path: "kind-cluster.yaml", Content: `kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
nodes:
  - role: control-plane
    extraMounts:
      - hostPath: ./etc/containerd/certs.d
        containerPath: /etc/containerd/certs.d
`, Note: "kind create cluster --config kind-cluster.yaml, from the directory berth clients --out wrote (the nodes mount its certs.d)"}
}
