package store

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BlobInfo describes a stored blob.
type BlobInfo struct {
	Digest  Digest
	Size    int64
	Created time.Time
}

type blobRecord struct {
	Size    int64 `json:"size"`
	Created int64 `json:"created"`
	// Hosted is set once the blob is pushed or mounted into a repository;
	// such blobs are never evicted (garbage collection may still remove
	// them when nothing references them).
	Hosted bool `json:"hosted,omitempty"`
}

// Link kinds: how a repository came to hold a blob. A blob is served from a
// repository only when it is linked there.
const (
	LinkPushed     = "pushed"     // uploaded to this repository
	LinkMounted    = "mounted"    // mounted from another repository
	LinkFetched    = "fetched"    // downloaded through this repository's upstream
	LinkConfirmed  = "confirmed"  // upstream answered HEAD for it in this repository
	LinkReferenced = "referenced" // named by a manifest this repository holds
)

type linkRecord struct {
	Kind    string `json:"kind"`
	Created int64  `json:"created"`
}

// Link records that repo holds d. An existing link is kept as it is.
func (s *Store) Link(ctx context.Context, repo string, d Digest, kind string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return putLink(tx, repo, d, kind) })
}

// HasLink reports whether repo is known to hold d.
func (s *Store) HasLink(ctx context.Context, repo string, d Digest) (bool, error) {
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketLinks).Get(repoKey(repo, d.String())) != nil
		return nil
	})
	return ok, err
}

func putLink(tx *bolt.Tx, repo string, d Digest, kind string) error {
	if kind == LinkPushed || kind == LinkMounted {
		if err := markHosted(tx, d); err != nil {
			return err
		}
	}
	b := tx.Bucket(bucketLinks)
	k := repoKey(repo, d.String())
	if b.Get(k) != nil {
		return nil
	}
	v, _ := json.Marshal(linkRecord{Kind: kind, Created: time.Now().UnixNano()})
	return b.Put(k, v)
}

func markHosted(tx *bolt.Tx, d Digest) error {
	b := tx.Bucket(bucketBlobs)
	v := b.Get([]byte(d.String()))
	if v == nil {
		return nil
	}
	var rec blobRecord
	if err := json.Unmarshal(v, &rec); err != nil || rec.Hosted {
		return err
	}
	rec.Hosted = true
	nv, _ := json.Marshal(rec)
	return b.Put([]byte(d.String()), nv)
}

// addBlobRecord enters a blob in the index and the totals.
func (s *Store) addBlobRecord(tx *bolt.Tx, d Digest, rec blobRecord) error {
	b := tx.Bucket(bucketBlobs)
	if b.Get([]byte(d.String())) != nil {
		return nil
	}
	v, _ := json.Marshal(rec)
	if err := b.Put([]byte(d.String()), v); err != nil {
		return err
	}
	if err := addTotals(tx, 1, rec.Size); err != nil {
		return err
	}
	tx.OnCommit(func() {
		s.count.Add(1)
		s.bytes.Add(rec.Size)
	})
	return nil
}

func addTotals(tx *bolt.Tx, count, bytes int64) error {
	meta := tx.Bucket(bucketMeta)
	if err := meta.Put(metaCount, encodeInt(decodeInt(meta.Get(metaCount))+count)); err != nil {
		return err
	}
	return meta.Put(metaBytes, encodeInt(decodeInt(meta.Get(metaBytes))+bytes))
}

func getBlob(tx *bolt.Tx, d Digest) (blobRecord, error) {
	var rec blobRecord
	v := tx.Bucket(bucketBlobs).Get([]byte(d.String()))
	if v == nil {
		return rec, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return rec, json.Unmarshal(v, &rec)
}

// StatBlob returns the index entry of d, or ErrNotFound.
func (s *Store) StatBlob(ctx context.Context, d Digest) (BlobInfo, error) {
	var info BlobInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, err := getBlob(tx, d)
		info = BlobInfo{Digest: d, Size: rec.Size, Created: time.Unix(0, rec.Created)}
		return err
	})
	return info, err
}

// Blob is an open stored blob. While it is open it is pinned: eviction
// and garbage collection leave it alone. Close it when done.
type Blob struct {
	*os.File
	Info  BlobInfo
	unpin func()
}

// Close closes the file and unpins the blob.
func (b *Blob) Close() error {
	err := b.File.Close()
	b.unpin()
	return err
}

