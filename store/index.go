package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Manifest is a stored manifest of one repository.
type Manifest struct {
	Digest    Digest
	MediaType string
	Body      []byte
	// Subject and ArtifactType are kept for the referrers API.
	Subject      string
	ArtifactType string
	Annotations  map[string]string
	// Hosted marks a pushed manifest (never evicted); cached proxy
	// manifests leave it false.
	Hosted bool
}

type manifestRecord struct {
	MediaType    string            `json:"mediaType"`
	Size         int64             `json:"size"`
	Subject      string            `json:"subject,omitempty"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Created      int64             `json:"created"`
}

type tagRecord struct {
	Digest  string `json:"digest"`
	Checked int64  `json:"checked"`
}

// TagInfo is what a tag points at and when that was last confirmed.
type TagInfo struct {
	Digest  Digest
	Checked time.Time
}

func repoKey(repo, rest string) []byte {
	return []byte(repo + "\x00" + rest)
}

// PutManifest stores m in repo: its bytes as a blob, an index entry, a link
// for it and for every digest in refs (the blobs and child manifests it
// names), and, when tag is not empty, the tag pointing at it.
func (s *Store) PutManifest(ctx context.Context, repo string, m Manifest, tag string, refs []Digest) error {
	if _, err := s.PutBlob(ctx, m.Digest, m.Body); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return putManifestTx(s, tx, repo, m, tag, refs) })
}

// putManifestTx records m in repo (its bytes are stored already): the
// index entry, its links, its referrer entry and its tag.
func putManifestTx(s *Store, tx *bolt.Tx, repo string, m Manifest, tag string, refs []Digest) error {
	rec := manifestRecord{
		MediaType: m.MediaType, Size: int64(len(m.Body)), Subject: m.Subject,
		ArtifactType: m.ArtifactType, Annotations: m.Annotations, Created: time.Now().UnixNano(),
	}
	v, _ := json.Marshal(rec)
	s.cache.forgetOnCommit(tx, repoKey(repo, m.Digest.String()), repoKey(repo, tag))
	if err := tx.Bucket(bucketManifests).Put(repoKey(repo, m.Digest.String()), v); err != nil {
		return err
	}
	kind := LinkFetched
	if m.Hosted {
		kind = LinkPushed
	}
	if err := putLink(tx, repo, m.Digest, kind); err != nil {
		return err
	}
	refList := make([]string, len(refs))
	for i, r := range refs {
		refList[i] = r.String()
		if err := putLink(tx, repo, r, LinkReferenced); err != nil {
			return err
		}
	}
	rv, _ := json.Marshal(refList)
	if err := tx.Bucket(bucketRefs).Put(repoKey(repo, m.Digest.String()), rv); err != nil {
		return err
	}
	if m.Subject != "" {
		ref, _ := json.Marshal(Referrer{Digest: m.Digest.String(), MediaType: m.MediaType, Size: int64(len(m.Body)),
			ArtifactType: m.ArtifactType, Annotations: m.Annotations})
		if err := tx.Bucket(bucketReferrers).Put(repoKey(repo, m.Subject+"\x00"+m.Digest.String()), ref); err != nil {
			return err
		}
	}
	if tag != "" {
		return putTag(tx, repo, tag, m.Digest, time.Now())
	}
	return nil
}

// Referrer describes a manifest whose subject is another manifest.
type Referrer struct {
	Digest       string            `json:"digest"`
	MediaType    string            `json:"mediaType"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// Referrers returns the manifests of repo whose subject is subject.
func (s *Store) Referrers(ctx context.Context, repo string, subject Digest) ([]Referrer, error) {
	var out []Referrer
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := repoKey(repo, subject.String()+"\x00")
		c := tx.Bucket(bucketReferrers).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var r Referrer
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// DeleteManifest removes manifest d from repo with every tag pointing at
// it. Its bytes and the blobs it named stay until garbage collection.
// Returns ErrNotFound when repo does not hold it.
func (s *Store) DeleteManifest(ctx context.Context, repo string, d Digest) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketManifests).Get(repoKey(repo, d.String())) == nil {
			return fmt.Errorf("manifest %s@%s: %w", repo, d, ErrNotFound)
		}
		_, err := s.removeManifestTx(tx, repo, d.String())
		return err
	})
}

// Unlink removes repo's link to blob d (its bytes stay until garbage
// collection). Returns ErrNotFound when there was no link.
func (s *Store) Unlink(ctx context.Context, repo string, d Digest) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLinks)
		k := repoKey(repo, d.String())
		if b.Get(k) == nil {
			return fmt.Errorf("blob %s@%s: %w", repo, d, ErrNotFound)
		}
		return b.Delete(k)
	})
}

