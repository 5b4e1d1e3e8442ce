//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func proxyConfig(upstream string) string {
	return fmt.Sprintf(`default_repository = "hub"

[[repository]]
name = "hub"
kind = "proxy"
url = "http://%s"
library_prefix = true   # the test upstream stands in for Docker Hub
tag_ttl = "1s"
not_found_ttl = "1s"
`, upstream)
}

// TestClientsPullThrough pulls a multi-layer image and a multi-arch index
// through berth with crane, regctl, skopeo and oras, comparing digests with
// the upstream, and checks each blob crossed from upstream once.
func TestClientsPullThrough(t *testing.T) {
	up := startRegistry(t)
	app := testImage(t, "amd64", 3, 512<<10)
	appDigest := up.push(t, "library/e2e-app:v1", app)
	arm := testImage(t, "arm64", 2, 256<<10)
	multiDigest := up.pushIndex(t, "library/e2e-multi:v1", map[string]v1.Image{"amd64": testImage(t, "amd64", 2, 256<<10), "arm64": arm})
	armDigest, _ := arm.Digest()
	b := startBerth(t, proxyConfig(up.proxy))
	home := t.TempDir()
	env := []string{"HOME=" + home}
	ref := b.addr + "/library/e2e-app:v1"
	multi := b.addr + "/e2e-multi:v1" // Docker Hub style: library/ added by berth

	t.Run("crane", func(t *testing.T) {
		clientRow(t, "crane", "pull through a proxy: an image and a multi-arch index")
		if got := strings.TrimSpace(run(t, time.Minute, env, tool("crane"), "digest", "--insecure", ref)); got != appDigest.String() {
			t.Fatalf("crane digest %s, want %s", got, appDigest)
		}
		run(t, 2*time.Minute, env, tool("crane"), "validate", "--insecure", "--remote", ref) // downloads and hashes every layer
		if got := strings.TrimSpace(run(t, time.Minute, env, tool("crane"), "digest", "--insecure", multi)); got != multiDigest.String() {
			t.Fatalf("crane digest index %s, want %s", got, multiDigest)
		}
		if got := strings.TrimSpace(run(t, time.Minute, env, tool("crane"), "digest", "--insecure", "--platform", "linux/arm64", multi)); got != armDigest.String() {
			t.Fatalf("crane digest arm64 %s, want %s", got, armDigest)
		}
	})
	t.Run("regctl", func(t *testing.T) {
		clientRow(t, "regctl", "pull through a proxy: an image and a multi-arch index")
		run(t, time.Minute, env, tool("regctl"), "registry", "set", "--tls", "disabled", b.addr)
		if got := strings.TrimSpace(run(t, time.Minute, env, tool("regctl"), "image", "digest", ref)); got != appDigest.String() {
			t.Fatalf("regctl digest %s, want %s", got, appDigest)
		}
		if got := strings.TrimSpace(run(t, time.Minute, env, tool("regctl"), "image", "digest", "--platform", "linux/arm64", multi)); got != armDigest.String() {
			t.Fatalf("regctl digest arm64 %s, want %s", got, armDigest)
		}
		out := filepath.Join(t.TempDir(), "app.tar")
		run(t, 2*time.Minute, env, tool("regctl"), "image", "export", ref, out)
		if st, err := os.Stat(out); err != nil || st.Size() < 3*512<<10 {
			t.Fatalf("regctl export: %v", err)
		}
	})
	t.Run("skopeo", func(t *testing.T) {
		clientRow(t, "skopeo", "pull through a proxy: an image and a multi-arch index")
		var insp struct{ Digest string }
		json.Unmarshal([]byte(run(t, time.Minute, env, "skopeo", "inspect", "--tls-verify=false", "docker://"+ref)), &insp)
		if insp.Digest != appDigest.String() {
			t.Fatalf("skopeo inspect digest %s, want %s", insp.Digest, appDigest)
		}
		raw := run(t, time.Minute, env, "skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+multi)
		if got := fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(raw))); got != multiDigest.String() {
			t.Fatalf("skopeo raw index %s, want %s", got, multiDigest)
		}
		// Copying every platform downloads and verifies every blob.
		dir := filepath.Join(t.TempDir(), "multi")
		run(t, 2*time.Minute, env, "skopeo", "copy", "--all", "--src-tls-verify=false", "docker://"+multi, "dir:"+dir)
	})
	t.Run("oras", func(t *testing.T) {
		clientRow(t, "oras", "pull through a proxy: an image and a multi-arch index")
		var desc struct{ Digest string }
		json.Unmarshal([]byte(run(t, time.Minute, env, tool("oras"), "manifest", "fetch", "--plain-http", "--descriptor", ref)), &desc)
		if desc.Digest != appDigest.String() {
			t.Fatalf("oras descriptor %s, want %s", desc.Digest, appDigest)
		}
		layout := filepath.Join(t.TempDir(), "layout")
		run(t, 2*time.Minute, env, tool("oras"), "cp", "--from-plain-http", ref, "--to-oci-layout", layout+":v1")
		idx, _ := os.ReadFile(filepath.Join(layout, "index.json"))
		if !strings.Contains(string(idx), appDigest.String()) {
			t.Fatalf("oras layout index lacks %s: %s", appDigest, idx)
		}
	})

	// Every blob crossed from upstream once, however many clients pulled it.
	layers, _ := app.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		if n := up.gets(d.String()); n != 1 {
			t.Errorf("layer %s fetched from upstream %d times", d, n)
		}
	}
	if hits := b.metric(t, "berth_cache_results_total", `kind="blob"`, `result="hit"`); hits < 6 {
		t.Errorf("blob cache hits = %v", hits)
	}

	// Upstream down: cached tags are served stale and cached blobs served.
	up.setDown(true)
	time.Sleep(1100 * time.Millisecond) // past tag_ttl
	if got := strings.TrimSpace(run(t, time.Minute, env, tool("crane"), "digest", "--insecure", ref)); got != appDigest.String() {
		t.Fatalf("stale digest %s", got)
	}
	run(t, 2*time.Minute, env, tool("crane"), "validate", "--insecure", "--remote", ref)
	if n := b.metric(t, "berth_cache_results_total", `kind="manifest"`, `result="stale"`); n < 1 {
		t.Errorf("stale serves = %v", n)
	}
}

