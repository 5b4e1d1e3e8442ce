//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// procStats is what a process holds: descriptors, resident memory
// (bytes) and, from its public /metrics, goroutines (-1 when not shown).
type procStats struct {
	fds        int
	rss        int64
	goroutines int
}

func (s procStats) String() string {
	return fmt.Sprintf("fds %d, RSS %.0f MB, goroutines %d", s.fds, float64(s.rss)/1e6, s.goroutines)
}

func statsOf(t *testing.T, b *berth) procStats {
	t.Helper()
	pid := b.proc.cmd.Process.Pid
	var st procStats
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	st.fds = len(fds)
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			st.rss = kb << 10
		}
	}
	st.goroutines = -1
	client := &http.Client{Timeout: 10 * time.Second}
	if resp, err := client.Get("http://" + b.addr + "/metrics"); err == nil {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
				st.goroutines, _ = strconv.Atoi(v)
			}
		}
		resp.Body.Close()
	}
	return st
}

// tmpFiles counts the files in berth's tmp/ and their bytes.
func tmpFiles(b *berth) (n int, size int64) {
	entries, _ := os.ReadDir(filepath.Join(b.data, "tmp"))
	for _, e := range entries {
		if info, err := e.Info(); err == nil {
			n++
			size += info.Size()
		}
	}
	return n, size
}

