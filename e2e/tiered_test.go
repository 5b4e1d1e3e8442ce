//go:build e2e

package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/faultproxy"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// TestTiered: examples/tiered as written, with two lab registries as the
// origins (standing in for Docker Hub and GHCR at the regional tier).
// containerd with only _default/hosts.toml naming the site pulls from
// both registries through both tiers (forward_ns, no ns_aliases at the
// site); a HEAD of an uncached blob at the site answers with its size;
// 20 concurrent cold pulls at the site make one origin GET per blob; an
// origin's 429 with Retry-After reaches the client; with the regional tier
// down the site serves what it cached.
func TestTiered(t *testing.T) {
	clientRow(t, "containerd", "ctr pull through two tiers (_default/hosts.toml, forward_ns)")
	hub, ghcr := startRegistry(t), startRegistry(t)
	tierImg := testImage(t, "amd64", 2, 256<<10)
	tierDigest := hub.push(t, "library/tier:v1", tierImg)
	toolDigest := ghcr.push(t, "team/tool:v1", testImage(t, "amd64", 1, 128<<10))
	coldImg := testImage(t, "amd64", 3, 512<<10)
	hub.push(t, "library/cold:v1", coldImg)
	hub.push(t, "library/limited:v1", testImage(t, "amd64", 1, 1024))
	fp, err := faultproxy.Start(hub.proxy) // the origin's own faults (429)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fp.Close() })

	read := func(f string) string {
		b, err := os.ReadFile(filepath.Join("../examples/tiered", f))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	regional := startBerth(t, strings.NewReplacer(
		`url = "https://registry-1.docker.io"   # answers ?ns=docker.io`,
		`url = "http://`+fp.Addr()+`"
ns_aliases = ["docker.io"]   # the lab stands in for Docker Hub
library_prefix = true`,
		`url = "https://ghcr.io"                # answers ?ns=ghcr.io`,
		`url = "http://`+ghcr.proxy+`"
ns_aliases = ["ghcr.io"]`,
		`tag_ttl = "1h"`, `tag_ttl = "2s"`,
	).Replace(read("regional.toml")))
	site := startBerth(t, strings.NewReplacer(
		"regional.internal:5000", regional.addr,
		`tag_ttl = "10m"`, `tag_ttl = "1s"`,
	).Replace(read("site.toml")))
	if strings.Contains(read("site.toml"), "\nns_aliases") {
		t.Fatal("the site example needs ns_aliases: forward_ns should make it unnecessary")
	}

	hostsDir := t.TempDir()
	os.MkdirAll(filepath.Join(hostsDir, "_default"), 0o755)
	os.WriteFile(filepath.Join(hostsDir, "_default", "hosts.toml"),
		[]byte(strings.ReplaceAll(read("certs.d/_default/hosts.toml"), "site.internal:5000", site.addr)), 0o644)
	ctr := startContainerd(t)
	for _, tc := range []struct{ ref, want string }{
		{"docker.io/library/tier:v1", tierDigest.String()},
		{"ghcr.io/team/tool:v1", toolDigest.String()},
	} {
		ctr("images", "pull", "--hosts-dir", hostsDir, "--snapshotter", "native", tc.ref)
		if out := ctr("images", "ls"); !strings.Contains(out, tc.want) {
			t.Fatalf("%s through two tiers: digest %s not in\n%s", tc.ref, tc.want, out)
		}
	}
	run(t, time.Minute, nil, tool("crane"), "pull", "--insecure", site.addr+"/tier:v1", filepath.Join(t.TempDir(), "t.tar"))
	if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", site.addr+"/tier:v1")); got != tierDigest.String() {
		t.Fatalf("crane through two tiers: %s, want %s", got, tierDigest)
	}
	// skopeo and a Docker daemon using the site as its mirror.
	raw := run(t, time.Minute, nil, "skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+site.addr+"/tier:v1")
	if got := sha256Hex([]byte(raw)); got != tierDigest.String() {
		t.Fatalf("skopeo through two tiers: %s, want %s", got, tierDigest)
	}
	dk := startDockerd(t, site.addr)
	dk.docker(t, "pull", "tier:v1")
	if out := dk.docker(t, "image", "inspect", "--format", "{{json .RepoDigests}}", "tier:v1"); !strings.Contains(out, tierDigest.String()) {
		t.Fatalf("docker mirror through two tiers: %s", out)
	}

	// A tag moved at the origin: the site still answers the old digest
	// within its tag_ttl, and the new one within the two tag_ttls (1 s
	// at the site + 2 s at the regional tier).
	hub.push(t, "library/moved:v1", testImage(t, "amd64", 1, 1024))
	run(t, time.Minute, nil, tool("crane"), "pull", "--insecure", site.addr+"/moved:v1", filepath.Join(t.TempDir(), "m.tar"))
	moved := hub.push(t, "library/moved:v1", testImage(t, "amd64", 1, 2048))
	movedAt := time.Now()
	for {
		got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", site.addr+"/moved:v1"))
		if got == moved.String() {
			break
		}
		if time.Since(movedAt) > 3*time.Second+2*time.Second { // the two TTLs, and slack for the requests
			t.Fatalf("a moved tag still served old %s after %s", got, time.Since(movedAt))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("a tag moved at the origin reached the site after %s (tag_ttl 1 s + 2 s)", time.Since(movedAt).Round(100*time.Millisecond))

	// HEAD of a blob no tier has: the size, asked up the chain.
	layers, _ := coldImg.Layers()
	ld, _ := layers[0].Digest()
	size, _ := layers[0].Size()
	resp, err := http.Head("http://" + site.addr + "/v2/cold/blobs/" + ld.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != strconv.FormatInt(size, 10) {
		t.Fatalf("HEAD of an uncached blob at the site: %s, Content-Length %q, want 200 and %d", resp.Status, resp.Header.Get("Content-Length"), size)
	}

	// 20 concurrent cold pulls at the site: one origin GET per blob.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ref, _ := name.ParseReference(site.addr+"/cold:v1", name.Insecure)
			img, err := remote.Image(ref)
			if err == nil {
				err = validate.Image(img)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range layers {
		d, _ := l.Digest()
		if n := hub.gets(d.String()); n != 1 {
			t.Errorf("blob %s: %d GETs at the origin for 20 cold pulls through two tiers, want 1", d, n)
		}
	}

	// The origin rate-limits: its 429 and Retry-After reach the client
	// through both tiers.
	fp.Set(faultproxy.RateLimited, faultproxy.Manifests)
	resp, err = http.Get("http://" + site.addr + "/v2/limited/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("origin 429 through two tiers: %s, Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
	}
	fp.Set(faultproxy.None, faultproxy.Any)

	// The regional tier goes down: the site serves what it has, stale.
	regional.proc.stop(syscall.SIGTERM, 20*time.Second)
	time.Sleep(1100 * time.Millisecond) // past the site's tag_ttl
	out, err := runErr(time.Minute, nil, tool("crane"), "pull", "--insecure", site.addr+"/tier:v1", filepath.Join(t.TempDir(), "t.tar"))
	if err != nil {
		t.Fatalf("site with the regional tier down: %v\n%s", err, out)
	}
	ctr("images", "rm", "docker.io/library/tier:v1")
	ctr("images", "pull", "--hosts-dir", hostsDir, "--snapshotter", "native", "docker.io/library/tier:v1") // ?ns=docker.io, stale
}
