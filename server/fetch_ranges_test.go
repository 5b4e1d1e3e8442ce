package server

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// rangeLog records the blob GETs an upstream answered: the Range asked
// and the body bytes sent.
type rangeLog struct {
	mu   sync.Mutex
	gets []rangeGet
}

type rangeGet struct {
	rng    string
	status int
	sent   int64
}

// sentBytes is the body bytes of every blob GET answered 2xx together.
func (l *rangeLog) sentBytes() (n int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range l.gets {
		if g.status < 300 {
			n += g.sent
		}
	}
	return n
}

func (l *rangeLog) ranges() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var r []string
	for _, g := range l.gets {
		r = append(r, g.rng)
	}
	return r
}

// wantRanges checks the Range headers the upstream was asked, in any order.
func wantRanges(t *testing.T, l *rangeLog, want []string) {
	t.Helper()
	got, want := l.ranges(), slices.Clone(want)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("upstream ranges\n got %q\nwant %q", got, want)
	}
}

// wantFetchedOnce checks that the upstream sent the blob's bytes once and
// the blob is cached.
func wantFetchedOnce(t *testing.T, b *testBerth, l *rangeLog, digest string, size int64) {
	t.Helper()
	if n := l.sentBytes(); n != size {
		l.mu.Lock()
		t.Errorf("upstream sent %d bytes for a blob of %d; the GETs: %+v", n, size, l.gets)
		l.mu.Unlock()
	}
	if _, err := b.store.StatBlob(t.Context(), store.MustDigest(digest)); err != nil {
		t.Errorf("not cached: %v", err)
	}
}

// countingWriter counts what a handler writes.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(s int) { w.status = s; w.ResponseWriter.WriteHeader(s) }
func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// logRanges makes up record its blob GETs in a rangeLog; change, when not
// nil, may rewrite a request (or answer it, returning true) first.
func logRanges(up *fakeUpstream, change func(w http.ResponseWriter, r *http.Request, i int) bool) *rangeLog {
	l := &rangeLog{}
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || kindOf(r.URL.Path) != "blob" {
			return false
		}
		l.mu.Lock()
		i := len(l.gets)
		l.gets = append(l.gets, rangeGet{rng: r.Header.Get("Range")})
		l.mu.Unlock()
		cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		if change == nil || !change(cw, r, i) {
			up.reg.ServeHTTP(cw, r)
		}
		l.mu.Lock()
		l.gets[i].status, l.gets[i].sent = cw.status, cw.n
		l.mu.Unlock()
		return true
	})
	return l
}

// ranged is a berth option: blobs over 2 MiB in 1 MiB ranges, 4 at once.
func ranged(r *Repository, o *Options) {
	r.DockerHub = true
	// No takeovers or steals: these tests count every byte sent, and a
	// stolen half costs the bytes in flight (fetch's own tests cover them).
	r.RangeFetch = RangeFetch{Min: 2 << 20, Chunk: 1 << 20, Parallel: 4, StallAfter: time.Hour}
}

// wantTiling checks that the Range headers the upstream was asked cover
// the blob exactly once: the first range, then pieces of at most chunk.
func wantTiling(t *testing.T, l *rangeLog, size int64) {
	t.Helper()
	type span struct{ a, b int64 }
	var spans []span
	for _, r := range l.ranges() {
		var a, b int64
		if _, err := fmt.Sscanf(r, "bytes=%d-%d", &a, &b); err != nil {
			t.Fatalf("range %q: %v", r, err)
		}
		spans = append(spans, span{a, b})
	}
	slices.SortFunc(spans, func(x, y span) int { return int(x.a - y.a) })
	next := int64(0)
	for i, s := range spans {
		switch {
		case s.a != next:
			t.Fatalf("ranges %v: byte %d asked for %s", l.ranges(), next, map[bool]string{true: "twice", false: "never"}[s.a < next])
		case i == 0 && s.b != 2<<20-1, i > 0 && s.b-s.a+1 > 1<<20:
			t.Fatalf("ranges %v: range %d-%d is not the first range or a chunk", l.ranges(), s.a, s.b)
		}
		next = s.b + 1
	}
	if next != size {
		t.Fatalf("ranges %v end at %d, the blob at %d", l.ranges(), next, size)
	}
}

