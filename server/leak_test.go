package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestNoLeaksUnderMixedTraffic: 10,000 mixed requests through the real
// handler (hits, misses, upstream 404s, bad names and digests, HEADs,
// downloads the client abandons, uploads left unfinished until they
// expire). Afterwards the goroutines are back to the baseline and every
// internal map is empty or within its cap.
func TestNoLeaksUnderMixedTraffic(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 64<<10, 2)
	up.push("app", "v1", img)
	big := randomImage(t, 2<<20, 1)
	up.push("big", "v1", big)
	layer, bigLayer := firstLayer(t, img), firstLayer(t, big)
	b := newTestBerth(t, up, func(r *Repository, o *Options) {
		o.Repositories = append(o.Repositories, Repository{Name: "local", Kind: KindHosted, AnonymousPull: true, AnonymousPush: true})
	})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	do := func(ctx context.Context, method, path string, abandon bool) {
		req, _ := http.NewRequestWithContext(ctx, method, b.http.URL+path, nil)
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
	const workers = 8
	traffic := func(n int) {
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += workers {
					mixedRequest(do, i, layer.String(), bigLayer.String())
				}
			}()
		}
		wg.Wait()
		waitNoDownloads(t, b.srv)
		client.CloseIdleConnections()
		b.http.CloseClientConnections()
	}
	// A first round fills the connection pools (to the upstream, of the
	// test's clients) up to the concurrency; growth past it is a leak.
	traffic(1000)
	baseline := settledGoroutines(0)
	const n = 10_000
	traffic(n)
	if _, err := b.store.ExpireUploads(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	got := settledGoroutines(baseline)
	t.Logf("goroutines: %d before, %d after 10,000 mixed requests", baseline, got)
	if got > baseline+10 { // pools may still grow a little; a leak grows with the 10,000
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines: %d before, %d after 10,000 requests\n%s", baseline, got, buf[:runtime.Stack(buf, true)])
	}
	rp := b.srv.repos["hub"]
	for name, c := range map[string][2]int{
		"negative cache": {rp.neg.Len(), rp.neg.Cap()},
		"checked creds":  {b.srv.auth.goodCreds.Len(), b.srv.auth.goodCreds.Cap()},
	} {
		if c[0] > c[1] {
			t.Errorf("%s holds %d entries, cap %d", name, c[0], c[1])
		}
	}
	if rp.neg.Len() < n/10 {
		t.Errorf("negative cache holds %d entries: the 404s were not remembered", rp.neg.Len())
	}
	active := b.srv.fetches.Active()
	b.srv.uploadLimit.mu.Lock()
	limits := len(b.srv.uploadLimit.n)
	b.srv.uploadLimit.mu.Unlock()
	if active != 0 || limits != 0 {
		t.Errorf("after the traffic: %d downloads, %d upload-limit entries", active, limits)
	}
}

// mixedRequest sends the i-th request of the leak test's mix.
func mixedRequest(do func(ctx context.Context, method, path string, abandon bool), i int, layer, bigLayer string) {
	ctx := context.Background()
	switch i % 10 {
	case 0:
		do(ctx, "GET", "/v2/app/manifests/v1", false)
	case 1:
		do(ctx, "GET", "/v2/app/blobs/"+layer, false)
	case 2:
		do(ctx, "GET", fmt.Sprintf("/v2/app/manifests/missing-%d", i), false) // upstream 404, remembered
	case 3:
		do(ctx, "GET", "/v2/UPPER/case/manifests/v1", false) // bad name
	case 4:
		do(ctx, "GET", "/v2/app/blobs/sha256:"+strings.Repeat("z", 64), false) // bad digest
	case 5:
		do(ctx, "HEAD", "/v2/app/blobs/"+layer, false)
	case 6: // the client leaves a big blob after 1 KiB, mid-download or from the cache
		ctx, cancel := context.WithCancel(ctx)
		do(ctx, "GET", "/v2/big/blobs/"+bigLayer, true)
		cancel()
	case 7: // an upload started and never finished
		do(ctx, "POST", "/v2/local/leak/blobs/uploads/", false)
	case 8:
		do(ctx, "HEAD", fmt.Sprintf("/v2/app/manifests/head-missing-%d", i), false)
	case 9:
		do(ctx, "GET", "/v2/app/tags/list", false)
	}
}

// settledGoroutines waits (up to 5s) for the goroutine count to come down
// to at most target (0: until it stops changing) and returns it.
func settledGoroutines(target int) int {
	last := -1
	for i := 0; i < 100; i++ {
		runtime.GC()
		n := runtime.NumGoroutine()
		if (target > 0 && n <= target) || (target == 0 && n == last) {
			return n
		}
		last = n
		time.Sleep(50 * time.Millisecond)
	}
	return runtime.NumGoroutine()
}
