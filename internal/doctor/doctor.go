// Package doctor reads a node's container client configuration (Docker,
// containerd, podman and CRI-O, k3s and rke2) and says, for each registry
// berth proxies, whether that client's pulls go through berth, and if not
// why and how to fix it. berth doctor runs it on a node (or on a copy of
// a node's files, --root).
package doctor

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"go.yaml.in/yaml/v3"
)

// Levels of a finding.
const (
	OK   = "ok"
	Warn = "warn" // works, or cannot work by design, but worth knowing
	Bad  = "bad"  // pulls bypass berth
)

// Finding is what doctor says of one client and registry.
type Finding struct {
	Client   string `json:"client"`
	Registry string `json:"registry"`
	Level    string `json:"level"`
	Why      string `json:"why"`
	Fix      string `json:"fix,omitempty"`
}

// Options say where the node's files are and where berth is.
type Options struct {
	Root       string   // the node's root ("/")
	URL        string   // berth as the node reaches it: http(s)://host:port
	Registries []string // the registries berth proxies, as clients name them (docker.io, ghcr.io)
}

// Check reads the node's files and returns a finding per client found and
// registry.
func Check(o Options) ([]Finding, error) {
	u, err := url.Parse(o.URL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("berth's URL %q: want http(s)://host:port", o.URL)
	}
	if len(o.Registries) == 0 {
		o.Registries = []string{"docker.io"}
	}
	n := node{o: o, berth: u}
	var out []Finding
	for _, c := range []func() []Finding{n.docker, n.containerd, n.podman, n.k3s} {
		out = append(out, c()...)
	}
	return out, nil
}

type node struct {
	o     Options
	berth *url.URL
}

func (n node) path(p string) string { return filepath.Join(n.o.Root, p) }

func (n node) exists(p string) bool { _, err := os.Stat(n.path(p)); return err == nil }

// hostPort is u's host with its port made explicit.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return u.Host + ":443"
	}
	return u.Host + ":80"
}

// names compares an address a client names (a URL, or host[:port][/path])
// with berth: "same", "port" (same host, another port) or "".
func (n node) names(addr string) string {
	if !strings.Contains(addr, "://") {
		addr = n.berth.Scheme + "://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return ""
	}
	switch {
	case hostPort(u) == hostPort(n.berth):
		return "same"
	case strings.EqualFold(u.Hostname(), n.berth.Hostname()):
		return "port"
	}
	return ""
}

// verdict turns the addresses a client names for a registry into a
// finding.
func (n node) verdict(client, reg string, addrs []string, where, fix string) Finding {
	f := Finding{Client: client, Registry: reg}
	for _, a := range addrs {
		switch n.names(a) {
		case "same":
			f.Level, f.Why = OK, where+" names berth ("+a+")"
			return f
		case "port":
			f.Level, f.Why, f.Fix = Bad, where+" names "+a+", but berth is at "+n.berth.Host, "use "+n.berth.Host
			return f
		}
	}
	f.Level, f.Why, f.Fix = Bad, where+" does not name berth: pulls go to "+reg+" directly", fix
	return f
}

func (n node) docker() []Finding {
	const p = "etc/docker/daemon.json"
	if !n.exists(p) && !n.exists("etc/docker") {
		return nil
	}
	var cfg struct {
		Mirrors []string `json:"registry-mirrors"`
	}
	if b, err := os.ReadFile(n.path(p)); err == nil {
		if err := json.Unmarshal(b, &cfg); err != nil {
			return []Finding{{Client: "docker", Registry: "docker.io", Level: Bad, Why: "/" + p + " is not JSON: " + err.Error(), Fix: "fix the file; dockerd will not start with it"}}
		}
	}
	var out []Finding
	for _, reg := range n.o.Registries {
		if reg != "docker.io" {
			out = append(out, Finding{Client: "docker", Registry: reg, Level: Warn,
				Why: "Docker mirrors Docker Hub only, and ignores containerd's hosts.toml: pulls of " + reg + "/... go there directly",
				Fix: "name images " + n.berth.Host + "/<repository>/... on Docker hosts"})
			continue
		}
		f := n.verdict("docker", reg, cfg.Mirrors, "/"+p+" registry-mirrors", `add "registry-mirrors": ["`+n.berth.Scheme+"://"+n.berth.Host+`"] (berth clients writes it), then systemctl restart docker`)
		if f.Level == Bad && len(cfg.Mirrors) == 0 && n.exists("etc/containerd/certs.d/docker.io/hosts.toml") {
			f.Why += "; Docker Engine does not read containerd's certs.d (its own pulls use daemon.json only)"
		}
		out = append(out, f)
	}
	return out
}

