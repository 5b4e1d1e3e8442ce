package server

import (
	"errors"
	"strings"
	"testing"
)

const testDigest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func TestParsePath(t *testing.T) {
	long := strings.Repeat("a", 256)
	tests := []struct {
		path     string
		kind     routeKind
		name     string
		ref      string
		uploadID string
		code     string // expected error code, "" for success
	}{
		{path: "/v2/", kind: routeBase},
		{path: "/v2", kind: routeBase},
		{path: "/v2/_catalog", kind: routeCatalog},
		{path: "/v2/library/nginx/manifests/latest", kind: routeManifest, name: "library/nginx", ref: "latest"},
		{path: "/v2/nginx/manifests/" + testDigest, kind: routeManifest, name: "nginx", ref: testDigest},
		{path: "/v2/a/b/c/d/manifests/v1.2.3-rc_1", kind: routeManifest, name: "a/b/c/d", ref: "v1.2.3-rc_1"},
		{path: "/v2/ghcr.io/org/app/blobs/" + testDigest, kind: routeBlob, name: "ghcr.io/org/app", ref: testDigest},
		{path: "/v2/my-app/tags/list", kind: routeTags, name: "my-app"},
		{path: "/v2/foo/blobs/uploads/", kind: routeUploads, name: "foo"},
		{path: "/v2/foo/blobs/uploads", kind: routeUploads, name: "foo"},
		{path: "/v2/foo/blobs/uploads/0123456789abcdef0123456789abcdef", kind: routeUpload, name: "foo", uploadID: "0123456789abcdef0123456789abcdef"},
		{path: "/v2/foo/referrers/" + testDigest, kind: routeReferrers, name: "foo", ref: testDigest},
		// A repository may be called "blobs" or "manifests": the path is read from the end.
		{path: "/v2/blobs/manifests/latest", kind: routeManifest, name: "blobs", ref: "latest"},
		{path: "/v2/manifests/blobs/" + testDigest, kind: routeBlob, name: "manifests", ref: testDigest},
		{path: "/v2/a/blobs/uploads/blobs/" + testDigest, kind: routeBlob, name: "a/blobs/uploads", ref: testDigest},
		{path: "/v2/a__b/manifests/x", kind: routeManifest, name: "a__b", ref: "x"},
		{path: "/v2/a---b.c_d/manifests/x", kind: routeManifest, name: "a---b.c_d", ref: "x"},

		{path: "/v2/UPPER/manifests/latest", code: codeNameInvalid.name},
		{path: "/v2/a//b/manifests/latest", code: codeNameInvalid.name},
		{path: "/v2/-a/manifests/latest", code: codeNameInvalid.name},
		{path: "/v2/a-/manifests/latest", code: codeNameInvalid.name},
		{path: "/v2/a___b/manifests/latest", code: codeNameInvalid.name},
		{path: "/v2/a..b/manifests/latest", code: codeNameInvalid.name},
		{path: "/v2/../etc/manifests/latest", code: codeNameInvalid.name},
		{path: "/v2/" + long + "/manifests/latest", code: codeNameInvalid.name},
		{path: "/v2/manifests/latest", code: codeNotFound.name},
		{path: "/v2/a/manifests/-bad", code: codeManifestInvalid.name},
		{path: "/v2/a/manifests/" + strings.Repeat("t", 129), code: codeManifestInvalid.name},
		{path: "/v2/a/manifests/sha256:abc", code: codeDigestInvalid.name},
		{path: "/v2/a/blobs/sha256:ABC", code: codeDigestInvalid.name},
		{path: "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", code: codeDigestInvalid.name},
		{path: "/v2/a/blobs/sha256:" + strings.Repeat("A", 64), code: codeDigestInvalid.name},
		{path: "/v2/a/blobs/uploads/../../x", code: codeNotFound.name},
		{path: "/v2/a/blobs/uploads/x.y", code: codeBlobUploadUnknown.name},
		{path: "/v2/a/blobs/uploads/abc-123_X", code: codeBlobUploadUnknown.name}, // not the store's grammar
		{path: "/v2/a/unknown/x", code: codeNotFound.name},
		{path: "/v3/a/manifests/x", code: codeNotFound.name},
	}
	for _, tt := range tests {
		t.Run(tt.path[:min(len(tt.path), 60)], func(t *testing.T) {
			rt, err := parsePath(tt.path)
			if tt.code != "" {
				var re *regError
				if !errors.As(err, &re) || re.Code.name != tt.code {
					t.Fatalf("parsePath(%q) = %+v, %v; want error %s", tt.path, rt, err, tt.code)
				}
				return
			}
			if err != nil {
				t.Fatalf("parsePath(%q): %v", tt.path, err)
			}
			if rt.kind != tt.kind || rt.name != tt.name || rt.ref != tt.ref || rt.uploadID != tt.uploadID {
				t.Fatalf("parsePath(%q) = %+v; want kind %v name %q ref %q upload %q", tt.path, rt, tt.kind, tt.name, tt.ref, tt.uploadID)
			}
		})
	}
}

// FuzzParsePath checks that any path either fails with a registry error
// or yields a route whose parts are valid and that cannot escape a
// directory.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/v2/", "/v2/a/manifests/b", "/v2/a/b/blobs/" + testDigest, "/v2/x/blobs/uploads/id",
		"/v2/x/tags/list", "/v2/_catalog", "/v2/a/referrers/" + testDigest, "/v2/../../manifests/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		rt, err := parsePath(p)
		if err != nil {
			var re *regError
			if !errors.As(err, &re) || re.Code.status == 0 {
				t.Fatalf("parsePath(%q): error %v is not a registry error", p, err)
			}
			return
		}
		if rt.kind == routeBase || rt.kind == routeCatalog {
			return
		}
		if validateName(rt.name) != nil || strings.Contains(rt.name, "..") || strings.HasPrefix(rt.name, "/") {
			t.Fatalf("parsePath(%q) accepted bad name %q", p, rt.name)
		}
		switch rt.kind {
		case routeBlob, routeReferrers:
			if rt.digest.String() != rt.ref {
				t.Fatalf("parsePath(%q): digest %q != ref %q", p, rt.digest, rt.ref)
			}
		case routeManifest:
			if rt.digest.IsZero() && !validTag(rt.ref) {
				t.Fatalf("parsePath(%q) accepted bad tag %q", p, rt.ref)
			}
		case routeUpload:
			if strings.ContainsAny(rt.uploadID, "/.") {
				t.Fatalf("parsePath(%q) accepted upload id %q", p, rt.uploadID)
			}
		}
	})
}
