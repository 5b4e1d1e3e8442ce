package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"strings"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Manifest media types berth names in its own code.
const (
	mtOCIIndex      = string(types.OCIImageIndex)
	mtOCIManifest   = string(types.OCIManifestSchema1) // go-containerregistry's name for the OCI image manifest
	mtDockerList    = string(types.DockerManifestList)
	mtDockerV2      = string(types.DockerManifestSchema2)
	mtDockerV1      = string(types.DockerManifestSchema1)
	mtDockerV1Signd = string(types.DockerManifestSchema1Signed)
)

// manifestTypes are the types berth stores and serves: the ones it asks
// upstreams for (upstream.ManifestAccept, the one list), and Docker's
// schema 1, passed through when an upstream sends it anyway.
var manifestTypes = func() map[string]bool {
	m := map[string]bool{mtDockerV1: true, mtDockerV1Signd: true}
	for _, t := range strings.Split(upstream.ManifestAccept, ", ") {
		m[t] = true
	}
	return m
}()

// parsedManifest is a manifest body parsed once, with go-containerregistry's
// v1.ParseManifest or v1.ParseIndexManifest, and what berth needs of it.
type parsedManifest struct {
	mediaType string
	image     *v1.Manifest      // image manifests
	index     *v1.IndexManifest // indexes

	blobs        []store.Digest // config and distributable layers
	children     []store.Digest // manifests of an index
	subject      string         // digest of the subject, "" for none
	artifactType string
	annotations  map[string]string
}

func (p *parsedManifest) refs() []store.Digest {
	return append(append([]store.Digest{}, p.blobs...), p.children...)
}

// schema1 reports Docker's legacy manifest format.
func (p *parsedManifest) schema1() bool {
	return p.mediaType == mtDockerV1 || p.mediaType == mtDockerV1Signd
}

// parseManifest checks that body is a manifest of a known type and reads
// its references. contentType is the Content-Type it came with; when empty
// or generic, the body's mediaType field decides. Errors are
// MANIFEST_INVALID regErrors.
func parseManifest(body []byte, contentType string) (*parsedManifest, error) {
	// The fields that say what the document is, before parsing it as one.
	var head manifestHead
	if err := json.Unmarshal(body, &head); err != nil {
		return nil, errf(codeManifestInvalid, "manifest is not valid JSON: %v", err)
	}
	mt := head.mediaType(contentType)
	if !manifestTypes[mt] {
		return nil, errf(codeManifestInvalid, "unsupported manifest media type %q", mt)
	}
	if head.MediaType != "" && head.MediaType != mt {
		return nil, errf(codeManifestInvalid, "media type %q does not match the manifest's mediaType %q", mt, head.MediaType)
	}
	p := &parsedManifest{mediaType: mt}
	if p.schema1() {
		return p, nil // pulled through as is, never pushed
	}
	if head.SchemaVersion != 2 {
		return nil, errf(codeManifestInvalid, "schemaVersion must be 2")
	}
	var subject *v1.Descriptor
	var err error
	switch mt {
	case mtOCIIndex, mtDockerList:
		subject, err = p.parseIndex(body)
	default:
		if head.Config == nil {
			return nil, errf(codeManifestInvalid, "image manifest without config")
		}
		subject, err = p.parseImage(body)
	}
	if err != nil {
		return nil, err
	}
	if subject != nil {
		p.subject = subject.Digest.String()
	}
	return p, nil
}

// manifestHead is what a manifest says it is.
type manifestHead struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Config        json.RawMessage `json:"config"`
	Manifests     json.RawMessage `json:"manifests"`
}

// mediaType is the manifest's type: the Content-Type, unless that is
// absent or generic; then its mediaType field; then what its fields
// show (manifests: an index; config: an image).
func (h manifestHead) mediaType(contentType string) string {
	mt := ""
	if contentType != "" {
		if parsed, _, err := mime.ParseMediaType(contentType); err == nil {
			mt = parsed
		}
	}
	if mt == "" || mt == "application/json" || mt == "application/octet-stream" || mt == "text/plain" {
		mt = h.MediaType
	}
	if mt == "" {
		switch {
		case h.Manifests != nil:
			mt = mtOCIIndex
		case h.Config != nil:
			mt = mtOCIManifest
		}
	}
	return mt
}

// parseIndex reads an index: its children and subject.
func (p *parsedManifest) parseIndex(body []byte) (*v1.Descriptor, error) {
	idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
	if err != nil {
		return nil, errf(codeManifestInvalid, "%v", err)
	}
	p.index, p.artifactType, p.annotations = idx, idx.ArtifactType, idx.Annotations
	for i, d := range idx.Manifests {
		if err := p.add(&p.children, d, fmt.Sprintf("manifests[%d]", i)); err != nil {
			return nil, err
		}
	}
	return idx.Subject, nil
}

// parseImage reads an image manifest: its config and distributable layers,
// and subject.
func (p *parsedManifest) parseImage(body []byte) (*v1.Descriptor, error) {
	img, err := v1.ParseManifest(bytes.NewReader(body))
	if err != nil {
		return nil, errf(codeManifestInvalid, "%v", err)
	}
	p.image, p.artifactType, p.annotations = img, img.ArtifactType, img.Annotations
	if err := p.add(&p.blobs, img.Config, "config"); err != nil {
		return nil, err
	}
	for i, l := range img.Layers {
		if nonDistributable(l.MediaType) {
			continue // foreign layers live elsewhere; the digest was parsed
		}
		if err := p.add(&p.blobs, l, fmt.Sprintf("layers[%d]", i)); err != nil {
			return nil, err
		}
	}
	// end-12: an image manifest's artifactType defaults to its config
	// media type.
	if p.mediaType == mtOCIManifest && p.artifactType == "" {
		p.artifactType = string(img.Config.MediaType)
	}
	return img.Subject, nil
}

// add appends the digest of descriptor d (named what in errors) to list.
func (p *parsedManifest) add(list *[]store.Digest, d v1.Descriptor, what string) error {
	dg, err := store.ParseDigest(d.Digest.String())
	if err != nil {
		return errf(codeManifestInvalid, "%s: %v", what, err)
	}
	if d.Size < 0 {
		return errf(codeManifestInvalid, "%s: negative size", what)
	}
	*list = append(*list, dg)
	return nil
}

// nonDistributable reports layer types that registries need not hold.
func nonDistributable(mediaType types.MediaType) bool {
	return strings.Contains(string(mediaType), ".nondistributable.") || strings.Contains(string(mediaType), ".foreign.")
}

// manifestPeeker reads a stored manifest without counting a pull.
type manifestPeeker interface {
	PeekManifest(ctx context.Context, repo string, d store.Digest) (store.Manifest, error)
}

// imageSize is what an image takes: its manifest, config and layers; for
// an index, itself and its cached platforms'.
func imageSize(ctx context.Context, st manifestPeeker, path string, m store.Manifest) int64 {
	total := int64(len(m.Body))
	pm, err := parseManifest(m.Body, m.MediaType)
	if err != nil {
		return total
	}
	if pm.image != nil {
		total += pm.image.Config.Size
		for _, l := range pm.image.Layers {
			total += l.Size
		}
	}
	for _, c := range pm.children {
		if cm, err := st.PeekManifest(ctx, path, c); err == nil {
			total += imageSize(ctx, st, path, cm)
		}
	}
	return total
}