// configPath is containerd's CRI config_path (1.x: version 2 config; 2.x:
// version 3) and whether the config sets the deprecated mirrors.
func configPath(cfg map[string]any) (path string, legacy bool) {
	plugins, _ := cfg["plugins"].(map[string]any)
	for _, name := range []string{"io.containerd.cri.v1.images", "io.containerd.grpc.v1.cri"} {
		p, _ := plugins[name].(map[string]any)
		reg, _ := p["registry"].(map[string]any)
		if v, ok := reg["config_path"].(string); ok && v != "" {
			path = v
		}
		if _, ok := reg["mirrors"]; ok {
			legacy = true
		}
	}
	return path, legacy
}

func (n node) containerd() []Finding {
	const p = "etc/containerd/config.toml"
	if !n.exists(p) {
		return nil
	}
	var cfg map[string]any
	if _, err := toml.DecodeFile(n.path(p), &cfg); err != nil {
		return []Finding{{Client: "containerd", Level: Bad, Why: "/" + p + " is not TOML: " + err.Error()}}
	}
	certs, legacy := configPath(cfg)
	var out []Finding
	if certs == "" {
		why := "config_path is not set in /" + p + ": containerd's CRI reads no hosts.toml"
		if legacy {
			why += " (it has the deprecated registry.mirrors, which containerd 2 dropped)"
		}
		for _, reg := range n.o.Registries {
			out = append(out, Finding{Client: "containerd", Registry: reg, Level: Bad, Why: why,
				Fix: `set config_path = "/etc/containerd/certs.d" under [plugins."io.containerd.grpc.v1.cri".registry] (1.x) or [plugins."io.containerd.cri.v1.images".registry] (2.x), restart containerd`})
		}
		return out
	}
	dirs := strings.Split(certs, ":")
	transfer := transferPull(cfg)
	for _, reg := range n.o.Registries {
		f := n.hostsTOML(reg, dirs)
		switch {
		case f.Level == OK && transfer && len(dirs) > 1:
			// containerd 2.1+ pulls through its transfer service, which
			// takes config_path as one directory (containerd#12415).
			f.Level, f.Why = Bad, "containerd 2.1+ pulls CRI images through its transfer service, which reads config_path "+certs+" as one directory, not a list: it finds no hosts.toml"
			f.Fix = `config_path = "` + dirs[0] + `" (one directory), or use_local_image_pull = true under [plugins."io.containerd.cri.v1.images"]`
		case f.Level == OK && transfer:
			f.Level = Warn
			f.Why += "; containerd 2.1+ pulls through its transfer service here, which some set-ups do not point at certs.d: if berth sees no pulls from this node, set use_local_image_pull = true under [plugins.\"io.containerd.cri.v1.images\"]"
		}
		out = append(out, f)
	}
	return out
}

// transferPull reports whether a containerd 2.x config (version 3) pulls
// CRI images through the transfer service (use_local_image_pull unset or
// false, the default from 2.1).
func transferPull(cfg map[string]any) bool {
	if v, _ := cfg["version"].(int64); v < 3 {
		return false
	}
	plugins, _ := cfg["plugins"].(map[string]any)
	images, _ := plugins["io.containerd.cri.v1.images"].(map[string]any)
	local, _ := images["use_local_image_pull"].(bool)
	return !local
}

