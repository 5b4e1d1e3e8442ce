package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Problem is one inconsistency found by Check.
type Problem struct {
	// Kind is one of missing_file, wrong_size, wrong_digest, bad_record,
	// dangling_tag, dangling_manifest, dangling_link, damaged_image (a
	// pushed image naming content that is gone: never repaired, only
	// reported until pushed again or deleted), tmp_leftover, orphan_file,
	// orphan_upload, missing_upload, unfinished_intent.
	Kind   string
	Detail string
	// Key is what Repair acts on: a digest, "<repo>\x00<tag or digest>",
	// a path relative to the data directory, or an upload id.
	Key string
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
// manifest of its repository; every manifest has a blob record; every
// link names a stored blob, or one that a manifest of its repository
// references (a layer not pulled yet).
func (vf *verifier) Check(ctx context.Context, opts CheckOptions) ([]Problem, error) {
	c := &checkRun{s: vf.s, opts: opts, indexed: map[string]bool{}}
	err := c.s.db.View(func(tx *bolt.Tx) error {
		if err := c.blobs(ctx, tx); err != nil {
			return err
		}
		if err := c.manifests(tx); err != nil {
			return err
		}
		c.probs = append(c.probs, damagedImages(tx)...)
		for _, k := range danglingLinks(tx) {
			i := lastNUL(k)
			c.add("dangling_link", string(k), "%s@%s names no stored blob", k[:i], k[i+1:])
		}
		for _, b := range [][]byte{bucketPending, bucketDeleting} {
			tx.Bucket(b).ForEach(func(k, v []byte) error {
				c.add("unfinished_intent", string(b)+"\x00"+string(k), "%s %s (completed at the next start)", b, k)
				return nil
			})
		}
		c.uploads(tx)
		return c.tags(tx)
	})
	if err != nil {
		return c.probs, err
	}
	if opts.Tmp {
		if err := c.tmp(); err != nil {
			return c.probs, err
		}
	}
	if opts.Orphans {
		if err := c.orphans(); err != nil {
			return c.probs, err
		}
	}
	return c.probs, nil
}

// checkRun is one Check: the problems found so far, and the blob files
// the index names (for the orphan walk).
type checkRun struct {
	s       *Store
	opts    CheckOptions
	probs   []Problem
	indexed map[string]bool
}

// add records a problem of kind about key (what Repair acts on).
func (c *checkRun) add(kind, key, format string, args ...any) {
	c.probs = append(c.probs, Problem{Kind: kind, Detail: fmt.Sprintf(format, args...), Key: key})
}

// blobs checks every blob record against its file.
func (c *checkRun) blobs(ctx context.Context, tx *bolt.Tx) error {
	return tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		key := string(k)
		d, err := ParseDigest(key)
		var rec blobRecord
		if err != nil || json.Unmarshal(v, &rec) != nil {
			c.add("bad_record", key, "blob key %q", k)
			return nil
		}
		path := filepath.Join(c.s.dir, d.relPath())
		c.indexed[path] = true
		st, err := os.Stat(path)
		switch {
		case err != nil:
			c.add("missing_file", key, "%s", d)
		case st.Size() != rec.Size:
			c.add("wrong_size", key, "%s: file %d bytes, index %d", d, st.Size(), rec.Size)
		case c.opts.Rehash:
			if ok, err := fileHasDigest(path, d); err != nil || !ok {
				c.add("wrong_digest", key, "%s", d)
			}
		}
		return nil
	})
}

// manifests finds manifest entries without a blob record (a pushed one
// is reported as damaged instead).
func (c *checkRun) manifests(tx *bolt.Tx) error {
	blobs := tx.Bucket(bucketBlobs)
	return tx.Bucket(bucketManifests).ForEach(func(k, v []byte) error {
		_, dg, _ := strings.Cut(string(k), "\x00")
		if blobs.Get([]byte(dg)) == nil && !pushed(tx, k) {
			c.add("dangling_manifest", string(k), "%s", strings.Replace(string(k), "\x00", "@", 1))
		}
		return nil
	})
}

// uploads matches upload sessions with their files, both ways.
func (c *checkRun) uploads(tx *bolt.Tx) {
	sessions := map[string]bool{}
	tx.Bucket(bucketUploads).ForEach(func(k, v []byte) error {
		sessions[string(k)] = true
		if _, err := os.Stat(c.s.uploadPath(string(k))); err != nil {
			c.add("missing_upload", string(k), "upload %s has no file", k)
		}
		return nil
	})
	if entries, err := os.ReadDir(filepath.Join(c.s.dir, "uploads")); err == nil {
		for _, e := range entries {
			if !sessions[e.Name()] {
				c.add("orphan_upload", e.Name(), "uploads/%s has no session", e.Name())
			}
		}
	}
}