// hostileRegistry is an upstream registry that answers /v2/ and treats
// blob GETs with blob; everything else is 404.
func hostileRegistry(t *testing.T, blob http.HandlerFunc) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(200)
		case strings.Contains(r.URL.Path, "/blobs/") && r.Method == "GET":
			blob(w, r)
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(404)
			io.WriteString(w, `{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestAttackAbandonedDownloads: one client asks for 200 different blobs
// of a slow upstream and hangs up on each after the first bytes. Past
// max_downloads_per_client it gets 429; the downloads it left are
// cancelled after the grace: no temp file and no upstream connection
// stay (before: one temp file and one connection each for ~90 s).
func TestAttackAbandonedDownloads(t *testing.T) {
	var open atomic.Int64
	up := hostileRegistry(t, func(w http.ResponseWriter, r *http.Request) {
		open.Add(1)
		defer open.Add(-1)
		w.Header().Set("Content-Length", strconv.Itoa(64<<20))
		w.WriteHeader(200)
		w.Write(make([]byte, 64<<10))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // a slow upstream: the rest never comes
	})
	b := startBerth(t, fmt.Sprintf(`[[repository]]
name = "hub"
kind = "proxy"
url = %q
eager_layers = false
`, up.URL))
	codes := map[int]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second}
			resp, err := client.Get(fmt.Sprintf("http://%s/v2/team/app/blobs/sha256:%064x", b.addr, i+1))
			if err != nil {
				return
			}
			resp.Body.Read(make([]byte, 1024))
			resp.Body.Close() // the client leaves
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	peak := statsOf(t, b)
	peakTmp, _ := tmpFiles(b)
	peakUp := open.Load()
	t.Logf("200 abandoned cold downloads: statuses %v; at the peak %s, %d temp files, %d upstream connections", codes, peak, peakTmp, peakUp)
	if codes[429] < 150 || peakUp > 40 {
		t.Errorf("one client kept %d upstream downloads open (%d answered 429), want at most max_downloads_per_client", peakUp, codes[429])
	}
	deadline := time.Now().Add(30 * time.Second)
	for (open.Load() > 0 || func() bool { n, _ := tmpFiles(b); return n > 0 }()) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	n, _ := tmpFiles(b)
	after := statsOf(t, b)
	t.Logf("after the grace: %s, %d temp files, %d upstream connections", after, n, open.Load())
	if n != 0 || open.Load() != 0 {
		t.Fatalf("abandoned downloads still hold %d temp files and %d upstream connections", n, open.Load())
	}
}

// TestAttackEndlessBlob: an upstream that answers a blob with no
// Content-Length and never stops is cut at max_blob_size; tmp/ never
// holds more, nothing is cached (before: 6.2 GB in 20 s).
func TestAttackEndlessBlob(t *testing.T) {
	var sent atomic.Int64
	up := hostileRegistry(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		buf := make([]byte, 256<<10)
		for i := 0; i < 4096; i++ { // 1 GiB at most
			n, err := w.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	b := startBerth(t, fmt.Sprintf(`[limits]
max_blob_size = "8MiB"

[[repository]]
name = "hub"
kind = "proxy"
url = %q
`, up.URL))
	done := make(chan struct{})
	var maxTmp int64
	go func() {
		defer close(done)
		for i := 0; i < 100; i++ {
			_, size := tmpFiles(b)
			maxTmp = max(maxTmp, size)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Get("http://" + b.addr + "/v2/team/app/blobs/sha256:" + strings.Repeat("e", 64))
	got := int64(0)
	if err == nil {
		got, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	<-done
	n, _ := tmpFiles(b)
	t.Logf("endless blob: client got %d bytes (err %v); upstream sent %d MB; tmp/ at most %.1f MB, now %d files", got, err, sent.Load()>>20, float64(maxTmp)/1e6, n)
	if maxTmp > 9<<20 || got > 8<<20 || n != 0 {
		t.Fatalf("an endless blob: tmp/ up to %d bytes, client got %d, %d temp files left (max_blob_size 8 MiB)", maxTmp, got, n)
	}
	if v := b.metric(t, "berth_digest_mismatches_total"); v != 1 {
		t.Errorf("berth_digest_mismatches_total %v, want 1", v)
	}
}

// TestAttackReferrersAndHostFlood: referrers requests with a 60 KB
// artifactType, forward_ns with 2,000 bogus namespaces and 16 KB host
// names: refused or not kept; memory and /metrics stay small, and a real
// namespace is served afterwards (before: RSS 1.26 GB, /metrics 444 MB,
// ns=ghcr.io 429 until restart).
func TestAttackReferrersAndHostFlood(t *testing.T) {
	reg := startRegistry(t)
	d := reg.push(t, "library/app:v1", testImage(t, "amd64", 1, 4<<10))
	b := startBerth(t, fmt.Sprintf(`[[repository]]
name = "hub"
kind = "proxy"
url = "http://%s"
forward_ns = true
library_prefix = true
`, reg.proxy))
	before := statsOf(t, b)
	client := &http.Client{Timeout: 30 * time.Second}
	get := func(p string) int {
		resp, err := client.Get("http://" + b.addr + p)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	big := url.QueryEscape("application/" + strings.Repeat("x", 60<<10))
	refs := map[int]int{}
	for i := 0; i < 1000; i++ {
		refs[get(fmt.Sprintf("/v2/library/app/referrers/%s?artifactType=%s%d", d, big, i))]++
	}
	hosts := map[int]int{}
	for i := 0; i < 2000; i++ {
		hosts[get(fmt.Sprintf("/v2/library/nosuch/manifests/v1?ns=bogus%d.example", i))]++
	}
	long := map[int]int{}
	for i := 0; i < 200; i++ {
		long[get(fmt.Sprintf("/v2/library/app/manifests/v1?ns=%s%d.example", strings.Repeat("a", 16<<10), i))]++
	}
	real := get("/v2/library/app/manifests/v1?ns=ghcr.io")
	after := statsOf(t, b)
	resp, _ := client.Get("http://" + b.addr + "/metrics")
	metricsBytes, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	t.Logf("referrers with a 60 KB artifactType: %v; bogus namespaces: %v; 16 KB host names: %v; ns=ghcr.io after: %d", refs, hosts, long, real)
	t.Logf("before: %s; after: %s; /metrics %d KB", before, after, metricsBytes>>10)
	if refs[400] != 1000 || long[400] != 200 {
		t.Errorf("hostile artifactType and host names not refused: %v %v", refs, long)
	}
	if real != 200 {
		t.Errorf("a real namespace after the flood: %d", real)
	}
	if after.rss-before.rss > 100<<20 || metricsBytes > 2<<20 {
		t.Errorf("RSS grew %d MB, /metrics is %d KB", (after.rss-before.rss)>>20, metricsBytes>>10)
	}
	// Hosts that never answered leave nothing behind: no connection kept
	// idle for them, no goroutine.
	if after.fds > before.fds+50 || after.goroutines > before.goroutines+50 {
		t.Errorf("after the flood berth holds %s (before: %s)", after, before)
	}
}

// TestAttackUserEnumeration: an unknown user name takes as long to be
// refused as a real user's wrong password, with the user's hash at cost
// 5 (what htpasswd -B writes): before, 60 ms against 2 ms.
func TestAttackUserEnumeration(t *testing.T) {
	b := berthWithUser(t, "alice", "right", 5)
	// Each try from its own loopback address, under the per-address
	// lockout; 8 tries per name stay under the per-user one.
	try := func(i int, user string) time.Duration {
		client := clientFrom(fmt.Sprintf("127.0.%d.%d", 10+i/200, 1+i%200))
		req, _ := http.NewRequest("GET", "http://"+b.addr+"/v2/", nil)
		req.SetBasicAuth(user, "wrong")
		start := time.Now()
		resp, err := client.Do(req)
		d := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("%s: %d", user, resp.StatusCode)
		}
		return d
	}
	median := func(ds []time.Duration) time.Duration {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	var known, unknown []time.Duration
	for i := 0; i < 8; i++ {
		known = append(known, try(2*i, "alice"))
		unknown = append(unknown, try(2*i+1, fmt.Sprintf("nobody%d", i)))
	}
	k, u := median(known), median(unknown)
	t.Logf("wrong password, median of 8: known user %s, unknown user %s (ratio %.2f)", k, u, float64(u)/float64(k))
	if r := float64(u) / float64(k); r > 4 || r < 0.25 {
		t.Errorf("an unknown name takes %.1f× a known one's time: names can be told apart", r)
	}
}
