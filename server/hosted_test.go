package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/store/storetest"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/prometheus/client_golang/prometheus"
)

func withHosted(r *Repository, o *Options) {
	o.Repositories = append(o.Repositories, Repository{Name: "local", Kind: KindHosted, AnonymousPull: true, AnonymousPush: true})
	o.DefaultRepository = "local"
}

func (b *testBerth) do(method, path string, body []byte, hdr ...string) *http.Response {
	b.t.Helper()
	return doReq(b.t, b.http.URL, method, path, body, hdr...)
}

func doReq(t testing.TB, base, method, path string, body []byte, hdr ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, bytes.NewReader(body))
	if body == nil {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func sha(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func wantStatus(t *testing.T, resp *http.Response, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status)
	}
	if code != "" {
		if got := respCode(t, resp); got != code {
			t.Fatalf("%s %s: code %s, want %s", resp.Request.Method, resp.Request.URL.Path, got, code)
		}
	} else {
		readAll(t, resp)
	}
}

func TestPushPullWithClientLibrary(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted)
	img := randomImage(t, 64<<10, 3)
	if err := remote.Write(b.ref("team/app:v1"), img); err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(b.ref("team/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(got); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Fatalf("digest %s, want %s", d, want)
	}
}

// TestChunkedUploadSurvivesRestart: a push interrupted by a server restart
// continues at the same Location with the next chunk.
func TestChunkedUploadSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	blob := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	start := func(st *store.Store) *httptest.Server {
		s, err := New(Options{Repositories: []Repository{{Name: "local", Kind: KindHosted, AnonymousPull: true, AnonymousPush: true}},
			DefaultRepository: "local", Store: st, Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		return httptest.NewServer(s.Handler("local"))
	}
	st1, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := start(st1)
	resp := doReq(t, hs.URL, "POST", "/v2/app/blobs/uploads/", nil)
	wantStatus(t, resp, 202, "")
	loc := resp.Header.Get("Location")
	half := len(blob) / 2
	resp = doReq(t, hs.URL, "PATCH", loc, blob[:half], "Content-Range", fmt.Sprintf("0-%d", half-1), "Content-Type", "application/octet-stream")
	wantStatus(t, resp, 202, "")
	if r := resp.Header.Get("Range"); r != fmt.Sprintf("0-%d", half-1) {
		t.Fatalf("Range %q", r)
	}
	hs.Close()
	st1.Close() // restart

	st2 := storetest.OpenDir(t, dir)
	hs = start(st2)
	defer hs.Close()
	resp = doReq(t, hs.URL, "GET", loc, nil)
	wantStatus(t, resp, 204, "")
	if r := resp.Header.Get("Range"); r != fmt.Sprintf("0-%d", half-1) {
		t.Fatalf("status after restart: Range %q", r)
	}
	resp = doReq(t, hs.URL, "PATCH", loc, blob[half:], "Content-Range", fmt.Sprintf("%d-%d", half, len(blob)-1))
	wantStatus(t, resp, 202, "")
	resp = doReq(t, hs.URL, "PUT", loc+"?digest="+sha(blob), nil)
	wantStatus(t, resp, 201, "")
	resp = doReq(t, hs.URL, "GET", "/v2/app/blobs/"+sha(blob), nil)
	if got := readAll(t, resp); !bytes.Equal(got, blob) {
		t.Fatalf("blob after resumed upload: %d bytes", len(got))
	}
}

func TestUploadBadInput(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted)
	data := []byte("some layer bytes")

	// Out-of-order chunk: 416 with the current Range, and nothing lost.
	resp := b.do("POST", "/v2/app/blobs/uploads/", nil)
	wantStatus(t, resp, 202, "")
	loc := resp.Header.Get("Location")
	wantStatus(t, b.do("PATCH", loc, data[:5], "Content-Range", "0-4"), 202, "")
	resp = b.do("PATCH", loc, data[10:], "Content-Range", fmt.Sprintf("10-%d", len(data)-1))
	if resp.StatusCode != 416 || resp.Header.Get("Range") != "0-4" {
		t.Fatalf("gap: status %d Range %q", resp.StatusCode, resp.Header.Get("Range"))
	}
	readAll(t, resp)
	// Content-Range longer than the body.
	resp = b.do("PATCH", loc, data[5:8], "Content-Range", "5-15")
	if resp.StatusCode != 416 {
		t.Fatalf("short chunk: %d", resp.StatusCode)
	}
	readAll(t, resp)
	wantStatus(t, b.do("PATCH", loc, data[5:], "Content-Range", fmt.Sprintf("5-%d", len(data)-1)), 202, "")
	// Wrong digest: refused, nothing stored.
	wrong := sha([]byte("other"))
	wantStatus(t, b.do("PUT", loc+"?digest="+wrong, nil), 400, codeDigestInvalid.name)
	if _, err := b.store.StatBlob(context.Background(), store.MustDigest(wrong)); !store.IsNotFound(err) {
		t.Fatal("mismatched upload stored")
	}
	// Unknown and malformed upload ids.
	wantStatus(t, b.do("PATCH", "/v2/app/blobs/uploads/0123456789abcdef0123456789abcdef", data), 404, codeBlobUploadUnknown.name)
	wantStatus(t, b.do("GET", "/v2/app/blobs/uploads/nope", nil), 404, codeBlobUploadUnknown.name)
	wantStatus(t, b.do("GET", "/v2/app/blobs/uploads/..%2F..%2Findex.db", nil), 404, "")
	// An upload id belongs to its repository.
	resp = b.do("POST", "/v2/app/blobs/uploads/", nil)
	readAll(t, resp)
	other := strings.Replace(resp.Header.Get("Location"), "/v2/app/", "/v2/other/", 1)
	wantStatus(t, b.do("GET", other, nil), 404, codeBlobUploadUnknown.name)
	// Monolithic POST with a truncated body.
	wantStatus(t, b.do("POST", "/v2/app/blobs/uploads/?digest="+sha(data), data[:4]), 400, codeDigestInvalid.name)
	wantStatus(t, b.do("PUT", "/v2/app/blobs/uploads/0123456789abcdef0123456789abcdef?digest="+sha(data), nil), 404, codeBlobUploadUnknown.name)
	// Bad digest parameter.
	wantStatus(t, b.do("POST", "/v2/app/blobs/uploads/?digest=sha256:xyz", data), 400, codeDigestInvalid.name)
}

