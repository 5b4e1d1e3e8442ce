//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestNoLeaksInTheBinary: RSS, open fds and goroutines of the built
// binary (from its /metrics) before and after 20,000 mixed requests stay
// flat within 10 MiB, 10 fds and 10 goroutines.
func TestNoLeaksInTheBinary(t *testing.T) {
	up := startRegistry(t)
	img := testImage(t, "amd64", 2, 64<<10)
	up.push(t, "app:v1", img)
	big := testImage(t, "amd64", 1, 2<<20)
	up.push(t, "big:v1", big)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	bigLayers, _ := big.Layers()
	bd, _ := bigLayers[0].Digest()
	b := startBerth(t, fmt.Sprintf(`
[[repository]]
name = "up"
kind = "proxy"
url = "http://%s"

[[repository]]
name = "local"
kind = "hosted"
anonymous_push = true
anonymous_pull = true
`, up.proxy))
	base := "http://" + b.addr
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: time.Minute}
	do := func(ctx context.Context, method, path string, abandon bool) {
		req, _ := http.NewRequestWithContext(ctx, method, base+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			return
		}
		if abandon {
			io.CopyN(io.Discard, resp.Body, 1024)
		} else {
			io.Copy(io.Discard, resp.Body)
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			t.Errorf("%s %s: %d", method, path, resp.StatusCode)
		}
	}
	traffic := func(n int) {
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += 8 {
					ctx := context.Background()
					switch i % 10 {
					case 0:
						do(ctx, "GET", "/v2/up/app/manifests/v1", false)
					case 1:
						do(ctx, "GET", "/v2/up/app/blobs/"+ld.String(), false)
					case 2:
						do(ctx, "GET", fmt.Sprintf("/v2/up/app/manifests/missing-%d", i), false)
					case 3:
						do(ctx, "GET", "/v2/up/UPPER/manifests/v1", false)
					case 4:
						do(ctx, "GET", "/v2/up/app/blobs/sha256:"+strings.Repeat("z", 64), false)
					case 5:
						do(ctx, "HEAD", "/v2/up/app/blobs/"+ld.String(), false)
					case 6:
						ctx, cancel := context.WithCancel(ctx)
						do(ctx, "GET", "/v2/up/big/blobs/"+bd.String(), true)
						cancel()
					case 7:
						do(ctx, "POST", "/v2/local/leak/blobs/uploads/", false)
					case 8:
						do(ctx, "HEAD", fmt.Sprintf("/v2/up/app/manifests/head-missing-%d", i), false)
					case 9:
						do(ctx, "GET", "/v2/up/app/tags/list", false)
					}
				}
			}()
		}
		wg.Wait()
		client.CloseIdleConnections()
	}
	type sample struct{ rss, fds, goroutines float64 }
	measure := func() sample {
		time.Sleep(time.Second) // let closed connections' goroutines end
		return sample{b.metric(t, "process_resident_memory_bytes"), b.metric(t, "process_open_fds"), b.metric(t, "go_goroutines")}
	}
	traffic(2000) // pools and caches warm up
	before := measure()
	traffic(20_000)
	after := measure()
	t.Logf("before → after 20,000 mixed requests: RSS %.1f → %.1f MiB, open fds %.0f → %.0f, goroutines %.0f → %.0f",
		before.rss/(1<<20), after.rss/(1<<20), before.fds, after.fds, before.goroutines, after.goroutines)
	if after.rss-before.rss > 10<<20 || after.fds-before.fds > 10 || after.goroutines-before.goroutines > 10 {
		t.Errorf("grew: RSS +%.1f MiB, fds +%.0f, goroutines +%.0f", (after.rss-before.rss)/(1<<20), after.fds-before.fds, after.goroutines-before.goroutines)
	}
}