// tags finds tags that name no manifest of their repository.
func (c *checkRun) tags(tx *bolt.Tx) error {
	manifests := tx.Bucket(bucketManifests)
	return tx.Bucket(bucketTags).ForEach(func(k, v []byte) error {
		repo, tag, _ := strings.Cut(string(k), "\x00")
		var rec tagRecord
		if json.Unmarshal(v, &rec) != nil {
			c.add("bad_record", string(k), "tag %s:%s", repo, tag)
			return nil
		}
		if manifests.Get(repoKey(repo, rec.Digest)) == nil {
			c.add("dangling_tag", string(k), "%s:%s → %s", repo, tag, rec.Digest)
		}
		return nil
	})
}

// tmp reports files left in tmp/.
func (c *checkRun) tmp() error {
	entries, err := os.ReadDir(filepath.Join(c.s.dir, "tmp"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		c.add("tmp_leftover", filepath.Join("tmp", e.Name()), "tmp/%s", e.Name())
	}
	return nil
}

// orphans reports blob files the index does not name.
func (c *checkRun) orphans() error {
	return filepath.WalkDir(filepath.Join(c.s.dir, "blobs"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !c.indexed[path] {
			rel, _ := filepath.Rel(c.s.dir, path)
			c.add("orphan_file", rel, "%s", rel)
		}
		return nil
	})
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

// Repair fixes what Check found so that the next pull refetches: bad blob
// entries and their files are dropped (with the manifests and tags that
// named them), dangling tags and manifest entries removed, orphan and
// leftover files deleted. Intents are left to the next start.
func (vf *verifier) Repair(ctx context.Context, probs []Problem) error {
	s := vf.s
	for _, p := range probs {
		var err error
		switch p.Kind {
		case "missing_file", "wrong_size", "wrong_digest":
			err = s.dropBlob(p.Key)
		case "damaged_image":
			// Nothing to refetch: it stays reported until pushed again
			// or deleted.
		case "bad_record":
			err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketBlobs).Delete([]byte(p.Key)) })
		case "dangling_manifest":
			repo, d, _ := strings.Cut(p.Key, "\x00")
			err = s.db.Update(func(tx *bolt.Tx) error { _, err := s.removeManifestTx(tx, repo, d); return err })
		case "dangling_tag":
			err = s.db.Update(func(tx *bolt.Tx) error {
				s.cache.forgetOnCommit(tx, []byte(p.Key))
				return tx.Bucket(bucketTags).Delete([]byte(p.Key))
			})
		case "dangling_link":
			err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketLinks).Delete([]byte(p.Key)) })
		case "orphan_file", "tmp_leftover":
			if filepath.IsLocal(p.Key) {
				err = os.Remove(filepath.Join(s.dir, p.Key))
			}
		case "orphan_upload":
			if ValidUploadID(p.Key) {
				err = os.Remove(s.uploadPath(p.Key))
			}
		case "missing_upload":
			err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketUploads).Delete([]byte(p.Key)) })
		}
		if err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("repair %s: %w", p, err)
		}
	}
	return nil
}

// dropBlob removes a damaged blob's entry, file and the manifests of any
// repository that are that blob, so the next pull refetches it. A hosted
// blob has nothing to refetch from: its file goes to quarantine/, its
// entry goes, and the images naming it stay, reported as damaged.
func (vf *verifier) dropBlob(d string) error {
	s := vf.s
	var repos []string
	var hosted bool
	err := s.db.View(func(tx *bolt.Tx) error {
		repos = manifestRepos(tx)[d]
		if v := tx.Bucket(bucketBlobs).Get([]byte(d)); v != nil {
			var rec blobRecord
			hosted = json.Unmarshal(v, &rec) == nil && rec.Hosted
		}
		return nil
	})
	if err != nil {
		return err
	}
	if hosted {
		return s.quarantine(d)
	}
	_, _, ok, err := s.deleteBlob(d, repos, func(blobRecord) bool { return true })
	if err != nil || !ok {
		return err
	}
	return s.dropLinks([]string{d})
}

