package store

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// removeManifestTx removes manifest d of repo with its tags, references
// and referrer entry, and the links to what it referenced that are not
// stored (a blob never pulled), and returns the digests it referenced.
func (s *Store) removeManifestTx(tx *bolt.Tx, repo, d string) ([]string, error) {
	mb := tx.Bucket(bucketManifests)
	k := repoKey(repo, d)
	v := mb.Get(k)
	if v == nil {
		return nil, nil
	}
	var rec manifestRecord
	json.Unmarshal(v, &rec)
	if err := mb.Delete(k); err != nil {
		return nil, err
	}
	if err := tx.Bucket(bucketLinks).Delete(k); err != nil {
		return nil, err
	}
	if rec.Subject != "" {
		if err := tx.Bucket(bucketReferrers).Delete(repoKey(repo, rec.Subject+"\x00"+d)); err != nil {
			return nil, err
		}
	}
	var refs []string
	rb := tx.Bucket(bucketRefs)
	if rv := rb.Get(k); rv != nil {
		json.Unmarshal(rv, &refs)
		if err := rb.Delete(k); err != nil {
			return nil, err
		}
	}
	blobs, links := tx.Bucket(bucketBlobs), tx.Bucket(bucketLinks)
	for _, r := range refs {
		if blobs.Get([]byte(r)) == nil {
			if err := links.Delete(repoKey(repo, r)); err != nil {
				return nil, err
			}
		}
	}
	tags := tx.Bucket(bucketTags)
	prefix := repoKey(repo, "")
	var drop [][]byte
	c := tags.Cursor()
	for tk, tv := c.Seek(prefix); tk != nil && bytes.HasPrefix(tk, prefix); tk, tv = c.Next() {
		var tr tagRecord
		if json.Unmarshal(tv, &tr) == nil && tr.Digest == d {
			drop = append(drop, bytes.Clone(tk))
		}
	}
	for _, tk := range drop {
		if err := tags.Delete(tk); err != nil {
			return nil, err
		}
	}
	s.cache.forgetOnCommit(tx, append(drop, k)...)
	return refs, nil
}

// deleteBlob removes blob d from the index and disk if check, run inside
// the index transaction, still allows it: its record, access time, every
// manifest entry for it (in repos) and their tags. The file is unlinked
// after the index commits, under a "deleting" intent that recover
// completes after a crash. It returns the blob's size and the digests the
// removed manifests referenced; ok is false when nothing was deleted (the
// blob is pinned, gone, or check refused). The links to a deleted blob
// are dropped by the caller, in one pass for all it deleted (dropLinks).
func (s *Store) deleteBlob(d string, repos []string, check func(rec blobRecord) bool) (size int64, refs []string, ok bool, err error) {
	if !s.claimForDelete(d) {
		return 0, nil, false, nil
	}
	defer s.releaseDelete(d)
	defer s.digests.lock(d)()
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlobs)
		v := b.Get([]byte(d))
		if v == nil {
			return nil
		}
		var rec blobRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return err
		}
		if !check(rec) {
			return nil
		}
		for _, repo := range repos {
			r, err := s.removeManifestTx(tx, repo, d)
			if err != nil {
				return err
			}
			refs = append(refs, r...)
		}
		if err := b.Delete([]byte(d)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketAccess).Delete([]byte(d)); err != nil {
			return err
		}
		if err := addTotals(tx, -1, -rec.Size); err != nil {
			return err
		}
		if err := tx.Bucket(bucketDeleting).Put([]byte(d), []byte{1}); err != nil {
			return err
		}
		size, ok = rec.Size, true
		tx.OnCommit(func() {
			s.count.Add(-1)
			s.bytes.Add(-rec.Size)
		})
		return nil
	})
	if err != nil || !ok {
		return 0, nil, false, err
	}
	dg, perr := ParseDigest(d)
	if perr == nil {
		os.Remove(filepath.Join(s.dir, dg.relPath()))
	}
	err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketDeleting).Delete([]byte(d)) })
	return size, refs, true, err
}

// manifestRepos maps each manifest digest to the repositories holding it.
func manifestRepos(tx *bolt.Tx) map[string][]string {
	out := map[string][]string{}
	tx.Bucket(bucketManifests).ForEach(func(k, v []byte) error {
		repo, d, _ := bytes.Cut(k, []byte{0})
		out[string(d)] = append(out[string(d)], string(repo))
		return nil
	})
	return out
}

// refCounts counts, for each digest, the stored manifests that name it.
func refCounts(tx *bolt.Tx) map[string]int {
	out := map[string]int{}
	tx.Bucket(bucketRefs).ForEach(func(k, v []byte) error {
		var refs []string
		json.Unmarshal(v, &refs)
		for _, r := range refs {
			out[r]++
		}
		return nil
	})
	return out
}

// dropLinks removes every repository's link to the deleted blobs gone, so
// no link outlives its blob. One pass over the links, for a whole
// eviction, collection or repair.
func (s *Store) dropLinks(gone []string) error {
	if len(gone) == 0 {
		return nil
	}
	set := make(map[string]bool, len(gone))
	for _, d := range gone {
		set[d] = true
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		lb, blobs := tx.Bucket(bucketLinks), tx.Bucket(bucketBlobs)
		var drop [][]byte
		lb.ForEach(func(k, v []byte) error {
			// A blob stored again since it was deleted keeps its links.
			if i := lastNUL(k); i >= 0 && set[string(k[i+1:])] && blobs.Get(k[i+1:]) == nil {
				drop = append(drop, bytes.Clone(k))
			}
			return nil
		})
		for _, k := range drop {
			if err := lb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}
