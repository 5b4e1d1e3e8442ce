package faultproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// upstream is go-containerregistry's registry holding one blob.
func upstream(t *testing.T) (addr, digest string, blob []byte) {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	blob = bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	digest = fmt.Sprintf("sha256:%x", sha256.Sum256(blob))
	resp, err := http.Post(srv.URL+"/v2/app/blobs/uploads/?digest="+digest, "application/octet-stream", bytes.NewReader(blob))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("seed upstream: %v %v", resp, err)
	}
	resp.Body.Close()
	return strings.TrimPrefix(srv.URL, "http://"), digest, blob
}

// proxied starts a proxy in front of upstream(t) and returns it with the
// URL of the seeded blob through it.
func proxied(t *testing.T) (p *Proxy, url string, blob []byte) {
	t.Helper()
	addr, digest, blob := upstream(t)
	p, err := Start(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, "http://" + p.Addr() + "/v2/app/blobs/" + digest, blob
}

func get(t *testing.T, ctx context.Context, method, url string, hdr ...string) (*http.Response, []byte, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, method, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := (&http.Transport{DisableKeepAlives: true}).RoundTrip(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func TestFaults(t *testing.T) {
	p, url, blob := proxied(t)
	ctx := context.Background()

	var resp *http.Response
	_, body, err := get(t, ctx, "GET", url)
	if err != nil || !bytes.Equal(body, blob) {
		t.Fatalf("no fault: %v, %d bytes", err, len(body))
	}

	p.Set(Reset, Blobs)
	if _, body, err = get(t, ctx, "GET", url); err == nil || len(body) >= len(blob) {
		t.Errorf("reset: err %v after %d bytes", err, len(body))
	}
	p.Set(Corrupt, Blobs)
	if _, body, err = get(t, ctx, "GET", url); err != nil || len(body) != len(blob) || bytes.Equal(body, blob) {
		t.Errorf("corrupt: err %v, same bytes %v", err, bytes.Equal(body, blob))
	}
	p.Set(Drip, Blobs)
	start := time.Now()
	if _, body, err = get(t, ctx, "GET", url); err != nil || !bytes.Equal(body, blob) || time.Since(start) < 200*time.Millisecond {
		t.Errorf("drip: err %v, %d bytes in %v", err, len(body), time.Since(start))
	}
	p.Set(Unavailable, Blobs)
	if resp, _, _ = get(t, ctx, "GET", url); resp.StatusCode != 503 {
		t.Errorf("503: got %d", resp.StatusCode)
	}
	p.Set(RateLimited, Any)
	if resp, _, _ = get(t, ctx, "GET", url); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" || resp.Header.Get("Ratelimit-Remaining") != "0;w=21600" {
		t.Errorf("429: %d %v", resp.StatusCode, resp.Header)
	}
	p.Set(IgnoreRange, Blobs)
	if resp, body, _ = get(t, ctx, "GET", url, "Range", "bytes=10-19"); resp.StatusCode != 200 || len(body) != len(blob) {
		t.Errorf("ignore-range: %d, %d bytes", resp.StatusCode, len(body))
	}
	p.Set(HeadNotFound, Blobs)
	if resp, _, _ = get(t, ctx, "HEAD", url); resp.StatusCode != 404 {
		t.Errorf("head-404 HEAD: %d", resp.StatusCode)
	}
	if resp, _, _ = get(t, ctx, "GET", url); resp.StatusCode != 200 {
		t.Errorf("head-404 GET: %d", resp.StatusCode)
	}
	p.Set(LyingLength, Blobs)
	if resp, _, err = get(t, ctx, "GET", url); err == nil || resp.ContentLength != int64(len(blob)+100) {
		t.Errorf("lying-length: err %v, length %d", err, resp.ContentLength)
	}
	// Faults on blobs leave manifests and the ping alone.
	if resp, _, _ = get(t, ctx, "GET", "http://"+p.Addr()+"/v2/"); resp.StatusCode != 200 {
		t.Errorf("ping under a blob fault: %d", resp.StatusCode)
	}

	p.Set(Hang, Blobs)
	done := make(chan error, 1)
	go func() { _, body, err := get(t, ctx, "GET", url); _ = body; done <- err }()
	select {
	case err := <-done:
		t.Fatalf("hang answered: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	p.Set(None, Any) // clearing ends the hang with the real answer
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after the hang: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the hang outlived its fault")
	}
	if n := p.Count("GET blob"); n < 10 {
		t.Errorf("counted %d blob GETs", n)
	}
}

// TestStreamRate: a capped body arrives whole and no faster than its
// rate (64 KiB at 256 KB/s: at least 250 ms); with no cap it is not held.
func TestStreamRate(t *testing.T) {
	p, url, blob := proxied(t)
	p.SetStreamRate(256e3)
	start := time.Now()
	_, body, err := get(t, context.Background(), "GET", url)
	took := time.Since(start)
	if err != nil || !bytes.Equal(body, blob) {
		t.Fatalf("capped body: %d bytes, %v", len(body), err)
	}
	if min := time.Duration(float64(len(blob)) / 256e3 * float64(time.Second)); took < min {
		t.Errorf("64 KiB at 256 KB/s took %s, less than %s", took, min)
	}
	p.SetStreamRate(0)
	if _, body, err := get(t, context.Background(), "GET", url); err != nil || !bytes.Equal(body, blob) {
		t.Fatalf("uncapped body: %d bytes, %v", len(body), err)
	}
}
