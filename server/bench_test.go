package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/prometheus/client_golang/prometheus"
)

func BenchmarkParsePath(b *testing.B) {
	p := "/v2/library/nginx/blobs/" + testDigest
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parsePath(p); err != nil {
			b.Fatal(err)
		}
	}
}

func benchStore(b *testing.B) *store.Store {
	st, err := store.Open(b.TempDir(), store.Options{FlushInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st
}

func BenchmarkResolveTag(b *testing.B) {
	st := benchStore(b)
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	m := store.Manifest{Digest: store.DigestOf(body), MediaType: mtOCIManifest, Body: body}
	st.PutManifest(context.Background(), "hub/library/nginx", m, "latest", nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := st.ResolveTag(context.Background(), "hub/library/nginx", "latest"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServeCachedManifest: a warm GET of a manifest by tag through
// the whole handler (routing, cache rules, metrics, log line).
func BenchmarkServeCachedManifest(b *testing.B) {
	st := benchStore(b)
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"` + testDigest + `","size":0},"layers":[]}`)
	m := store.Manifest{Digest: store.DigestOf(body), MediaType: mtOCIManifest, Body: body}
	st.PutManifest(context.Background(), "hub/library/nginx", m, "latest", nil)
	s, err := New(Options{Repositories: []Repository{{Name: "hub", Kind: KindProxy, Upstream: nilUpstream{}, TagTTL: time.Hour, AnonymousPull: true}},
		DefaultRepository: "hub", Store: st, Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	h := s.Handler("hub")
	req := httptest.NewRequest("GET", "/v2/library/nginx/manifests/latest", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

// nilUpstream is for benchmarks whose requests never reach an upstream.
type nilUpstream struct{}

func (nilUpstream) Manifest(context.Context, string, string, string) (*http.Response, error) {
	return nil, io.ErrUnexpectedEOF
}
func (nilUpstream) Blob(context.Context, string, string, string) (*http.Response, error) {
	return nil, io.ErrUnexpectedEOF
}
func (nilUpstream) BlobRange(context.Context, string, string, int64, int64) (*http.Response, error) {
	return nil, io.ErrUnexpectedEOF
}
func (nilUpstream) Tags(context.Context, string, url.Values) (*http.Response, error) {
	return nil, io.ErrUnexpectedEOF
}
func (nilUpstream) Ping(context.Context) error { return nil }
func (nilUpstream) Referrers(context.Context, string, string, string) (*http.Response, error) {
	return nil, io.ErrUnexpectedEOF
}