// hostsTOML finds reg's hosts.toml (or _default's) in the certs.d dirs.
func (n node) hostsTOML(reg string, dirs []string) Finding {
	for _, name := range []string{reg, "_default"} {
		for _, d := range dirs {
			p := filepath.Join(d, name, "hosts.toml")
			var h struct {
				Host map[string]struct {
					Capabilities []string `toml:"capabilities"`
				} `toml:"host"`
			}
			if _, err := toml.DecodeFile(n.path(p), &h); os.IsNotExist(err) {
				continue
			} else if err != nil {
				return Finding{Client: "containerd", Registry: reg, Level: Bad, Why: p + " is not TOML: " + err.Error()}
			}
			var addrs []string
			for a, v := range h.Host {
				if len(v.Capabilities) == 0 || (slices.Contains(v.Capabilities, "pull") && slices.Contains(v.Capabilities, "resolve")) {
					addrs = append(addrs, a)
				}
			}
			slices.Sort(addrs)
			return n.verdict("containerd", reg, addrs, p, "name berth there with capabilities pull and resolve (berth clients writes it)")
		}
	}
	return Finding{Client: "containerd", Registry: reg, Level: Bad, Why: "no hosts.toml for " + reg + " or _default in " + strings.Join(dirs, ":"),
		Fix: "berth clients --out DIR writes etc/containerd/certs.d/" + reg + "/hosts.toml"}
}

func (n node) podman() []Finding {
	files, _ := filepath.Glob(n.path("etc/containers/registries.conf.d/*.conf"))
	if n.exists("etc/containers/registries.conf") {
		files = append([]string{n.path("etc/containers/registries.conf")}, files...)
	}
	if len(files) == 0 {
		return nil
	}
	type mirror struct {
		Location string `toml:"location"`
	}
	type registry struct {
		Prefix   string   `toml:"prefix"`
		Location string   `toml:"location"`
		Mirror   []mirror `toml:"mirror"`
	}
	byPrefix := map[string][]string{} // later files override earlier ones
	for _, f := range files {
		var c struct {
			Registry []registry `toml:"registry"`
		}
		if _, err := toml.DecodeFile(f, &c); err != nil {
			return []Finding{{Client: "podman", Level: Bad, Why: f + " is not TOML: " + err.Error()}}
		}
		for _, r := range c.Registry {
			prefix := r.Prefix
			if prefix == "" {
				prefix = r.Location
			}
			var locs []string
			for _, m := range r.Mirror {
				locs = append(locs, strings.SplitN(m.Location, "/", 2)[0])
			}
			byPrefix[prefix] = locs
		}
	}
	var out []Finding
	for _, reg := range n.o.Registries {
		out = append(out, n.verdict("podman", reg, byPrefix[reg], "registries.conf [[registry]] "+reg, "berth clients --out DIR writes etc/containers/registries.conf.d/50-berth.conf"))
	}
	return out
}

func (n node) k3s() []Finding {
	var out []Finding
	for _, dist := range []string{"k3s", "rke2"} {
		p := "etc/rancher/" + dist + "/registries.yaml"
		b, err := os.ReadFile(n.path(p))
		if err != nil {
			continue
		}
		var c struct {
			Mirrors map[string]struct {
				Endpoint []string `yaml:"endpoint"`
			} `yaml:"mirrors"`
		}
		if err := yaml.Unmarshal(b, &c); err != nil {
			out = append(out, Finding{Client: dist, Level: Bad, Why: "/" + p + " is not YAML: " + err.Error()})
			continue
		}
		for _, reg := range n.o.Registries {
			m, ok := c.Mirrors[reg]
			if !ok {
				m = c.Mirrors["*"]
			}
			out = append(out, n.verdict(dist, reg, m.Endpoint, "/"+p+" mirrors."+reg, "berth clients --out DIR writes etc/rancher/k3s/registries.yaml; restart "+dist))
		}
	}
	return out
}