// quarantine moves hosted blob d's damaged file to quarantine/ (for the
// operator to inspect) and drops its index entry, keeping the manifests
// and links that name it: Check reports those images as damaged.
func (vf *verifier) quarantine(d string) error {
	s := vf.s
	dg, err := ParseDigest(d)
	if err != nil {
		return err
	}
	qdir := filepath.Join(s.dir, "quarantine")
	if err := os.MkdirAll(qdir, 0o750); err != nil {
		return err
	}
	err = os.Rename(filepath.Join(s.dir, dg.relPath()), filepath.Join(qdir, dg.Algorithm()+"-"+dg.Hex()))
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	_, _, _, err = s.deleteBlob(d, nil, func(blobRecord) bool { return true })
	return err
}

// pushed reports whether the link k (repoKey) was made by a push or mount.
func pushed(tx *bolt.Tx, k []byte) bool {
	v := tx.Bucket(bucketLinks).Get(k)
	var l linkRecord
	return v != nil && json.Unmarshal(v, &l) == nil && (l.Kind == LinkPushed || l.Kind == LinkMounted)
}

// damagedImages finds pushed manifests whose own bytes or whose blobs are
// not in the store: hosted content has no upstream to refetch from.
func damagedImages(tx *bolt.Tx) []Problem {
	var probs []Problem
	blobs := tx.Bucket(bucketBlobs)
	tx.Bucket(bucketManifests).ForEach(func(k, v []byte) error {
		if !pushed(tx, k) {
			return nil
		}
		repo, dg, _ := strings.Cut(string(k), "\x00")
		var missing []string
		if blobs.Get([]byte(dg)) == nil {
			missing = append(missing, dg+" (the manifest itself)")
		}
		var refs []string
		if rv := tx.Bucket(bucketRefs).Get(k); rv != nil {
			json.Unmarshal(rv, &refs)
		}
		for _, r := range refs {
			if blobs.Get([]byte(r)) == nil {
				missing = append(missing, r)
			}
		}
		if len(missing) > 0 {
			probs = append(probs, Problem{Kind: "damaged_image", Key: string(k),
				Detail: fmt.Sprintf("%s@%s names %s, not in the store (damaged file in quarantine/?); push the image again or delete it", repo, dg, strings.Join(missing, ", "))})
		}
		return nil
	})
	return probs
}

// DamagedImages lists the pushed images that name content the store does
// not hold ("<repository>@<digest>"), for ls, the status page and metrics.
func (vf *verifier) DamagedImages(ctx context.Context) ([]string, error) {
	s := vf.s
	var out []string
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, p := range damagedImages(tx) {
			out = append(out, strings.Replace(p.Key, "\x00", "@", 1))
		}
		return nil
	})
	return out, err
}

// danglingLinks returns the links (repoKey) that name no stored blob, no
// manifest of their repository, and nothing a manifest of their
// repository references (a layer not pulled yet).
func danglingLinks(tx *bolt.Tx) [][]byte {
	referenced := map[string]bool{} // repoKey(repo, digest) named by a manifest of repo
	tx.Bucket(bucketRefs).ForEach(func(k, v []byte) error {
		repo, _, _ := strings.Cut(string(k), "\x00")
		var refs []string
		json.Unmarshal(v, &refs)
		for _, r := range refs {
			referenced[string(repoKey(repo, r))] = true
		}
		return nil
	})
	blobs, manifests := tx.Bucket(bucketBlobs), tx.Bucket(bucketManifests)
	var out [][]byte
	tx.Bucket(bucketLinks).ForEach(func(k, v []byte) error {
		i := lastNUL(k)
		if i >= 0 && blobs.Get(k[i+1:]) == nil && !referenced[string(k)] && manifests.Get(k) == nil {
			out = append(out, bytes.Clone(k))
		}
		return nil
	})
	return out
}

var metaVerify = []byte("verify")

// RecordVerify keeps the result of a verify run for the metrics.
func (vf *verifier) RecordVerify(problems int) error {
	s := vf.s
	v := append(encodeInt(time.Now().Unix()), encodeInt(int64(problems))...)
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaVerify, v) })
}

// LastVerify returns when verify last ran and what it found; ok is false
// when it never ran.
func (vf *verifier) LastVerify() (at time.Time, problems int, ok bool) {
	s := vf.s
	_ = s.db.View(func(tx *bolt.Tx) error { // only fails once closed: then "never"
		if v := tx.Bucket(bucketMeta).Get(metaVerify); len(v) == 16 {
			at, problems, ok = time.Unix(decodeInt(v[:8]), 0), int(decodeInt(v[8:])), true
		}
		return nil
	})
	return at, problems, ok
}
