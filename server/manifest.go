package server

import (
	"encoding/json"
	"fmt"
	"mime"
	"strconv"
	"strings"

	"github.com/berth-registry/berth/store"
)

// Manifest media types berth stores and serves.
const (
	mtOCIIndex      = "application/vnd.oci.image.index.v1+json"
	mtOCIManifest   = "application/vnd.oci.image.manifest.v1+json"
	mtDockerList    = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtDockerV2      = "application/vnd.docker.distribution.manifest.v2+json"
	mtDockerV1      = "application/vnd.docker.distribution.manifest.v1+json"
	mtDockerV1Signd = "application/vnd.docker.distribution.manifest.v1+prettyjws"
)

var knownManifestTypes = map[string]bool{
	mtOCIIndex: true, mtOCIManifest: true, mtDockerList: true, mtDockerV2: true,
	mtDockerV1: true, mtDockerV1Signd: true,
}

type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// manifestDoc is the union of the fields berth reads from image manifests
// and indexes.
type manifestDoc struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        *descriptor       `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Manifests     []descriptor      `json:"manifests"`
	Blobs         []descriptor      `json:"blobs"`
	Subject       *descriptor       `json:"subject"`
	Annotations   map[string]string `json:"annotations"`
}

// parsedManifest is a manifest body with what berth needs to know of it.
type parsedManifest struct {
	mediaType    string
	blobs        []store.Digest // config and layers
	children     []store.Digest // manifests of an index
	subject      *descriptor
	artifactType string
	annotations  map[string]string
}

func (p *parsedManifest) refs() []store.Digest {
	return append(append([]store.Digest{}, p.blobs...), p.children...)
}

// parseManifest checks that body is a manifest of a known type and reads
// its references. contentType is the Content-Type it came with; when empty
// or generic, the body's mediaType field decides. Errors are
// MANIFEST_INVALID regErrors.
func parseManifest(body []byte, contentType string) (*parsedManifest, error) {
	var doc manifestDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, errf(codeManifestInvalid, "manifest is not valid JSON: %v", err)
	}
	mt := ""
	if contentType != "" {
		if parsed, _, err := mime.ParseMediaType(contentType); err == nil {
			mt = parsed
		}
	}
	if mt == "" || mt == "application/json" || mt == "application/octet-stream" || mt == "text/plain" {
		mt = doc.MediaType
	}
	if mt == "" {
		switch {
		case doc.Manifests != nil:
			mt = mtOCIIndex
		case doc.Config != nil:
			mt = mtOCIManifest
		}
	}
	if !knownManifestTypes[mt] {
		return nil, errf(codeManifestInvalid, "unsupported manifest media type %q", mt)
	}
	if doc.MediaType != "" && doc.MediaType != mt {
		return nil, errf(codeManifestInvalid, "media type %q does not match the manifest's mediaType %q", mt, doc.MediaType)
	}
	p := &parsedManifest{mediaType: mt, subject: doc.Subject, artifactType: doc.ArtifactType, annotations: doc.Annotations}
	if mt == mtDockerV1 || mt == mtDockerV1Signd {
		return p, nil // schema 1: pulled through as is, never pushed
	}
	if doc.SchemaVersion != 2 {
		return nil, errf(codeManifestInvalid, "schemaVersion must be 2")
	}
	add := func(list *[]store.Digest, d descriptor, what string) error {
		dg, err := store.ParseDigest(d.Digest)
		if err != nil {
			return errf(codeManifestInvalid, "%s: %v", what, err)
		}
		if d.Size < 0 {
			return errf(codeManifestInvalid, "%s: negative size", what)
		}
		*list = append(*list, dg)
		return nil
	}
	switch mt {
	case mtOCIIndex, mtDockerList:
		for i, d := range doc.Manifests {
			if err := add(&p.children, d, "manifests["+strconv.Itoa(i)+"]"); err != nil {
				return nil, err
			}
		}
	default:
		if doc.Config == nil {
			return nil, errf(codeManifestInvalid, "image manifest without config")
		}
		if err := add(&p.blobs, *doc.Config, "config"); err != nil {
			return nil, err
		}
		for i, d := range doc.Layers {
			if nonDistributable(d.MediaType) {
				// Foreign layers live elsewhere; the digest is still checked.
				if _, err := store.ParseDigest(d.Digest); err != nil {
					return nil, errf(codeManifestInvalid, "layers[%d]: %v", i, err)
				}
				continue
			}
			if err := add(&p.blobs, d, fmt.Sprintf("layers[%d]", i)); err != nil {
				return nil, err
			}
		}
		// end-12: an image manifest's artifactType defaults to its config
		// media type.
		if mt == mtOCIManifest && p.artifactType == "" {
			p.artifactType = doc.Config.MediaType
		}
	}
	if p.subject != nil {
		if _, err := store.ParseDigest(p.subject.Digest); err != nil {
			return nil, errf(codeManifestInvalid, "subject: %v", err)
		}
	}
	return p, nil
}

// nonDistributable reports layer types that registries need not hold.
func nonDistributable(mediaType string) bool {
	return strings.Contains(mediaType, ".nondistributable.") || strings.Contains(mediaType, ".foreign.")
}
