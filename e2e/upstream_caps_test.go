//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/fakehub"
)

// getBlob reads a blob through berth and returns its size and how long
// the whole body took.
func getBlob(t *testing.T, addr, image, digest string) (int64, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := http.Get("http://" + addr + "/v2/" + image + "/blobs/" + digest)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob %s: %s", digest, resp.Status)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return n, time.Since(start)
}

// TestUpstreamBandwidthCap: max_upstream_bandwidth holds a cold download
// within 10% of the cap over 10 s, while a cache hit during it runs at
// least 10× the capped rate: the upstream side is slowed, not the clients
// (Harbor's proxy_speed_kb slowed its clients, Harbor #21226).
func TestUpstreamBandwidthCap(t *testing.T) {
	up := startRegistry(t)
	const capBytes = 4_000_000 // 4MB/s
	cold := testImage(t, "amd64", 1, 40_000_000)
	warm := testImage(t, "amd64", 1, 8_000_000)
	up.push(t, "library/cold:v1", cold)
	up.push(t, "library/warm:v1", warm)
	b := startBerth(t, proxyConfig(up.proxy)+"max_upstream_bandwidth = \"4MB/s\"\nmax_upstream_connections = 4\n")
	warmLayer, coldLayer := mustLayer(t, warm), mustLayer(t, cold)
	getBlob(t, b.addr, "library/warm", warmLayer) // cached now (2 s at the cap)

	type result struct {
		n int64
		d time.Duration
	}
	done := make(chan result, 1)
	go func() {
		n, d := getBlob(t, b.addr, "library/cold", coldLayer)
		done <- result{n, d}
	}()
	time.Sleep(2 * time.Second)
	hn, hd := getBlob(t, b.addr, "library/warm", warmLayer)
	c := <-done
	coldRate := float64(c.n) / c.d.Seconds()
	hitRate := float64(hn) / hd.Seconds()
	t.Logf("cold download: %d bytes in %s = %.2f MB/s (cap 4 MB/s); cache hit during it: %.0f MB/s (%.0f× the cap)",
		c.n, c.d.Round(time.Millisecond), coldRate/1e6, hitRate/1e6, hitRate/capBytes)
	if coldRate < 0.9*capBytes || coldRate > 1.1*capBytes {
		t.Errorf("cold download at %.2f MB/s, want 4 MB/s ± 10%%", coldRate/1e6)
	}
	if hitRate < 10*capBytes {
		t.Errorf("cache hit at %.1f MB/s during a capped download, want at least 10× the cap", hitRate/1e6)
	}
}

// TestDockerHubBudgetE2E: berth in front of a fake Docker Hub (fakehub
// over distribution's registry): the budget gauges follow the hub's
// countdown; once it is spent, a cached image still pulls with no
// upstream request and a cold one fails at once with 429 and Retry-After.
func TestDockerHubBudgetE2E(t *testing.T) {
	up := startRegistry(t)
	target, _ := url.Parse("http://" + up.addr)
	hub := &fakehub.Hub{Backend: httputil.NewSingleHostReverseProxy(target), Limit: 3, Window: 6 * time.Hour, RetryAfter: 3600}
	hub.Start()
	defer hub.Close()
	for _, r := range []string{"library/a:v1", "library/b:v1", "library/c:v1", "library/cold:v1"} {
		up.push(t, r, testImage(t, "amd64", 1, 64<<10))
	}
	b := startBerth(t, proxyConfig(hub.Host())) // tag_ttl 1s: cached tags revalidate
	pull := func(ref string) error {
		out, err := runErr(time.Minute, nil, tool("crane"), "pull", "--insecure", b.addr+"/"+ref, filepath.Join(t.TempDir(), "img.tar"))
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	for i, r := range []string{"a:v1", "b:v1", "c:v1"} {
		if err := pull(r); err != nil { // one manifest GET each: the hub counts down
			t.Fatal(err)
		}
		if got, want := b.metric(t, "berth_upstream_ratelimit_remaining"), float64(2-i); got != want {
			t.Fatalf("after %d pulls remaining = %v, want %v (hub says %d)", i+1, got, want, hub.Stats().Remaining)
		}
	}
	if l, w := b.metric(t, "berth_upstream_ratelimit_limit"), b.metric(t, "berth_upstream_ratelimit_window_seconds"); l != 3 || w != 21600 {
		t.Fatalf("limit %v window %v", l, w)
	}
	time.Sleep(1100 * time.Millisecond) // past tag_ttl: a cached tag would revalidate
	before := hub.Stats().Requests
	if err := pull("a:v1"); err != nil {
		t.Fatalf("cached image while the budget is spent: %v", err)
	}
	start := time.Now()
	resp, err := http.Get("http://" + b.addr + "/v2/cold/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || time.Since(start) > 2*time.Second {
		t.Fatalf("cold pull while spent: %s Retry-After %q after %s", resp.Status, resp.Header.Get("Retry-After"), time.Since(start))
	}
	if n := hub.Stats().Requests - before; n != 0 {
		t.Fatalf("%d upstream requests while the budget was spent", n)
	}
	if s := b.metric(t, "berth_upstream_ratelimit_spent"); s != 1 {
		t.Fatalf("berth_upstream_ratelimit_spent = %v", s)
	}
}