func putTag(tx *bolt.Tx, repo, tag string, d Digest, checked time.Time) error {
	v, _ := json.Marshal(tagRecord{Digest: d.String(), Checked: checked.UnixNano()})
	return tx.Bucket(bucketTags).Put(repoKey(repo, tag), v)
}

// HasManifest reports whether repo holds the manifest d.
func (s *Store) HasManifest(ctx context.Context, repo string, d Digest) (bool, error) {
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketManifests).Get(repoKey(repo, d.String())) != nil
		return nil
	})
	return ok, err
}

// GetManifest returns the manifest d of repo, or ErrNotFound, and counts
// a pull of d (its last access and hits).
func (s *Store) GetManifest(ctx context.Context, repo string, d Digest) (Manifest, error) {
	return s.getManifest(repo, d, true)
}

// PeekManifest is GetManifest for looking (berth ls, the status page): it
// leaves d's last access and hits as they are.
func (s *Store) PeekManifest(ctx context.Context, repo string, d Digest) (Manifest, error) {
	return s.getManifest(repo, d, false)
}

func (s *Store) getManifest(repo string, d Digest, touch bool) (Manifest, error) {
	ck := string(repoKey(repo, d.String()))
	if m, ok := s.cache.manifest(ck); ok {
		if touch {
			s.touch(d)
		}
		return m, nil
	}
	seen := s.cache.version.Load()
	var rec manifestRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketManifests).Get(repoKey(repo, d.String()))
		if v == nil {
			return fmt.Errorf("manifest %s@%s: %w", repo, d, ErrNotFound)
		}
		return json.Unmarshal(v, &rec)
	})
	if err != nil {
		return Manifest{}, err
	}
	body, err := os.ReadFile(filepath.Join(s.dir, d.relPath()))
	if err != nil || int64(len(body)) != rec.Size {
		s.log.Error("manifest file missing or wrong size", "digest", d, "err", err)
		return Manifest{}, fmt.Errorf("manifest %s: %w", d, ErrNotFound)
	}
	if touch {
		s.touch(d)
	}
	m := Manifest{
		Digest: d, MediaType: rec.MediaType, Body: body, Subject: rec.Subject,
		ArtifactType: rec.ArtifactType, Annotations: rec.Annotations,
	}
	s.cache.putManifest(ck, m, seen)
	return m, nil
}

// ResolveTag returns what tag points at in repo, or ErrNotFound.
func (s *Store) ResolveTag(ctx context.Context, repo, tag string) (TagInfo, error) {
	ck := string(repoKey(repo, tag))
	if t, ok := s.cache.tag(ck); ok {
		return t, nil
	}
	seen := s.cache.version.Load()
	var rec tagRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTags).Get(repoKey(repo, tag))
		if v == nil {
			return fmt.Errorf("tag %s:%s: %w", repo, tag, ErrNotFound)
		}
		return json.Unmarshal(v, &rec)
	})
	if err != nil {
		return TagInfo{}, err
	}
	d, err := ParseDigest(rec.Digest)
	if err != nil {
		return TagInfo{}, err
	}
	t := TagInfo{Digest: d, Checked: time.Unix(0, rec.Checked)}
	s.cache.putTag(ck, t, seen)
	return t, nil
}

// TagChecked records that tag still points at d as of t.
func (s *Store) TagChecked(ctx context.Context, repo, tag string, d Digest, t time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		s.cache.forgetOnCommit(tx, repoKey(repo, tag))
		return putTag(tx, repo, tag, d, t)
	})
}

// DeleteTag removes tag from repo. A missing tag is ErrNotFound.
func (s *Store) DeleteTag(ctx context.Context, repo, tag string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		s.cache.forgetOnCommit(tx, repoKey(repo, tag))
		b := tx.Bucket(bucketTags)
		k := repoKey(repo, tag)
		if b.Get(k) == nil {
			return fmt.Errorf("tag %s:%s: %w", repo, tag, ErrNotFound)
		}
		return b.Delete(k)
	})
}

// Tags returns the tags of repo, sorted.
func (s *Store) Tags(ctx context.Context, repo string) ([]string, error) {
	var tags []string
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := repoKey(repo, "")
		c := tx.Bucket(bucketTags).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			tags = append(tags, string(k[len(prefix):]))
		}
		return nil
	})
	sort.Strings(tags)
	return tags, err
}

// Repositories returns the repository paths that hold at least one
// manifest and start with prefix, sorted.
func (s *Store) Repositories(ctx context.Context, prefix string) ([]string, error) {
	var out []string
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketManifests).Cursor()
		last := ""
		for k, _ := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
			repo, _, ok := strings.Cut(string(k), "\x00")
			if ok && repo != last {
				out = append(out, repo)
				last = repo
			}
		}
		return nil
	})
	return out, err
}

// IsNotFound reports whether err means something is not in the store.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