// pullBlob GETs blob d through b and checks every byte.
func pullBlob(t *testing.T, b *testBerth, path, d string, size int64) {
	t.Helper()
	resp := b.get("GET", path)
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil || n != size || fmt.Sprintf("sha256:%x", h.Sum(nil)) != d {
		t.Fatalf("client got %d of %d bytes (%v, status %d), digest ok %v", n, size, err, resp.StatusCode, fmt.Sprintf("sha256:%x", h.Sum(nil)) == d)
	}
}

// TestRangedFetchEveryByteOnce: a blob over range_fetch_min comes as the
// first range (0 to min-1) and then chunks, every byte fetched once; three
// clients reading it at once each get the right blob; it is cached.
func TestRangedFetchEveryByteOnce(t *testing.T) {
	img := randomImage(t, 9<<20, 1)
	ld := firstLayer(t, img)
	layers, _ := img.Layers()
	size, _ := layers[0].Size()
	up := newFakeUpstream(t)
	up.push("library/app", "v1", img)
	b := newTestBerth(t, up, ranged)
	log := logRanges(up, nil)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pullBlob(t, b, "/v2/app/blobs/"+ld.String(), ld.String(), size)
		}()
	}
	wg.Wait()
	waitNoDownloads(t, b.srv)
	wantTiling(t, log, size)
	wantFetchedOnce(t, b, log, ld.String(), size)
	if b.srv.repos["hub"].noRanges.Load() {
		t.Error("ranges marked unsupported by an upstream that answered them")
	}
}

// paced is a berth option: ranges as in ranged, the first range judged
// after ramp against slowRate.
func paced(ramp time.Duration, slowRate float64) func(*Repository, *Options) {
	return func(r *Repository, o *Options) {
		ranged(r, o)
		r.RangeFetch.Ramp, r.RangeFetch.SlowRate = ramp, slowRate
	}
}

// holdingWriter passes the first after bytes of an answer, then holds the
// rest until release is closed (or 10 s pass).
type holdingWriter struct {
	http.ResponseWriter
	after   int64
	n       int64
	release <-chan struct{}
}

func (w *holdingWriter) Write(p []byte) (int, error) {
	if w.n >= w.after && w.release != nil {
		select {
		case <-w.release:
		case <-time.After(10 * time.Second):
		}
		w.release = nil
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// TestRangedFetchPace: a first range that ends before it is judged (a
// fast path) is followed by the whole rest as one more range; one still
// running when it is judged slow is joined by the other streams, a chunk
// each. Either way every byte comes once and the blob is cached right.
func TestRangedFetchPace(t *testing.T) {
	img := randomImage(t, 9<<20, 1)
	ld := firstLayer(t, img)
	layers, _ := img.Layers()
	size, _ := layers[0].Size()
	for _, tc := range []struct {
		name string
		ramp time.Duration
		hold bool // the first range stalls after 64 KiB until another range is asked for
		want []string
	}{
		{"fast: the first range ends first", time.Hour, false, []string{"bytes=0-2097151", fmt.Sprintf("bytes=2097152-%d", size-1)}},
		{"slow: judged while the first range runs", 20 * time.Millisecond, true, nil}, // chunks
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newFakeUpstream(t)
			up.push("library/app", "v1", img)
			b := newTestBerth(t, up, paced(tc.ramp, 1e18))
			more := make(chan struct{})
			var once sync.Once
			log := logRanges(up, func(w http.ResponseWriter, r *http.Request, i int) bool {
				if i == 0 && tc.hold {
					up.reg.ServeHTTP(&holdingWriter{ResponseWriter: w, after: 64 << 10, release: more}, r)
					return true
				}
				if i > 0 {
					once.Do(func() { close(more) })
				}
				return false
			})
			pullBlob(t, b, "/v2/app/blobs/"+ld.String(), ld.String(), size)
			waitNoDownloads(t, b.srv)
			if tc.want != nil {
				wantRanges(t, log, tc.want)
			} else {
				wantTiling(t, log, size)
			}
			wantFetchedOnce(t, b, log, ld.String(), size)
		})
	}
}

