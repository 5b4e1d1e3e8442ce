package server

import (
	"context"
	"fmt"
	"io"

	"github.com/berth-registry/berth/internal/fetch"
	"github.com/berth-registry/berth/internal/lru"
	"github.com/berth-registry/berth/store"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// An upstream blob is never written past the size it may have: the size
// the image manifest that named it declared (recorded per repository path
// when a proxy serves the manifest), or, for a blob asked by digest with
// no manifest seen, max_blob_size. A Content-Length or Content-Range
// total over that is refused before a byte is written; a body that runs
// past it (no Content-Length, an endless stream) is cut there and the
// download fails, nothing cached.

// DefaultMaxBlobSize is max_blob_size when the config does not set one.
const DefaultMaxBlobSize = 16 << 30

// declaredSizes bounds: entries and bytes (keys are "<path>@<digest>").
const (
	declaredEntries = 100_000
	declaredBytes   = 16 << 20
)

// declaredSizes are the sizes manifests gave blobs: "<path>@<digest>" →
// bytes; max is the limit of a blob none declared.
type declaredSizes struct {
	sizes *lru.Cache[string, int64]
	max   int64
}

func newDeclaredSizes(max int64) *declaredSizes {
	return &declaredSizes{sizes: lru.New[string, int64](declaredEntries, 0).WithCost(declaredBytes, lru.StringBytes[int64]), max: max}
}

// declare records the sizes an image manifest served from path gives its
// config and layers.
func (s *declaredSizes) declare(path string, pm *parsedManifest) {
	if pm == nil || pm.image == nil {
		return
	}
	add := func(d string, size int64) {
		if size > 0 {
			s.sizes.Add(path+"@"+d, size)
		}
	}
	add(pm.image.Config.Digest.String(), pm.image.Config.Size)
	for _, l := range pm.image.Layers {
		if l.MediaType != types.DockerForeignLayer {
			add(l.Digest.String(), l.Size)
		}
	}
}

// limit is the most bytes blob d of path may have.
func (s *declaredSizes) limit(path string, d store.Digest) int64 {
	if n, ok := s.sizes.Get(path + "@" + d.String()); ok {
		return n
	}
	return s.max
}

// errBlobTooLarge is a download's error when the upstream sends, or
// announces, more than the blob may have.
var errBlobTooLarge = fmt.Errorf("%w: %w: the blob is larger than its manifest declared or max_blob_size allows", errUpstreamBroken, store.ErrSizeMismatch)

// limitFetch bounds the bodies of f at limit bytes in all.
func limitFetch(f fetch.Func, limit int64) fetch.Func {
	return func(ctx context.Context, offset, total int64) (io.ReadCloser, int64, error) {
		body, size, err := f(ctx, offset, total)
		if err != nil {
			return body, size, err
		}
		if size > limit {
			body.Close()
			return nil, -1, fmt.Errorf("%w: upstream announced %d bytes, at most %d", errBlobTooLarge, size, limit)
		}
		return newLimitBody(body, limit-offset), size, nil
	}
}

// limitRanges bounds the blob a fetch.RangeFunc fetches at limit bytes.
func limitRanges(f fetch.RangeFunc, limit int64) fetch.RangeFunc {
	return func(ctx context.Context, start, end int64) (io.ReadCloser, int64, bool, error) {
		body, total, ranged, err := f(ctx, start, end)
		if err != nil {
			return body, total, ranged, err
		}
		if total > limit {
			body.Close()
			return nil, -1, false, fmt.Errorf("%w: upstream announced %d bytes, at most %d", errBlobTooLarge, total, limit)
		}
		return newLimitBody(body, limit-start), total, ranged, nil
	}
}

// limitBody fails a read that would pass the limit.
type limitBody struct {
	*boundedReader
	io.Closer
}

func newLimitBody(body io.ReadCloser, left int64) *limitBody {
	return &limitBody{boundedReader: &boundedReader{r: body, left: left, errOver: errBlobTooLarge}, Closer: body}
}

// boundedReader reads at most left bytes of r; a read past them fails
// with errOver (and marks over) when r has more, else ends as r does.
type boundedReader struct {
	r       io.Reader
	left    int64
	errOver error
	over    bool
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more would be past the bound: is there one?
		var one [1]byte
		n, err := b.r.Read(one[:])
		if n > 0 {
			b.over = true
			return 0, b.errOver
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}
