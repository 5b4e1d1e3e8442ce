//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// allowlistConfig: one proxy serving any registry on localhost (the lab's
// registries; a registry host because it has a port). Private networks
// are allowed in this test only: real configs keep the default.
const allowlistConfig = `default_repository = "any"

[[repository]]
name = "any"
kind = "proxy"
hosts = ["localhost:*"]
http_hosts = ["localhost:*"]
allow_private_networks = true   # the lab's registries are on loopback
`

// labHost is the registry host clients name for a lab registry:
// "localhost:<port>" of its counting proxy.
func labHost(u *upstreamRegistry) string {
	return "localhost:" + u.proxy[strings.LastIndex(u.proxy, ":")+1:]
}

// TestAllowlistContainerd: containerd with only _default/hosts.toml
// naming berth pulls images "from" two registry hosts; each arrives with
// its origin's digest, through berth (?ns=), kept apart.
func TestAllowlistContainerd(t *testing.T) {
	clientRow(t, "containerd", "ctr pull, only _default/hosts.toml: two registries through an allowlist proxy")
	one, two := startRegistry(t), startRegistry(t)
	d1 := one.push(t, "team/app:v1", testImage(t, "amd64", 2, 128<<10))
	d2 := two.push(t, "team/app:v1", testImage(t, "amd64", 1, 256<<10))
	b := startBerth(t, allowlistConfig)

	hostsDir := t.TempDir()
	os.MkdirAll(filepath.Join(hostsDir, "_default"), 0o755)
	os.WriteFile(filepath.Join(hostsDir, "_default", "hosts.toml"), []byte(fmt.Sprintf(`[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, b.addr)), 0o644)
	ctr := startContainerd(t)
	for _, tc := range []struct {
		up   *upstreamRegistry
		want string
	}{{one, d1.String()}, {two, d2.String()}} {
		host := labHost(tc.up)
		ref := host + "/team/app:v1"
		ctr("images", "pull", "--hosts-dir", hostsDir, "--snapshotter", "native", ref)
		if out := ctr("images", "ls"); !strings.Contains(out, tc.want) {
			t.Fatalf("%s: digest %s not in\n%s", ref, tc.want, out)
		}
		if n := b.metric(t, "berth_cache_results_total", `repository="any/`+host+`"`, `kind="manifest"`); n < 1 {
			t.Errorf("%s did not come through berth as any/%s", ref, host)
		}
	}
}

// portless serves up on addr (an "IP:80" of loopback's 127/8): a
// registry host without a port, as a path-prefix mirror must name it
// ("edge:5000/quay.io": a port is not allowed in a path segment).
func portless(t *testing.T, addr string, up *upstreamRegistry) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	target, _ := url.Parse("http://" + up.proxy)
	srv := &http.Server{Handler: httputil.NewSingleHostReverseProxy(target)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	host, _, _ := net.SplitHostPort(addr)
	return host
}

// TestAllowlistPodman: podman (Debian's) with registries.conf mirrors that
// put the host in the path (location = "berth/<host>") pulls from two
// registry hosts through berth.
func TestAllowlistPodman(t *testing.T) {
	clientRow(t, "podman", "registries.conf path-prefix mirrors: two registries through an allowlist proxy")
	one, two := startRegistry(t), startRegistry(t)
	d1 := one.push(t, "team/app:v1", testImage(t, "amd64", 1, 128<<10))
	d2 := two.push(t, "team/app:v1", testImage(t, "amd64", 1, 128<<10))
	h1, h2 := portless(t, "127.0.0.2:80", one), portless(t, "127.0.0.3:80", two)
	b := startBerth(t, strings.ReplaceAll(allowlistConfig, `"localhost:*"`, `"127.0.0.*"`))

	dir := t.TempDir()
	var conf strings.Builder
	for _, h := range []string{h1, h2} {
		fmt.Fprintf(&conf, `[[registry]]
prefix = %q
location = %q
insecure = true
[[registry.mirror]]
location = "%s/%s"
insecure = true

`, h, h, b.addr, h)
	}
	os.WriteFile(filepath.Join(dir, "registries.conf"), []byte(conf.String()), 0o644)
	env := append([]string{"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(dir, "registries.conf"), "HOME=" + dir}, noNet...)
	podman := func(args ...string) string {
		return run(t, 3*time.Minute, env, "podman", append([]string{"--root", dir + "/root", "--runroot", dir + "/run",
			"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"}, args...)...)
	}
	for _, tc := range []struct {
		host string
		want string
	}{{h1, d1.String()}, {h2, d2.String()}} {
		host := tc.host
		podman("pull", "--quiet", host+"/team/app:v1")
		if got := strings.TrimSpace(podman("image", "inspect", "--format", "{{.Digest}}", host+"/team/app:v1")); got != tc.want {
			t.Fatalf("%s: podman digest %s, want %s", host, got, tc.want)
		}
		if n := b.metric(t, "berth_cache_results_total", `repository="any/`+host+`"`, `kind="manifest"`); n < 1 {
			t.Errorf("%s did not come through berth (podman fell back to the origin?)", host)
		}
	}
}
