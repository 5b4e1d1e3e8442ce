package server

import (
	"strings"

	"github.com/berth-registry/berth/store"
)

// routeKind says which /v2 endpoint a path names.
type routeKind int

const (
	routeBase      routeKind = iota + 1 // /v2/
	routeCatalog                        // /v2/_catalog
	routeTags                           // /v2/<name>/tags/list
	routeManifest                       // /v2/<name>/manifests/<ref>
	routeBlob                           // /v2/<name>/blobs/<digest>
	routeUploads                        // /v2/<name>/blobs/uploads/
	routeUpload                         // /v2/<name>/blobs/uploads/<id>
	routeReferrers                      // /v2/<name>/referrers/<digest>
)

var routeKindNames = map[routeKind]string{
	routeBase: "base", routeCatalog: "catalog", routeTags: "tags", routeManifest: "manifest",
	routeBlob: "blob", routeUploads: "upload", routeUpload: "upload", routeReferrers: "referrers",
}

func (k routeKind) String() string { return routeKindNames[k] }

// route is a parsed /v2 path. Name is the repository name as the client
// wrote it (before routing to a berth repository).
type route struct {
	kind     routeKind
	name     string
	ref      string // tag or digest for manifests; digest for blobs and referrers
	digest   store.Digest
	uploadID string
}

// maxNameLength caps a repository name, as most registries do.
const maxNameLength = 255

// parsePath parses a URL path below /v2. It reads the path from the end,
// since repository names contain slashes. Errors are *regError values:
// NAME_INVALID, DIGEST_INVALID, MANIFEST_INVALID (bad tag) or NOT_FOUND.
func parsePath(p string) (route, error) {
	if p == "/v2" || p == "/v2/" {
		return route{kind: routeBase}, nil
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return route{}, errf(codeNotFound, "not a registry path")
	}
	if rest == "_catalog" {
		return route{kind: routeCatalog}, nil
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	var rt route
	var nameSegs []string
	switch {
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		rt, nameSegs = route{kind: routeTags}, segs[:n-2]
	case n >= 3 && segs[n-2] == "manifests":
		rt, nameSegs = route{kind: routeManifest, ref: segs[n-1]}, segs[:n-2]
	case n >= 3 && segs[n-2] == "referrers":
		rt, nameSegs = route{kind: routeReferrers, ref: segs[n-1]}, segs[:n-2]
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads":
		if segs[n-1] == "" {
			rt = route{kind: routeUploads}
		} else {
			rt = route{kind: routeUpload, uploadID: segs[n-1]}
		}
		nameSegs = segs[:n-3]
	case n >= 3 && segs[n-2] == "blobs" && segs[n-1] == "uploads":
		rt, nameSegs = route{kind: routeUploads}, segs[:n-2]
	case n >= 3 && segs[n-2] == "blobs":
		rt, nameSegs = route{kind: routeBlob, ref: segs[n-1]}, segs[:n-2]
	default:
		return route{}, errf(codeNotFound, "unknown registry endpoint")
	}
	rt.name = strings.Join(nameSegs, "/")
	if err := validateName(rt.name); err != nil {
		return route{}, err
	}
	switch rt.kind {
	case routeBlob, routeReferrers:
		d, err := store.ParseDigest(rt.ref)
		if err != nil {
			return route{}, errf(codeDigestInvalid, "%v", err)
		}
		rt.digest = d
	case routeManifest:
		if strings.Contains(rt.ref, ":") {
			d, err := store.ParseDigest(rt.ref)
			if err != nil {
				return route{}, errf(codeDigestInvalid, "%v", err)
			}
			rt.digest = d
		} else if !validTag(rt.ref) {
			return route{}, errf(codeManifestInvalid, "invalid tag %q", rt.ref).withDetail(map[string]string{"tag": rt.ref})
		}
	case routeUpload:
		if !store.ValidUploadID(rt.uploadID) {
			return route{}, errf(codeBlobUploadUnknown, "unknown upload")
		}
	}
	return rt, nil
}

// validateName checks a repository name against the spec's grammar:
// path components of [a-z0-9]+ joined by '.', '_', '__' or runs of '-',
// separated by '/'.
func validateName(name string) error {
	if name == "" || len(name) > maxNameLength {
		return errf(codeNameInvalid, "invalid repository name").withDetail(map[string]string{"name": truncate(name, 300)})
	}
	for _, c := range strings.Split(name, "/") {
		if !validComponent(c) {
			return errf(codeNameInvalid, "invalid repository name component %q", truncate(c, 300)).withDetail(map[string]string{"name": truncate(name, 300)})
		}
	}
	return nil
}

func validComponent(c string) bool {
	if c == "" || !isAlnum(c[0]) || !isAlnum(c[len(c)-1]) {
		return false
	}
	for i := 0; i < len(c); i++ {
		ch := c[i]
		if isAlnum(ch) {
			continue
		}
		switch ch {
		case '.':
			if !isAlnum(c[i+1]) {
				return false
			}
		case '_':
			if c[i+1] == '_' {
				if i+2 >= len(c) || !isAlnum(c[i+2]) || (i > 0 && c[i-1] == '_') {
					return false
				}
				i++
			} else if !isAlnum(c[i+1]) {
				return false
			}
		case '-':
			// runs of '-' are allowed; the next non-'-' must be alnum
			j := i
			for j < len(c) && c[j] == '-' {
				j++
			}
			if j >= len(c) || !isAlnum(c[j]) {
				return false
			}
			i = j - 1
		default:
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// validTag checks [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}.
func validTag(t string) bool {
	if t == "" || len(t) > 128 {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_'
		if i > 0 {
			ok = ok || c == '.' || c == '-'
		}
		if !ok {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
