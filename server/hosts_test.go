package server

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/reghost"
	"github.com/berth-registry/berth/upstream"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// fakeResolver maps test host names to addresses (no DNS).
type fakeResolver map[string]string

func (f fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	a, ok := f[host]
	if !ok {
		return nil, fmt.Errorf("no such host %s", host)
	}
	return []netip.Addr{netip.MustParseAddr(a)}, nil
}

// allowlistLab is a berth whose "any" proxy serves hosts "*.test" (and
// bare IPs, "*"), each test host backed by a fake upstream; made counts
// the upstreams berth made (none may be made for a refused host).
type allowlistLab struct {
	b    *testBerth
	ups  map[string]*fakeUpstream
	made atomic.Int64
}

func newAllowlistLab(t *testing.T, allowPrivate bool, hosts ...string) *allowlistLab {
	l := &allowlistLab{ups: map[string]*fakeUpstream{"ghcr.test": newFakeUpstream(t), "quay.test": newFakeUpstream(t)}}
	res := fakeResolver{"ghcr.test": "127.0.0.1", "quay.test": "127.0.0.1", "loop.test": "127.0.0.1",
		"meta.test": "169.254.169.254", "lan.test": "10.1.2.3", "public.test": "93.184.216.34"}
	for i := 0; i < 20; i++ {
		res[fmt.Sprintf("h%d.test", i)] = "127.0.0.1"
	}
	first := newFakeUpstream(t) // "hub", the listener's default
	l.b = newTestBerth(t, first, func(r *Repository, o *Options) {
		o.Resolver = res
		o.Repositories = append(o.Repositories, Repository{Name: "any", Kind: KindProxy, Hosts: hosts, AllowPrivateNetworks: allowPrivate,
			TagTTL: time.Hour, NotFoundTTL: time.Minute, ServeStale: true, AnonymousPull: true,
			NewUpstream: func(host reghost.Host, plainHTTP bool) (Upstream, error) {
				l.made.Add(1)
				url := "http://127.0.0.1:1" // nothing listens: a public test host cannot be reached
				if up := l.ups[host.String()]; up != nil {
					url = up.srv.URL
				}
				return upstream.New(upstream.Options{URL: url, Attempts: 1, HeaderTimeout: 2 * time.Second})
			}})
	})
	return l
}

// TestAllowlistServesHostsApart: ?ns= and the path's first segment pick
// the registry; two hosts with the same image name stay apart.
func TestAllowlistServesHostsApart(t *testing.T) {
	l := newAllowlistLab(t, true, "*.test")
	dg := l.ups["ghcr.test"].push("org/app", "v1", randomImage(t, 1024, 1))
	dq := l.ups["quay.test"].push("org/app", "v1", randomImage(t, 2048, 1))
	for _, tc := range []struct{ path, want string }{
		{"/v2/org/app/manifests/v1?ns=ghcr.test", dg.String()},
		{"/v2/org/app/manifests/v1?ns=quay.test", dq.String()},
		{"/v2/ghcr.test/org/app/manifests/v1", dg.String()},
		{"/v2/any/quay.test/org/app/manifests/v1", dq.String()},
	} {
		resp := l.b.get("GET", tc.path)
		readAll(t, resp)
		if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != tc.want {
			t.Errorf("%s: %d %s, want %s", tc.path, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), tc.want)
		}
	}
	if _, err := remote.Image(l.b.ref("quay.test/org/app:v1")); err != nil {
		t.Errorf("pull by path: %v", err)
	}
	waitNoDownloads(t, l.b.srv)
	paths, _ := l.b.store.Repositories(context.Background(), "any/")
	if strings.Join(paths, " ") != "any/ghcr.test/org/app any/quay.test/org/app" {
		t.Errorf("store paths %v, want one per host", paths)
	}
	page := string(readAll(t, l.b.get("GET", "/")))
	for _, h := range []string{"any/ghcr.test", "any/quay.test"} {
		if !strings.Contains(page, h) {
			t.Errorf("status page lacks %s", h)
		}
	}
	made := l.made.Load()
	resp := l.b.get("GET", "/v2/org/app/manifests/v1?ns=registry.example.com")
	if resp.StatusCode != 404 || respCode(t, resp) != codeNameUnknown.name || l.made.Load() != made {
		t.Errorf("a host no pattern matches: %d, %d upstreams made", resp.StatusCode, l.made.Load()-made)
	}
}

// TestAllowlistRefusesPrivateHosts: a host that resolves to a loopback,
// private or metadata address, or is written as such an IP, is refused
// with 403 naming the rule, and berth makes no upstream for it (no dial);
// a public one passes the check.
func TestAllowlistRefusesPrivateHosts(t *testing.T) {
	l := newAllowlistLab(t, false, "*.test", "*")
	for _, ns := range []string{"loop.test", "meta.test", "lan.test", "127.0.0.1", "127.0.0.1:5000", "169.254.169.254", "[::1]:5000", "10.0.0.1"} {
		resp := l.b.get("GET", "/v2/org/app/manifests/v1?ns="+ns)
		body := string(readAll(t, resp))
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "allow_private_networks") {
			t.Errorf("?ns=%s: %d %s, want 403 naming allow_private_networks", ns, resp.StatusCode, body)
		}
	}
	if n := l.made.Load(); n != 0 {
		t.Fatalf("%d upstreams made for refused hosts", n)
	}
	if resp := l.b.get("GET", "/v2/org/app/manifests/v1?ns=public.test"); resp.StatusCode == http.StatusForbidden || l.made.Load() != 1 {
		t.Errorf("a public host: %d, %d upstreams made", resp.StatusCode, l.made.Load())
	}
}

// TestForwardNS: a proxy whose upstream is a mirror of many registries
// passes a ?ns= no other proxy answers on to it, keeping each namespace
// apart; without ns it asks without one.
func TestForwardNS(t *testing.T) {
	up := newFakeUpstream(t)
	d := up.push("library/app", "v1", randomImage(t, 1024, 1))
	var mu sync.Mutex
	var seen []string
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			mu.Lock()
			seen = append(seen, r.URL.Query().Get("ns"))
			mu.Unlock()
		}
		return false
	})
	b := newTestBerth(t, up, func(r *Repository, o *Options) {
		r.ForwardNS, r.DockerHub = true, true
		r.NewUpstream = func(ns reghost.Host, _ bool) (Upstream, error) {
			return upstream.New(upstream.Options{URL: up.srv.URL, Namespace: ns.String()})
		}
	})
	for _, p := range []string{"/v2/library/app/manifests/v1?ns=docker.io", "/v2/library/app/manifests/v1?ns=mirror.example", "/v2/app/manifests/v1"} {
		resp := b.get("GET", p)
		readAll(t, resp)
		if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d.String() {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		}
	}
	mu.Lock()
	got := strings.Join(seen, ",")
	mu.Unlock()
	if got != "docker.io,mirror.example," {
		t.Errorf("ns sent upstream: %q, want docker.io, mirror.example and none", got)
	}
	waitNoDownloads(t, b.srv)
	paths, _ := b.store.Repositories(context.Background(), "hub/")
	if strings.Join(paths, " ") != "hub/docker.io/library/app hub/library/app hub/mirror.example/library/app" {
		t.Errorf("store paths %v, want one per namespace", paths)
	}
}