// TestConcurrentColdPull: 50 clients ask one uncached 32 MiB blob at once
// through the real binary; the upstream sends it once (in two ranges: the
// first range_fetch_min, and the rest as one more on this fast path).
func TestConcurrentColdPull(t *testing.T) {
	up := startRegistry(t)
	img := testImage(t, "amd64", 1, 32<<20)
	up.push(t, "library/big:v1", img)
	layers, _ := img.Layers()
	dg, _ := layers[0].Digest()
	b := startBerth(t, proxyConfig(up.proxy))
	run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", b.addr+"/big:v1") // caches the manifest

	const clients = 50
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get("http://" + b.addr + "/v2/library/big/blobs/" + dg.String())
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			io.Copy(h, resp.Body)
			if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); resp.StatusCode != 200 || got != dg.String() {
				errs <- fmt.Errorf("status %d digest %s", resp.StatusCode, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	size, _ := layers[0].Size()
	n, sent := up.gets(dg.String()), up.bytes(dg.String())
	t.Logf("%d concurrent pulls of one uncached 32 MiB blob: %d upstream GETs, %d bytes for a blob of %d", clients, n, sent, size)
	if sent != size || n != 2 {
		t.Fatalf("upstream sent %d bytes in %d GETs, want %d in 2 (the first 16 MiB and the rest)", sent, n, size)
	}
}

// TestSIGTERMDrains: berth exits cleanly on SIGTERM.
func TestSIGTERMDrains(t *testing.T) {
	up := startRegistry(t)
	b := startBerth(t, proxyConfig(up.proxy))
	if err := b.proc.stop(15, 30*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	log, _ := os.ReadFile(b.proc.log)
	if !strings.Contains(string(log), "draining") {
		t.Errorf("no drain in log:\n%s", log)
	}
}
