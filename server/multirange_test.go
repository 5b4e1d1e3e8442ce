package server

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"strconv"
	"strings"
	"testing"
)

// TestMultiRange: a multi-range request, as podman's zstd:chunked pulls
// send, gets a correct multipart/byteranges answer on a cold blob (one
// upstream GET, the whole blob) and on a warm one.
func TestMultiRange(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 256<<10, 1)
	up.push("library/app", "v1", img)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	blob, _ := io.ReadAll(rc)
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.DockerHub = true })
	ranges := [][2]int{{0, 9}, {1000, 1999}, {len(blob) - 5, len(blob) - 1}}
	hdr := "bytes=0-9,1000-1999," + itoa(len(blob)-5) + "-" + itoa(len(blob)-1)
	for _, state := range []string{"cold", "warm"} {
		resp := b.get("GET", "/v2/app/blobs/"+ld.String(), "Range", hdr)
		mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if resp.StatusCode != 206 || err != nil || mt != "multipart/byteranges" {
			t.Fatalf("%s: %d %q", state, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		mr := multipart.NewReader(resp.Body, params["boundary"])
		for i, r := range ranges {
			p, err := mr.NextPart()
			if err != nil {
				t.Fatalf("%s: part %d: %v", state, i, err)
			}
			got, _ := io.ReadAll(p)
			want := blob[r[0] : r[1]+1]
			if !bytes.Equal(got, want) || !strings.HasPrefix(p.Header.Get("Content-Range"), "bytes "+itoa(r[0])+"-"+itoa(r[1])+"/") {
				t.Fatalf("%s: part %d: %d bytes, Content-Range %q", state, i, len(got), p.Header.Get("Content-Range"))
			}
		}
		if _, err := mr.NextPart(); err != io.EOF {
			t.Fatalf("%s: more parts than ranges: %v", state, err)
		}
		resp.Body.Close()
	}
	if n := up.count("GET blob"); n != 1 {
		t.Errorf("%d upstream blob GETs for a cold and a warm multi-range read, want 1", n)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
