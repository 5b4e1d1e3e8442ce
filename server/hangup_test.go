package server

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"
)

// tenWaiters sends the same request from 10 clients; the first one hangs
// up while the shared upstream call is under way. The other 9 must get
// the answer.
func tenWaiters(t *testing.T, b *testBerth, path string, want string) {
	t.Helper()
	first, cancel := context.WithCancel(context.Background())
	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		req, _ := http.NewRequestWithContext(first, "GET", b.http.URL+path, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	time.Sleep(50 * time.Millisecond) // the first one's call is at the upstream
	var wg sync.WaitGroup
	for i := 0; i < 9; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := b.get("GET", path)
			readAll(t, resp)
			if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want {
				t.Errorf("waiter: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	cancel()
	<-firstDone
	wg.Wait()
}

// TestFirstClientHangsUpOthersServed: a cold manifest (with the upstream
// token exchange on the way) and a stale tag's revalidation are each one
// upstream call shared by many clients; the first client leaving fails
// none of the others.
func TestFirstClientHangsUpOthersServed(t *testing.T) {
	up := newFakeUpstream(t)
	up.token = "secret-token"
	want := up.push("app", "v1", randomImage(t, 256, 1)).String()
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.TagTTL = time.Millisecond })
	up.mu.Lock()
	up.latency = 300 * time.Millisecond
	up.mu.Unlock()

	tenWaiters(t, b, "/v2/app/manifests/v1", want) // cold: token, then GET
	if got := up.count("GET token"); got != 1 {
		t.Errorf("token endpoint asked %d times, want 1", got)
	}
	if got := up.count("GET manifest"); got != 1 { // after the ping and the token
		t.Errorf("upstream manifest GETs = %d, want 1", got)
	}
	time.Sleep(5 * time.Millisecond) // the tag is stale now
	tenWaiters(t, b, "/v2/app/manifests/v1", want)
	if got := up.count("HEAD manifest"); got != 1 {
		t.Errorf("revalidating HEADs = %d, want 1 shared by all", got)
	}
}
