package store

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

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
// the index transaction, still allows it (deleteBlobs, for one blob).
func (s *Store) deleteBlob(d string, repos []string, check func(rec blobRecord) bool) (size int64, refs []string, ok bool, err error) {
	res, err := deleteBlobs(s, []deletion{{digest: d, repos: repos}}, check)
	if err != nil || len(res) == 0 {
		return 0, nil, false, err
	}
	return res[0].size, res[0].refs, true, nil
}

// deletion is a blob to delete and the repositories whose manifest
// entries for it go with it.
type deletion struct {
	digest string
	repos  []string
}

// deleted is a blob deleteBlobs removed: its size and the digests the
// removed manifests referenced.
type deleted struct {
	digest string
	size   int64
	refs   []string
}

// deleteBlobs removes the blobs of dels from the index and disk where
// check, run inside the index transaction, still allows it: each one's
// record, access time, every manifest entry for it (in its repos) and
// their tags. All of them go in one index transaction, the files are
// unlinked after it commits, under "deleting" intents that recover
// completes after a crash, and the intents go in one more transaction:
// two commits for a batch instead of two per blob (a GC pass of 100,000
// garbage blobs took minutes of fsyncs). A blob pinned (being read),
// gone, or refused by check is left out of the result. The links to the
// deleted blobs are dropped by the caller, in one pass (dropLinks).
func deleteBlobs(s *Store, dels []deletion, check func(rec blobRecord) bool) ([]deleted, error) {
	var claimed []deletion
	for _, d := range dels {
		if s.claimForDelete(d.digest) {
			claimed = append(claimed, d)
		}
	}
	defer func() {
		for _, d := range claimed {
			s.releaseDelete(d.digest)
		}
	}()
	if len(claimed) == 0 {
		return nil, nil
	}
	// In digest order, so that two batches never wait on each other.
	slices.SortFunc(claimed, func(a, b deletion) int { return strings.Compare(a.digest, b.digest) })
	for _, d := range claimed {
		defer s.digests.lock(d.digest)()
	}
	var out []deleted
	err := s.db.Update(func(tx *bolt.Tx) error {
		out = out[:0]
		for _, d := range claimed {
			res, ok, err := deleteBlobTx(s, tx, d, check)
			if err != nil {
				return err
			}
			if ok {
				out = append(out, res)
			}
		}
		return nil
	})
	if err != nil || len(out) == 0 {
		return nil, err
	}
	removeFiles(s, out)
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, d := range out {
			if err := tx.Bucket(bucketDeleting).Delete([]byte(d.digest)); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// removeFiles unlinks the files of the deleted blobs, eight at once: an
// unlink waits on the disk (the directory and the inode), and a pass of
// 100,000 one at a time spent most of its time waiting.
func removeFiles(s *Store, gone []deleted) {
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(8, len(gone)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for path := range work {
				os.Remove(path)
			}
		}()
	}
	for _, d := range gone {
		if dg, err := ParseDigest(d.digest); err == nil {
			work <- filepath.Join(s.dir, dg.relPath())
		}
	}
	close(work)
	wg.Wait()
}

// deleteBlobTx removes one blob's index entries in tx (see deleteBlobs).
func deleteBlobTx(s *Store, tx *bolt.Tx, d deletion, check func(rec blobRecord) bool) (deleted, bool, error) {
	b := tx.Bucket(bucketBlobs)
	v := b.Get([]byte(d.digest))
	if v == nil {
		return deleted{}, false, nil
	}
	var rec blobRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return deleted{}, false, err
	}
	if !check(rec) {
		return deleted{}, false, nil
	}
	res := deleted{digest: d.digest, size: rec.Size}
	for _, repo := range d.repos {
		r, err := s.removeManifestTx(tx, repo, d.digest)
		if err != nil {
			return deleted{}, false, err
		}
		res.refs = append(res.refs, r...)
	}
	if err := b.Delete([]byte(d.digest)); err != nil {
		return deleted{}, false, err
	}
	if err := tx.Bucket(bucketAccess).Delete([]byte(d.digest)); err != nil {
		return deleted{}, false, err
	}
	if err := addTotals(tx, -1, -rec.Size); err != nil {
		return deleted{}, false, err
	}
	if err := tx.Bucket(bucketDeleting).Put([]byte(d.digest), []byte{1}); err != nil {
		return deleted{}, false, err
	}
	tx.OnCommit(func() {
		s.count.Add(-1)
		s.bytes.Add(-rec.Size)
	})
	return res, true, nil
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
