package store

import (
	"bytes"
	"context"
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ManifestInfo is a manifest of a repository as the index knows it.
type ManifestInfo struct {
	Digest    Digest
	MediaType string
	Size      int64
	Subject   string    // the manifest it refers to ("" for none)
	Created   time.Time // when it was stored (pushed, for hosted)
	Refs      []Digest  // the blobs and child manifests it names
}

// Manifests lists the manifests of repo (one image's path), in digest
// order: what retention weighs.
func (l lister) Manifests(ctx context.Context, repo string) ([]ManifestInfo, error) {
	var out []ManifestInfo
	err := l.s.db.View(func(tx *bolt.Tx) error {
		prefix := repoKey(repo, "")
		refs := tx.Bucket(bucketRefs)
		c := tx.Bucket(bucketManifests).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			d, err := ParseDigest(string(k[len(prefix):]))
			if err != nil {
				continue
			}
			var rec manifestRecord
			if json.Unmarshal(v, &rec) != nil {
				continue
			}
			mi := ManifestInfo{Digest: d, MediaType: rec.MediaType, Size: rec.Size, Subject: rec.Subject, Created: time.Unix(0, rec.Created)}
			var list []string
			if rv := refs.Get(k); rv != nil && json.Unmarshal(rv, &list) == nil {
				for _, r := range list {
					if rd, err := ParseDigest(r); err == nil {
						mi.Refs = append(mi.Refs, rd)
					}
				}
			}
			out = append(out, mi)
		}
		return nil
	})
	return out, err
}
