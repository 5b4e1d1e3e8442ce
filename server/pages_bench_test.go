package server

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
)

// BenchmarkStatusPagesLarge: the status pages of a hosted repository of
// BERTH_BENCH_IMAGES images (default 100,000), filled through the store
// API: each page's time, to show they stay fast (make bench).
func BenchmarkStatusPagesLarge(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("BERTH_BENCH_IMAGES")); err == nil && v > 0 {
		n = v
	}
	tb := newTestBerth(b, newFakeUpstream(b), withHosted)
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	work := make(chan int)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[],"annotations":{"n":"%d"}}`, i))
				m := store.Manifest{Digest: store.DigestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body, Hosted: true}
				if err := tb.store.PutManifest(ctx, fmt.Sprintf("local/team-%03d/app-%06d", i%1000, i), m, "v1", nil); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	b.Logf("filled %d images in %s", n, time.Since(start).Round(time.Millisecond))
	for _, page := range []string{"/", "/ui/repository?name=local", "/ui/repository?name=local&page=500", "/ui/search?q=app-09999", "/ui/image?repo=local&name=team-001/app-000001"} {
		b.Run(page, func(b *testing.B) {
			for b.Loop() {
				resp := tb.get(http.MethodGet, page)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("%s: %d", page, resp.StatusCode)
				}
			}
		})
	}
}