func TestManifestPushValidation(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted)
	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	layer := []byte("layer")
	for _, blob := range [][]byte{config, layer} {
		wantStatus(t, b.do("POST", "/v2/app/blobs/uploads/?digest="+sha(blob), blob), 201, "")
	}
	manifest := func(layerDigest string) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":5}]}`,
			mtOCIManifest, sha(config), len(config), layerDigest))
	}
	good := manifest(sha(layer))
	ct := "Content-Type"
	resp := b.do("PUT", "/v2/app/manifests/v1", good, ct, mtOCIManifest)
	wantStatus(t, resp, 201, "")
	if resp.Header.Get("Docker-Content-Digest") != sha(good) || resp.Header.Get("Location") != "/v2/app/manifests/"+sha(good) {
		t.Fatalf("headers %v", resp.Header)
	}
	for _, tc := range []struct {
		name   string
		path   string
		body   []byte
		ctype  string
		status int
		code   string
	}{
		{"invalid json", "/v2/app/manifests/v1", []byte(`{"schemaVersion":2,`), mtOCIManifest, 400, codeManifestInvalid.name},
		{"unknown media type", "/v2/app/manifests/v1", good, "application/x-bogus", 400, codeManifestInvalid.name},
		{"media type mismatch", "/v2/app/manifests/v1", good, mtDockerV2, 400, codeManifestInvalid.name},
		{"missing blob", "/v2/app/manifests/v1", manifest(sha([]byte("never pushed"))), mtOCIManifest, 400, codeManifestBlobUnknown.name},
		{"blob of another repository", "/v2/other/manifests/v1", good, mtOCIManifest, 400, codeManifestBlobUnknown.name},
		{"digest mismatch", "/v2/app/manifests/" + sha([]byte("x")), good, mtOCIManifest, 400, codeDigestInvalid.name},
		{"bad tag", "/v2/app/manifests/-v1", good, mtOCIManifest, 400, codeManifestInvalid.name},
		{"schema 1", "/v2/app/manifests/v1", []byte(`{"schemaVersion":1}`), mtDockerV1, 400, codeManifestInvalid.name},
		{"missing child", "/v2/app/manifests/idx", []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"%s","manifests":[{"mediaType":"%s","digest":"%s","size":1}]}`, mtOCIIndex, mtOCIManifest, sha([]byte("nope")))), mtOCIIndex, 400, codeManifestBlobUnknown.name},
		{"oversize", "/v2/app/manifests/v1", bytes.Repeat([]byte(" "), maxManifestSize+1), mtOCIManifest, 413, codeManifestInvalid.name},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantStatus(t, b.do("PUT", tc.path, tc.body, ct, tc.ctype), tc.status, tc.code)
			// Nothing already stored is lost.
			resp := b.do("GET", "/v2/app/manifests/v1", nil)
			if body := readAll(t, resp); !bytes.Equal(body, good) {
				t.Fatalf("stored manifest changed after a bad push")
			}
		})
	}
	// Push to a proxy repository: UNSUPPORTED naming the kind.
	resp = b.do("PUT", "/v2/hub/app/manifests/v1", good, ct, mtOCIManifest)
	if resp.StatusCode != 405 || !strings.Contains(string(readAll(t, resp)), "proxy") {
		t.Fatalf("push to proxy: %d", resp.StatusCode)
	}
}

// TestBlobsSharedButIsolated: one file for a blob pushed to two
// repositories; each sees only what was pushed or mounted into it.
func TestBlobsSharedButIsolated(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted)
	data := []byte("shared layer")
	d := sha(data)
	wantStatus(t, b.do("POST", "/v2/a/blobs/uploads/?digest="+d, data), 201, "")
	wantStatus(t, b.do("GET", "/v2/b/blobs/"+d, nil), 404, codeBlobUnknown.name)
	wantStatus(t, b.do("HEAD", "/v2/b/blobs/"+d, nil), 404, "")
	// Mount from a source that does not hold it: falls back to an upload.
	wantStatus(t, b.do("POST", "/v2/b/blobs/uploads/?mount="+d+"&from=c", nil), 202, "")
	// Mount from a: linked without a transfer.
	resp := b.do("POST", "/v2/b/blobs/uploads/?mount="+d+"&from=a", nil)
	wantStatus(t, resp, 201, "")
	if resp.Header.Get("Location") != "/v2/b/blobs/"+d {
		t.Fatalf("mount Location %q", resp.Header.Get("Location"))
	}
	wantStatus(t, b.do("GET", "/v2/b/blobs/"+d, nil), 200, "")
	wantStatus(t, b.do("POST", "/v2/c/blobs/uploads/?digest="+d, data), 201, "")
	if _, n := b.store.Stats(); n != 1 {
		t.Fatalf("%d blobs stored, want 1", n)
	}
	// Deleting from one repository leaves the others and the file.
	wantStatus(t, b.do("DELETE", "/v2/a/blobs/"+d, nil), 202, "")
	wantStatus(t, b.do("GET", "/v2/a/blobs/"+d, nil), 404, codeBlobUnknown.name)
	wantStatus(t, b.do("GET", "/v2/b/blobs/"+d, nil), 200, "")
}

func TestDeleteManifestAndTags(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted)
	img := randomImage(t, 1024, 1)
	if err := remote.Write(b.ref("app:v1"), img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	resp := b.do("GET", "/v2/app/manifests/v1", nil)
	body := readAll(t, resp)
	wantStatus(t, b.do("PUT", "/v2/app/manifests/v2", body, "Content-Type", resp.Header.Get("Content-Type")), 201, "")
	resp = b.do("GET", "/v2/app/tags/list", nil)
	if got := string(readAll(t, resp)); !strings.Contains(got, `["v1","v2"]`) {
		t.Fatalf("tags %s", got)
	}
	wantStatus(t, b.do("DELETE", "/v2/app/manifests/v2", nil), 202, "") // a tag only
	wantStatus(t, b.do("GET", "/v2/app/manifests/v1", nil), 200, "")
	wantStatus(t, b.do("DELETE", "/v2/app/manifests/"+d.String(), nil), 202, "")
	wantStatus(t, b.do("GET", "/v2/app/manifests/v1", nil), 404, codeManifestUnknown.name)
	wantStatus(t, b.do("GET", "/v2/app/manifests/"+d.String(), nil), 404, codeManifestUnknown.name)
	wantStatus(t, b.do("DELETE", "/v2/app/manifests/"+d.String(), nil), 404, codeManifestUnknown.name)
	// Blobs are left for garbage collection, not deleted inline.
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	if _, err := b.store.StatBlob(context.Background(), store.MustDigest(ld.String())); err != nil {
		t.Fatalf("layer deleted inline: %v", err)
	}
}

func TestUploadsExpire(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted)
	resp := b.do("POST", "/v2/app/blobs/uploads/", nil)
	readAll(t, resp)
	loc := resp.Header.Get("Location")
	wantStatus(t, b.do("PATCH", loc, []byte("abc")), 202, "")
	n, err := b.store.ExpireUploads(context.Background(), 0)
	if err != nil || n != 1 {
		t.Fatalf("expired %d, %v", n, err)
	}
	wantStatus(t, b.do("PATCH", loc, []byte("def")), 404, codeBlobUploadUnknown.name)
	entries, _ := os.ReadDir(filepath.Join(b.store.Dir(), "uploads"))
	if len(entries) != 0 {
		t.Fatalf("upload files left: %v", entries)
	}
}

func TestCatalogPagination(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted)
	for _, name := range []string{"c", "a", "b/x"} {
		if err := remote.Write(b.ref(name+":v1"), randomImage(t, 256, 1)); err != nil {
			t.Fatal(err)
		}
	}
	resp := b.do("GET", "/v2/_catalog?n=2", nil)
	if got := string(readAll(t, resp)); got != `{"repositories":["a","b/x"]}` {
		t.Fatalf("page 1: %s", got)
	}
	link := resp.Header.Get("Link")
	if link != `</v2/_catalog?last=b%2Fx&n=2>; rel="next"` {
		t.Fatalf("Link %q", link)
	}
	resp = b.do("GET", "/v2/_catalog?n=2&last=b%2Fx", nil)
	if got := string(readAll(t, resp)); got != `{"repositories":["c"]}` || resp.Header.Get("Link") != "" {
		t.Fatalf("page 2: %s %q", got, resp.Header.Get("Link"))
	}
	wantStatus(t, b.do("GET", "/v2/_catalog?n=-1", nil), 400, codePaginationInvalid.name)
}
