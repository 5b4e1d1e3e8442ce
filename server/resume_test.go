package server

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/berth-registry/berth/store"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// cutOnce makes up's first GET of a blob send only its first cut bytes and
// then drop the connection; later GETs (the resume, with Range) are served
// as they are, or with the Range ignored when ignoreRange.
func cutOnce(up *fakeUpstream, cut int64, ignoreRange bool) {
	done := false
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		if done {
			if ignoreRange {
				r.Header.Del("Range")
			}
			return false
		}
		done = true
		rec := &headerRecorder{h: http.Header{}}
		up.reg.ServeHTTP(rec, r)
		for k, v := range rec.h {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.status)
		w.Write(rec.body[:cut])
		http.NewResponseController(w).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return true
	})
}

type headerRecorder struct {
	h      http.Header
	status int
	body   []byte
}

func (r *headerRecorder) Header() http.Header { return r.h }
func (r *headerRecorder) WriteHeader(s int)   { r.status = s }
func (r *headerRecorder) Write(p []byte) (int, error) {
	r.body = append(r.body, p...)
	return len(p), nil
}

// TestResumeBrokenDownload: a blob stream cut anywhere (first byte, middle,
// last byte) continues from the last byte on disk; the client gets the
// right blob without an error, the upstream is asked twice, and the resume
// is counted. An upstream that ignores Range on the resume is skipped to
// the offset.
func TestResumeBrokenDownload(t *testing.T) {
	img := randomImage(t, 3<<20, 1)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	size, _ := layers[0].Size()
	for _, tc := range []struct {
		cut         int64
		ignoreRange bool
	}{{1, false}, {1 << 20, false}, {size / 2, false}, {size - 1, false}, {size / 3, true}} {
		t.Run(fmt.Sprintf("cut at %d ignore range %v", tc.cut, tc.ignoreRange), func(t *testing.T) {
			up := newFakeUpstream(t)
			up.push("library/app", "v1", img)
			b := newTestBerth(t, up, func(r *Repository, o *Options) {
				r.DockerHub = true
			})
			cutOnce(up, tc.cut, tc.ignoreRange)
			resp := b.get("GET", "/v2/app/blobs/"+ld.String())
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			resp.Body.Close()
			if err != nil || n != size || fmt.Sprintf("sha256:%x", h.Sum(nil)) != ld.String() {
				t.Fatalf("client got %d of %d bytes (%v), digest ok %v", n, size, err, fmt.Sprintf("sha256:%x", h.Sum(nil)) == ld.String())
			}
			waitNoDownloads(t, b.srv)
			if got := up.count("GET blob"); got != 2 {
				t.Errorf("%d upstream GETs, want 2 (the cut one and the resume)", got)
			}
			if got := testutil.ToFloat64(b.srv.m.resumed.WithLabelValues("hub")); got != 1 {
				t.Errorf("berth_upstream_resumed_total = %v, want 1", got)
			}
			if _, err := b.store.StatBlob(t.Context(), store.MustDigest(ld.String())); err != nil {
				t.Errorf("the resumed blob is not cached: %v", err)
			}
		})
	}
}
