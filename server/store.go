package server

import (
	"context"
	"io"
	"time"

	"github.com/berth-registry/berth/store"
)

// What the server needs of the content store, split by the code that
// needs it. *store.Store satisfies all of them; a test can stand in for
// any one (a disk that fails, an index that is slow) without the others.

// blobStore is what the blob paths (proxy_blob.go, hosted.go, the
// download's temp files) need: blob files and which repositories hold them.
type blobStore interface {
	StatBlob(ctx context.Context, d store.Digest) (store.BlobInfo, error)
	OpenBlob(ctx context.Context, d store.Digest) (*store.Blob, error)
	NewBlobWriter(ctx context.Context, alg string) (*store.BlobWriter, error)
	Link(ctx context.Context, repo string, d store.Digest, kind string) error
	HasLink(ctx context.Context, repo string, d store.Digest) (bool, error)
	Unlink(ctx context.Context, repo string, d store.Digest) error
}

// manifestStore is what manifest, tag, referrer and catalog requests
// need: the index of images.
type manifestStore interface {
	PutManifest(ctx context.Context, repo string, m store.Manifest, tag string, refs []store.Digest) error
	GetManifest(ctx context.Context, repo string, d store.Digest) (store.Manifest, error)
	HasManifest(ctx context.Context, repo string, d store.Digest) (bool, error)
	DeleteManifest(ctx context.Context, repo string, d store.Digest) error
	Referrers(ctx context.Context, repo string, subject store.Digest) ([]store.Referrer, error)
	ResolveTag(ctx context.Context, repo, tag string) (store.TagInfo, error)
	TagChecked(ctx context.Context, repo, tag string, d store.Digest, t time.Time) error
	DeleteTag(ctx context.Context, repo, tag string) error
	Tags(ctx context.Context, repo string) ([]string, error)
	Repositories(ctx context.Context, prefix string) ([]string, error)
	// Manifests lists an image's manifests with their push times and
	// references (retention).
	Manifests(ctx context.Context, repo string) ([]store.ManifestInfo, error)
}

// uploadStore is what hosted pushes need.
type uploadStore interface {
	CreateUpload(ctx context.Context, repo, owner string) (store.Upload, error)
	// UploadUsage sums what the upload sessions hold (quotas).
	UploadUsage(ctx context.Context) (store.UploadUsage, error)
	GetUpload(ctx context.Context, repo, id string) (store.Upload, error)
	AppendUpload(ctx context.Context, repo, id string, start int64, r io.Reader, size int64) (store.Upload, error)
	FinishUpload(ctx context.Context, repo, id string, r io.Reader, size int64, want store.Digest) (store.BlobInfo, error)
	DeleteUpload(ctx context.Context, repo, id string) error
}

// ListStore is what List (berth ls, the status page) reads: images and
// their use, without counting a pull.
type ListStore interface {
	Repositories(ctx context.Context, prefix string) ([]string, error)
	Tags(ctx context.Context, repo string) ([]string, error)
	ResolveTag(ctx context.Context, repo, tag string) (store.TagInfo, error)
	PeekManifest(ctx context.Context, repo string, d store.Digest) (store.Manifest, error)
	HasManifest(ctx context.Context, repo string, d store.Digest) (bool, error)
	StatBlob(ctx context.Context, d store.Digest) (store.BlobInfo, error)
	// Pulls is how often clients pulled manifest d, and when last.
	Pulls(ctx context.Context, d store.Digest) (int64, time.Time)
	DamagedImages(ctx context.Context) ([]string, error)
}

// pullCounter counts the pulls of clients (berth ls, the status page).
type pullCounter interface {
	Pulled(ctx context.Context, d store.Digest)
}

// opsStore is what the operator's side needs: health, metrics, garbage
// collection, backup.
type opsStore interface {
	Ping(ctx context.Context) error
	Stats() (bytes, count int64)
	Counters() store.Counters
	LastVerify() (at time.Time, problems int, ok bool)
	DamagedImages(ctx context.Context) ([]string, error)
	Dir() string
	GC(opts store.GCOptions) (store.GCResult, error)
	Backup(w io.Writer) (int64, error)
}

// Store is everything above: what Options takes (a *store.Store).
type Store interface {
	blobStore
	manifestStore
	uploadStore
	ListStore
	opsStore
	pullCounter
	verdictStore
}

// verdictStore remembers what policies learned of digests (policy.go).
type verdictStore interface {
	PutVerdict(ctx context.Context, key string, v store.Verdict) error
	GetVerdict(ctx context.Context, key string) (store.Verdict, bool, error)
	PruneVerdicts(ctx context.Context, live func(fp string) bool) (int, error)
}

var _ Store = (*store.Store)(nil)
