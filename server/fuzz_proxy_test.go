package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/faultproxy"
	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"
)

// fuzzFaults are the faults the proxy fuzz injects (hang and drip only
// slow it down; they are in the e2e table).
var fuzzFaults = []faultproxy.Fault{faultproxy.Reset, faultproxy.Corrupt, faultproxy.Unavailable,
	faultproxy.RateLimited, faultproxy.IgnoreRange, faultproxy.HeadNotFound, faultproxy.LyingLength}

// FuzzProxyPromise, after distribution's FuzzProxyBlobstore: random
// sequences of GET, HEAD and Range requests for the blobs and manifest of
// an image through a proxy repository, against an upstream that breaks
// at random. Whatever happens, every complete 200 body hashes to the
// digest asked for, every 206 body is that slice of the true blob, and
// the store is consistent at the end. Its seed corpus runs in make test;
// make fuzz runs it for a minute.
func FuzzProxyPromise(f *testing.F) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	f.Cleanup(reg.Close)
	img, err := random.Image(200_000, 3)
	if err != nil {
		f.Fatal(err)
	}
	ref, _ := name.ParseReference(strings.TrimPrefix(reg.URL, "http://")+"/app:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		f.Fatal(err)
	}
	manifest, _ := img.RawManifest()
	mdigest, _ := img.Digest()
	blobs := map[string][]byte{}
	var digests []string
	layers, _ := img.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		rc, _ := l.Compressed()
		b, _ := io.ReadAll(rc)
		blobs[d.String()], digests = b, append(digests, d.String())
	}
	cfg, _ := img.RawConfigFile()
	cd, _ := img.ConfigName()
	blobs[cd.String()], digests = cfg, append(digests, cd.String())
	fp, err := faultproxy.Start(strings.TrimPrefix(reg.URL, "http://"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { fp.Close() })

	f.Add([]byte{0, 0, 0, 2, 1, 0, 4, 0, 0})
	f.Add([]byte{0, 0, 1, 0, 0, 0, 2, 1, 2, 1, 1, 5})
	f.Add([]byte{3, 0, 2, 3, 0, 0, 0, 2, 7, 2, 2, 0, 1, 3, 0})
	f.Add([]byte{0, 1, 6, 0, 1, 0, 2, 2, 5, 2, 2, 0, 5, 0, 4})
	f.Add([]byte{4, 0, 1, 4, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 6, 1, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 60 {
			ops = ops[:60]
		}
		st, err := store.Open(t.TempDir(), store.Options{Logger: slog.New(slog.DiscardHandler), FlushInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		uc, _ := upstream.New(upstream.Options{URL: "http://" + fp.Addr(), HeaderTimeout: 2 * time.Second, Attempts: 1})
		// One attempt: a retry would only wait out the 429's Retry-After.
		srv, err := New(Options{
			Repositories: []Repository{{Name: "hub", Kind: KindProxy, Upstream: uc, UpstreamHost: fp.Addr(),
				TagTTL: time.Hour, ServeStale: true, AnonymousPull: true}},
			DefaultRepository: "hub", Store: st, Registry: prometheus.NewRegistry(), FetchTimeout: 10 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(srv.Handler("hub"))
		defer hs.Close()
		client := &http.Client{Timeout: 20 * time.Second}

		for i := 0; i+2 < len(ops); i += 3 {
			op, target, fault := ops[i]%6, int(ops[i+1])%len(digests), int(ops[i+2])
			if fault < len(fuzzFaults) {
				fp.Set(fuzzFaults[fault], faultproxy.Any)
			} else {
				fp.Set(faultproxy.None, faultproxy.Any)
			}
			d := digests[target]
			blob := blobs[d]
			method, path, rng := "GET", "/v2/app/blobs/"+d, ""
			switch op {
			case 1:
				method = "HEAD"
			case 2:
				lo := int(ops[i+1]) * len(blob) / 256
				rng = fmt.Sprintf("bytes=%d-%d", lo, lo+int(ops[i+2])*97%(len(blob)-lo))
			case 3:
				path = "/v2/app/manifests/v1"
			case 4:
				path = "/v2/app/manifests/" + mdigest.String()
			case 5:
				method, path = "HEAD", "/v2/app/manifests/v1"
			}
			req, _ := http.NewRequest(method, hs.URL+path, nil)
			if rng != "" {
				req.Header.Set("Range", rng)
			}
			resp, err := client.Do(req)
			if err != nil {
				continue // berth may end a response it cannot finish; never with wrong bytes
			}
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := blob
			if op >= 3 {
				want = manifest
			}
			switch {
			case rerr != nil || method == "HEAD" || resp.StatusCode >= 300:
				// an error, or no body: nothing to check
			case resp.StatusCode == http.StatusOK:
				if !bytes.Equal(body, want) {
					t.Fatalf("op %d %s %s: 200 with %d bytes (sha256 %x) that are not the content (%d bytes)",
						i/3, method, path, len(body), sha256.Sum256(body), len(want))
				}
			case resp.StatusCode == http.StatusPartialContent:
				var lo, hi, total int
				if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &lo, &hi, &total); err != nil ||
					total != len(want) || hi >= total || !bytes.Equal(body, want[lo:hi+1]) {
					t.Fatalf("op %d range %q: 206 %q with %d bytes that are not that slice", i/3, rng, resp.Header.Get("Content-Range"), len(body))
				}
			}
		}
		fp.Set(faultproxy.None, faultproxy.Any)
		waitNoDownloads(t, srv)
		hs.Close() // and the handlers still sending from a temp file
		var probs []store.Problem
		for i := 0; i < 100; i++ { // a reader may still hold its temp file a moment
			if probs, err = st.Check(context.Background(), store.CheckOptions{Rehash: true, Orphans: true, Tmp: true}); err == nil && len(probs) == 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil || len(probs) > 0 {
			t.Fatalf("store after the sequence: %v %v", probs, err)
		}
	})
}