// TestRangedFetchFallsBack: an upstream that answers the first range with
// a 200, with a wrong Content-Range, with no total, or with 416 gets one
// stream for the blob (the 200 itself when it came: no byte twice) and
// for the next blob too (remembered). One that breaks ranges only on a
// later chunk finishes the blob as one stream from the first byte not on
// disk.
func TestRangedFetchFallsBack(t *testing.T) {
	ignoreRange := func(w http.ResponseWriter, r *http.Request) bool { r.Header.Del("Range"); return false }
	withRange := func(v string) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			up := w.(*upstreamWriter)
			up.reg.ServeHTTP(&overrideHeader{ResponseWriter: w, key: "Content-Range", value: v}, r)
			return true
		}
	}
	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request) bool // true: answered
		at     int                                               // which blob GET gets it
		once   bool                                              // no byte is sent twice
	}{
		{"200 to the first range", ignoreRange, 0, true},
		{"wrong Content-Range", withRange("bytes 1-2097152/9999999"), 0, false},
		{"no total", withRange("bytes 0-2097151/*"), 0, false},
		{"416", func(w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusRequestedRangeNotSatisfiable)
			return true
		}, 0, true},
		{"200 to a later chunk", ignoreRange, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := randomImage(t, 5<<20, 2)
			layers, _ := img.Layers()
			size, _ := layers[0].Size()
			size1, _ := layers[1].Size()
			up := newFakeUpstream(t)
			up.push("library/app", "v1", img)
			b := newTestBerth(t, up, ranged)
			log := logRanges(up, func(w http.ResponseWriter, r *http.Request, i int) bool {
				return i == tc.at && tc.answer(&upstreamWriter{w, up}, r)
			})
			l0, _ := layers[0].Digest()
			pullBlob(t, b, "/v2/app/blobs/"+l0.String(), l0.String(), size)
			waitNoDownloads(t, b.srv)
			if !b.srv.repos["hub"].noRanges.Load() {
				t.Fatal("the upstream's answer was not remembered")
			}
			if n := log.sentBytes(); tc.once && n != size {
				t.Errorf("upstream sent %d bytes for a blob of %d", n, size)
			}
			if _, err := b.store.StatBlob(t.Context(), store.MustDigest(l0.String())); err != nil {
				t.Errorf("not cached: %v", err)
			}
			before := len(log.ranges())
			l1, _ := layers[1].Digest()
			pullBlob(t, b, "/v2/app/blobs/"+l1.String(), l1.String(), size1)
			waitNoDownloads(t, b.srv)
			if after := log.ranges()[before:]; len(after) != 1 || after[0] != "" {
				t.Errorf("the next blob was fetched with %q, want one plain GET", after)
			}
		})
	}
}

// upstreamWriter carries the fake upstream to a test's answer.
type upstreamWriter struct {
	http.ResponseWriter
	*fakeUpstream
}

// overrideHeader sets key to value as the response's header is written.
type overrideHeader struct {
	http.ResponseWriter
	key, value string
}

func (o *overrideHeader) WriteHeader(s int) {
	o.Header().Set(o.key, o.value)
	o.ResponseWriter.WriteHeader(s)
}

// TestRangeAnsweredWhileDownloading: a Range request for bytes already on
// disk is answered before the download ends, all but its last byte; that
// one follows once the blob is verified. A corrupt blob ends such a
// response one byte short.
func TestRangeAnsweredWhileDownloading(t *testing.T) {
	up, b, dg := cachedApp(t, 1<<20)
	release := make(chan struct{})
	slowBlob(up, release)
	resp := b.get("GET", "/v2/app/blobs/"+dg.String(), "Range", "bytes=1000-1999")
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") == "" {
		t.Fatalf("status %d, Content-Range %q", resp.StatusCode, resp.Header.Get("Content-Range"))
	}
	got := make([]byte, 999)
	readWithin(t, resp.Body, got, "no byte of the range before the download ended")
	last := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(resp.Body); last <- b }()
	select {
	case <-last:
		t.Fatal("the range's last byte went out before the blob was verified")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	full := blobBytes(t, up, dg)
	if rest := <-last; !bytes.Equal(append(got, rest...), full[1000:2000]) {
		t.Fatalf("range bytes differ (%d+%d bytes)", len(got), len(rest))
	}
}

func TestRangeOfCorruptBlobCut(t *testing.T) {
	up, b, dg := cachedApp(t, 1<<20)
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || kindOf(r.URL.Path) != "blob" {
			return false
		}
		rec := httptest.NewRecorder()
		up.reg.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		body[len(body)-1] ^= 0xff
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(rec.Code)
		w.Write(body)
		return true
	})
	resp := b.get("GET", "/v2/app/blobs/"+dg.String(), "Range", "bytes=10-19")
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || len(got) >= 10 {
		t.Fatalf("a range of a corrupt blob arrived whole: %d bytes, %v", len(got), err)
	}
}