// OpenBlob opens the file of d for reading, pins it and records the
// access. A blob whose file is missing or of the wrong size is reported
// as ErrNotFound and never served.
func (s *Store) OpenBlob(ctx context.Context, d Digest) (*Blob, error) {
	unpin, ok := s.pin(d)
	if !ok {
		return nil, fmt.Errorf("blob %s (being deleted): %w", d, ErrNotFound)
	}
	info, err := s.StatBlob(ctx, d)
	if err != nil {
		unpin()
		return nil, err
	}
	f, err := os.Open(filepath.Join(s.dir, d.relPath()))
	if err != nil {
		unpin()
		s.log.Error("blob file missing", "digest", d, "err", err)
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if st, err := f.Stat(); err != nil || st.Size() != info.Size {
		f.Close()
		unpin()
		s.log.Error("blob file has wrong size", "digest", d, "want", info.Size)
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	s.touch(d)
	return &Blob{File: f, Info: info, unpin: unpin}, nil
}

// pin marks d in use; it fails while d is being deleted.
func (s *Store) pin(d Digest) (unpin func(), ok bool) {
	k := d.String()
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	if s.evicting[k] {
		return nil, false
	}
	s.pins[k]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.pinMu.Lock()
			if s.pins[k]--; s.pins[k] <= 0 {
				delete(s.pins, k)
			}
			s.pinMu.Unlock()
		})
	}, true
}

// claimForDelete marks d as being deleted unless it is pinned.
func (s *Store) claimForDelete(d string) bool {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	if s.pins[d] > 0 || s.evicting[d] {
		return false
	}
	s.evicting[d] = true
	return true
}

func (s *Store) releaseDelete(d string) {
	s.pinMu.Lock()
	delete(s.evicting, d)
	s.pinMu.Unlock()
}

func (s *Store) commitFile(w *BlobWriter, d Digest, size int64, links []Link) (BlobInfo, error) {
	if s.closed.Load() {
		return BlobInfo{}, ErrClosed
	}
	defer s.digests.lock(d.String())()
	final := filepath.Join(s.dir, d.relPath())
	info := BlobInfo{Digest: d, Size: size, Created: time.Now()}
	if existing, err := s.StatBlob(context.Background(), d); err == nil {
		if st, err := os.Stat(final); err == nil && st.Size() == existing.Size {
			// Already stored: only the links are new.
			err := s.db.Update(func(tx *bolt.Tx) error { return putLinks(tx, d, links) })
			return existing, err
		}
	}
	if err := w.f.Sync(); err != nil {
		return info, fmt.Errorf("store: sync: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o750); err != nil {
		return info, fmt.Errorf("store: %w", err)
	}
	// Intent first: a crash after the rename and before the index entry
	// is completed at the next start (see recover), never left as an
	// orphan file.
	rec := blobRecord{Size: size, Created: info.Created.UnixNano()}
	pending, _ := json.Marshal(rec)
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketDeleting).Delete([]byte(d.String())); err != nil {
			return err
		}
		return tx.Bucket(bucketPending).Put([]byte(d.String()), pending)
	})
	if err != nil {
		return info, fmt.Errorf("store: %w", err)
	}
	// Under w.mu, so that OpenReader finds the file on one side of the
	// rename or the other.
	w.mu.Lock()
	err = os.Rename(w.path, final)
	if err == nil {
		w.committed, w.final = true, final
		w.settleTempLocked()
	}
	w.mu.Unlock()
	if err != nil {
		return info, fmt.Errorf("store: %w", err)
	}
	if err := syncDir(filepath.Dir(final)); err != nil {
		return info, fmt.Errorf("store: sync dir: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := s.addBlobRecord(tx, d, rec); err != nil {
			return err
		}
		if err := tx.Bucket(bucketPending).Delete([]byte(d.String())); err != nil {
			return err
		}
		return putLinks(tx, d, links)
	})
	if err != nil {
		return info, fmt.Errorf("store: index %s: %w", d, err)
	}
	s.maybeEvict()
	return info, nil
}

func putLinks(tx *bolt.Tx, d Digest, links []Link) error {
	for _, l := range links {
		if err := putLink(tx, l.Repo, d, l.Kind); err != nil {
			return err
		}
	}
	return nil
}

// PutBlob stores b, which must hash to d, with the given links.
func (s *Store) PutBlob(ctx context.Context, d Digest, b []byte, links ...Link) (BlobInfo, error) {
	w, err := s.NewBlobWriter(ctx, d.Algorithm())
	if err != nil {
		return BlobInfo{}, err
	}
	defer w.Close()
	if _, err := w.Write(b); err != nil {
		return BlobInfo{}, fmt.Errorf("store: %w", err)
	}
	return w.Commit(ctx, d, int64(len(b)), links...)
}
