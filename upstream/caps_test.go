package upstream

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// lab is go-containerregistry's registry behind a wrapper that counts
// requests and in-flight blob GETs, and can be made to fail.
type lab struct {
	srv                *httptest.Server
	requests, inflight atomic.Int64
	maxInflight        atomic.Int64
	mu                 sync.Mutex
	fault              func(w http.ResponseWriter, r *http.Request) bool
}

func newLab(t *testing.T) *lab {
	l := &lab{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.requests.Add(1)
		l.mu.Lock()
		fault := l.fault
		l.mu.Unlock()
		if fault != nil && fault(w, r) {
			return
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			n := l.inflight.Add(1)
			defer l.inflight.Add(-1)
			for m := l.maxInflight.Load(); n > m && !l.maxInflight.CompareAndSwap(m, n); m = l.maxInflight.Load() {
			}
			time.Sleep(50 * time.Millisecond) // long enough for requests to pile up
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(l.srv.Close)
	return l
}

func (l *lab) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	l.mu.Lock()
	l.fault = f
	l.mu.Unlock()
}

// push writes a random image to repo:v1 and returns its layer digests.
func (l *lab) push(t *testing.T, repo string, layers int, size int64) []string {
	t.Helper()
	img, _ := random.Image(size, int64(layers))
	ref, _ := name.ParseReference(strings.TrimPrefix(l.srv.URL, "http://")+"/"+repo+":v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	var out []string
	for _, x := range ls {
		d, _ := x.Digest()
		out = append(out, d.String())
	}
	return out
}

// TestMaxConnections: 20 concurrent blob downloads through a cap of 4
// reach the upstream at most 4 at a time, and all complete.
func TestMaxConnections(t *testing.T) {
	up := newLab(t)
	blobs := up.push(t, "app", 20, 1024)
	c, err := New(Options{URL: up.srv.URL, Caps: NewCaps(4, 0)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(blobs))
	for _, d := range blobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Blob(ctx, http.MethodGet, "app", d)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
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
	if m := up.maxInflight.Load(); m > 4 || m < 2 {
		t.Fatalf("%d blob GETs in flight at once, want at most 4 (and some overlap)", m)
	}
}

// TestMaxConnectionsWaitsWithinDeadline: a request that cannot get a slot
// before its deadline fails with the deadline, having sent nothing.
func TestMaxConnectionsWaitsWithinDeadline(t *testing.T) {
	up := newLab(t)
	blobs := up.push(t, "app", 1, 1024)
	c, _ := New(Options{URL: up.srv.URL, Caps: NewCaps(1, 0)})
	resp, err := c.Blob(context.Background(), http.MethodGet, "app", blobs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close() // holds the only slot
	before := up.requests.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Blob(ctx, http.MethodGet, "app", blobs[0]); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second request: %v, want the deadline", err)
	}
	if n := up.requests.Load() - before; n != 0 {
		t.Fatalf("%d requests sent while waiting for a slot", n)
	}
}

// TestFailover: the first URL down → the second serves; the first
// answering 404 → the second serves; while the first is offline it gets
// no request; after offline_period it is asked again; blobs go first to
// the URL that served the manifest.
func TestFailover(t *testing.T) {
	a, b := newLab(t), newLab(t)
	b.push(t, "app", 1, 1024)
	ca, _ := New(Options{URL: a.srv.URL, Attempts: 1})
	cb, _ := New(Options{URL: b.srv.URL, Attempts: 1})
	f, err := NewFailover([]*Client{ca, cb}, 300*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	get := func() error {
		resp, err := f.Manifest(ctx, http.MethodGet, "app", "v1")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	// a has nothing: its 404 falls through to b; a stays online.
	if err := get(); err != nil {
		t.Fatalf("404 at the first URL: %v", err)
	}
	if eps := f.Endpoints(); !eps[0].OfflineUntil.IsZero() {
		t.Fatalf("a 404 took the URL offline: %+v", eps[0])
	}
	// a fails: b serves, a goes offline and is not asked while it is.
	a.setFault(func(w http.ResponseWriter, r *http.Request) bool { w.WriteHeader(http.StatusBadGateway); return true })
	if err := get(); err != nil {
		t.Fatalf("first URL down: %v", err)
	}
	if eps := f.Endpoints(); eps[0].OfflineUntil.IsZero() {
		t.Fatal("a failing URL is not offline")
	}
	asked := a.requests.Load()
	for i := 0; i < 5; i++ {
		if err := get(); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.requests.Load() - asked; n != 0 {
		t.Fatalf("the offline URL got %d requests", n)
	}
	// Blobs follow the manifest's URL.
	blobsAtB := b.requests.Load()
	resp, err := f.Blob(ctx, http.MethodHead, "app", b.push(t, "app", 1, 512)[0])
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if b.requests.Load() == blobsAtB {
		t.Fatal("the blob was not asked of the URL that served the manifest")
	}
	// After the period a is asked again.
	a.setFault(nil)
	time.Sleep(350 * time.Millisecond)
	asked = a.requests.Load()
	get()
	if a.requests.Load() == asked {
		t.Fatal("the URL was not tried again after offline_period")
	}
}

// TestIdleAndHeaderTimeouts: an upstream that sends headers and then
// nothing fails the read within the idle timeout, saying so; one that
// never answers fails within the header timeout.
func TestIdleAndHeaderTimeouts(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			if r.URL.Query().Get("x") == "" && !strings.HasSuffix(r.URL.Path, "headers") {
				w.Header().Set("Content-Length", "100")
				w.WriteHeader(http.StatusOK)
				w.Write([]byte("0123456789"))
				w.(http.Flusher).Flush()
			}
			select {
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		w.WriteHeader(http.StatusOK) // /v2/: no auth
	}))
	defer srv.Close()
	c, _ := New(Options{URL: srv.URL, IdleTimeout: 300 * time.Millisecond, HeaderTimeout: 300 * time.Millisecond, Attempts: 1})
	start := time.Now()
	resp, err := c.Blob(context.Background(), http.MethodGet, "app", "sha256:body")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || !strings.Contains(err.Error(), "upstream_idle_timeout") || !errors.Is(err, ErrUnavailable) || time.Since(start) > 5*time.Second {
		t.Fatalf("idle body: %v after %s", err, time.Since(start))
	}
	start = time.Now()
	_, err = c.Blob(context.Background(), http.MethodGet, "app", "sha256:headers")
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > 5*time.Second {
		t.Fatalf("no headers: %v after %s", err, time.Since(start))
	}
}

// TestConnectTimeout: an upstream whose accept queue is full (SYNs
// dropped, as from a dead host) fails within the connect timeout.
func TestConnectTimeout(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	// Fill the accept queue until a connect hangs.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; i < 64; i++ {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		held = append(held, conn)
	}
	c, _ := New(Options{URL: "http://" + addr, ConnectTimeout: 300 * time.Millisecond, Attempts: 1})
	start := time.Now()
	err = c.Ping(context.Background())
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "timeout") || time.Since(start) > 5*time.Second {
		t.Fatalf("connect to a full queue: %v after %s", err, time.Since(start))
	}
}

// TestRefusePrivateNetworks: with RefuseSpecialAddresses the client does
// not connect to a loopback address, even one a name resolved to (the
// check is at connect time, after DNS), and says why.
func TestRefusePrivateNetworks(t *testing.T) {
	up := newLab(t)
	port := up.srv.URL[strings.LastIndex(up.srv.URL, ":")+1:]
	for _, u := range []string{up.srv.URL, "http://localhost:" + port} {
		c, err := New(Options{URL: u, RefuseSpecialAddresses: true, Attempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ping(context.Background()); !errors.Is(err, ErrPrivateAddress) {
			t.Errorf("%s: %v, want ErrPrivateAddress", u, err)
		}
	}
	if n := up.requests.Load(); n != 0 {
		t.Fatalf("%d requests reached the loopback upstream", n)
	}
}

// TestRedirectToMetadataRefused: with private networks allowed (an
// internal registry on loopback), a redirect to the cloud metadata
// address is still refused at connect time: no packet is sent there.
func TestRedirectToMetadataRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	c, err := New(Options{URL: srv.URL, RefuseSpecialAddresses: true, AllowPrivateNetworks: true, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Blob(context.Background(), http.MethodGet, "a/b", "sha256:"+strings.Repeat("a", 64))
	if !errors.Is(err, ErrPrivateAddress) {
		t.Fatalf("redirect to metadata: %v, want ErrPrivateAddress", err)
	}
}
