package store

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Problem is one inconsistency found by Check.
type Problem struct {
	Kind   string // missing_file, wrong_size, wrong_digest, dangling_tag, dangling_manifest, tmp_leftover, orphan_file, bad_record
	Detail string
}

func (p Problem) String() string { return p.Kind + ": " + p.Detail }

// CheckOptions choose how deep Check looks.
type CheckOptions struct {
	// Rehash re-reads every blob file and checks its digest.
	Rehash bool
	// Orphans lists blob files that have no index entry (walks blobs/).
	Orphans bool
	// Tmp reports files left in tmp/ (only meaningful when nothing is
	// being written).
	Tmp bool
}

// Check compares the index with the files: every blob record has a file
// of the recorded size (and digest, with Rehash); every tag names a
// manifest of its repository; every manifest has a blob record.
func (s *Store) Check(ctx context.Context, opts CheckOptions) ([]Problem, error) {
	var probs []Problem
	add := func(kind, format string, args ...any) {
		probs = append(probs, Problem{Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
	indexed := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			d, err := ParseDigest(string(k))
			var rec blobRecord
			if err != nil || json.Unmarshal(v, &rec) != nil {
				add("bad_record", "blob key %q", k)
				return nil
			}
			path := filepath.Join(s.dir, d.relPath())
			indexed[path] = true
			st, err := os.Stat(path)
			switch {
			case err != nil:
				add("missing_file", "%s", d)
			case st.Size() != rec.Size:
				add("wrong_size", "%s: file %d bytes, index %d", d, st.Size(), rec.Size)
			case opts.Rehash:
				if ok, err := fileHasDigest(path, d); err != nil || !ok {
					add("wrong_digest", "%s", d)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		blobs, manifests := tx.Bucket(bucketBlobs), tx.Bucket(bucketManifests)
		err = manifests.ForEach(func(k, v []byte) error {
			_, dg, _ := strings.Cut(string(k), "\x00")
			if blobs.Get([]byte(dg)) == nil {
				add("dangling_manifest", "%s", strings.Replace(string(k), "\x00", "@", 1))
			}
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketTags).ForEach(func(k, v []byte) error {
			repo, tag, _ := strings.Cut(string(k), "\x00")
			var rec tagRecord
			if json.Unmarshal(v, &rec) != nil {
				add("bad_record", "tag %s:%s", repo, tag)
				return nil
			}
			if manifests.Get(repoKey(repo, rec.Digest)) == nil {
				add("dangling_tag", "%s:%s → %s", repo, tag, rec.Digest)
			}
			return nil
		})
	})
	if err != nil {
		return probs, err
	}
	if opts.Tmp {
		entries, err := os.ReadDir(filepath.Join(s.dir, "tmp"))
		if err != nil {
			return probs, err
		}
		for _, e := range entries {
			add("tmp_leftover", "tmp/%s", e.Name())
		}
	}
	if opts.Orphans {
		err := filepath.WalkDir(filepath.Join(s.dir, "blobs"), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if !indexed[path] {
				rel, _ := filepath.Rel(s.dir, path)
				add("orphan_file", "%s", rel)
			}
			return nil
		})
		if err != nil {
			return probs, err
		}
	}
	return probs, nil
}

func fileHasDigest(path string, d Digest) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := d.NewHash()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	return fmt.Sprintf("%x", h.Sum(nil)) == d.Hex(), nil
}