// blobBytes reads blob d straight from the fake upstream's registry.
func blobBytes(t *testing.T, up *fakeUpstream, d v1.Hash) []byte {
	t.Helper()
	resp, err := http.Get(up.seed.URL + "/v2/app/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRangedResume: a range stream cut anywhere (in the first range, in a
// chunk, at a chunk's last byte) continues from the last byte on disk:
// the blob is right and no byte is fetched twice.
func TestRangedResume(t *testing.T) {
	img := randomImage(t, 6<<20, 1)
	ld := firstLayer(t, img)
	layers, _ := img.Layers()
	size, _ := layers[0].Size()
	for _, tc := range []struct {
		request int   // which blob GET is cut
		cut     int64 // after this many body bytes
	}{{0, 1}, {0, 1 << 20}, {0, 2<<20 - 1}, {1, 1}, {2, 512 << 10}, {3, 1<<20 - 1}} {
		t.Run(fmt.Sprintf("request %d cut at %d", tc.request, tc.cut), func(t *testing.T) {
			up := newFakeUpstream(t)
			up.push("library/app", "v1", img)
			b := newTestBerth(t, up, ranged)
			log := logRanges(up, func(w http.ResponseWriter, r *http.Request, i int) bool {
				if i != tc.request {
					return false
				}
				rec := &headerRecorder{h: http.Header{}}
				up.reg.ServeHTTP(rec, r)
				for k, v := range rec.h {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.status)
				// Chunks arrive in any order; the last is shorter.
				w.Write(rec.body[:min(tc.cut, int64(len(rec.body))-1)])
				http.NewResponseController(w).Flush()
				if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
					conn.Close()
				}
				return true
			})
			pullBlob(t, b, "/v2/app/blobs/"+ld.String(), ld.String(), size)
			waitNoDownloads(t, b.srv)
			wantFetchedOnce(t, b, log, ld.String(), size)
			if got := testutil.ToFloat64(b.srv.m.resumed.WithLabelValues("hub")); got != 1 {
				t.Errorf("berth_upstream_resumed_total = %v, want 1", got)
			}
		})
	}
}

// TestRangedFetchFollowsRedirect: when the registry redirects a blob to
// storage (a CDN), later ranges go straight there; a signed URL that
// expired (403) is resolved again through the registry.
func TestRangedFetchFollowsRedirect(t *testing.T) {
	img := randomImage(t, 8<<20, 1)
	ld := firstLayer(t, img)
	layers, _ := img.Layers()
	size, _ := layers[0].Size()
	up := newFakeUpstream(t)
	up.push("library/app", "v1", img)
	full := blobBytes(t, &fakeUpstream{seed: up.seed}, ld)
	var mu sync.Mutex
	uses := map[string]int{} // signature → requests
	signed, served := 0, 0
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sig := r.URL.Query().Get("sig")
		uses[sig]++
		n := uses[sig]
		mu.Unlock()
		if n > 3 { // a signed URL is good for three requests
			http.Error(w, "expired", http.StatusForbidden)
			return
		}
		mu.Lock()
		served++
		mu.Unlock()
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(full))
	}))
	defer cdn.Close()
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || kindOf(r.URL.Path) != "blob" {
			return false
		}
		mu.Lock()
		signed++
		sig := signed
		mu.Unlock()
		http.Redirect(w, r, fmt.Sprintf("%s/blob?sig=%d", cdn.URL, sig), http.StatusTemporaryRedirect)
		return true
	})
	b := newTestBerth(t, up, ranged)
	pullBlob(t, b, "/v2/app/blobs/"+ld.String(), ld.String(), size)
	waitNoDownloads(t, b.srv)
	mu.Lock()
	defer mu.Unlock()
	ranges := served // the first range and the chunks, each once
	if atLeast := 1 + int((size-(2<<20)+(1<<20)-1)/(1<<20)); served < atLeast {
		t.Errorf("the CDN served %d ranges, want %d or more", served, atLeast)
	}
	// Each signature serves 3 ranges; a refused one is resolved again
	// once, however many ranges it refused: ceil(ranges/3) registry GETs.
	if want := (ranges + 2) / 3; signed != want || up.count("GET blob") != want {
		t.Errorf("%d registry blob GETs for %d ranges, want %d", signed, ranges, want)
	}
}
