package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
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

// BlobWriter writes one blob into tmp/, hashing as it goes. Commit moves it
// into place; Close releases it and, if it was not committed, deletes the
// temp file. ReadAt may be called concurrently with Write, so readers can
// follow a blob while it is being written.
type BlobWriter struct {
	s    *Store
	f    *os.File
	path string
	alg  string
	h    hash.Hash

	mu        sync.Mutex
	n         int64
	extent    int64 // bytes the temp file holds (its furthest write), counted in Store.tmpBytes
	committed bool
	final     string // where Commit moved the file
	closed    bool
}

// NewBlobWriter starts a blob whose digest will use alg ("sha256" or
// "sha512"; "" means sha256).
func (s *Store) NewBlobWriter(ctx context.Context, alg string) (*BlobWriter, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if alg == "" {
		alg = "sha256"
	}
	var rnd [12]byte
	rand.Read(rnd[:])
	path := filepath.Join(s.dir, "tmp", "blob-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return &BlobWriter{s: s, f: f, path: path, alg: alg, h: newHash(alg)}, nil
}

// Write appends p to the blob: after the bytes written (or absorbed) so
// far, hashing them.
func (w *BlobWriter) Write(p []byte) (int, error) {
	off := w.Size()
	n, err := w.f.WriteAt(p, off)
	w.h.Write(p[:n])
	w.mu.Lock()
	w.n += int64(n)
	w.mu.Unlock()
	w.grew(off + int64(n))
	return n, err
}

// grew counts the temp file's bytes up to end in the store's temp bytes,
// which count toward max_size: a download in progress makes room for
// itself like a stored blob.
func (w *BlobWriter) grew(end int64) {
	w.mu.Lock()
	d := end - w.extent
	if d > 0 && !w.committed && !w.closed {
		w.extent = end
	} else {
		d = 0
	}
	w.mu.Unlock()
	if d > 0 {
		w.s.tmpBytes.Add(d)
		w.s.maybeEvict()
	}
}

// settleTempLocked takes the temp file's bytes out of the store's temp bytes
// (once: at its commit or close). Called with w.mu held.
func (w *BlobWriter) settleTempLocked() {
	w.s.tmpBytes.Add(-w.extent)
	w.extent = 0
}

// WriteAt writes p at off, past the blob's hashed part, without hashing
// it: a download that fetches byte ranges in parallel writes each where it
// belongs, and Absorb takes the bytes into the blob once every byte
// before them is in.
func (w *BlobWriter) WriteAt(p []byte, off int64) (int, error) {
	n, err := w.f.WriteAt(p, off)
	w.grew(off + int64(n))
	return n, err
}

// Absorb hashes the bytes from the blob's size up to end, which WriteAt
// has written, and makes end its size. An end at or before the size does
// nothing.
func (w *BlobWriter) Absorb(end int64) error {
	from := w.Size()
	if end <= from {
		return nil
	}
	n, err := io.Copy(w.h, io.NewSectionReader(w.f, from, end-from))
	if err == nil && n != end-from {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		// Part of the range may be in the hash: the writer cannot be
		// committed any more (its caller gives it up).
		return fmt.Errorf("store: absorb: %w", err)
	}
	w.mu.Lock()
	w.n = end
	w.mu.Unlock()
	return nil
}

// Size returns the number of bytes written so far.
func (w *BlobWriter) Size() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// ReadAt reads already written bytes; it is safe during Write.
func (w *BlobWriter) ReadAt(p []byte, off int64) (int, error) { return w.f.ReadAt(p, off) }

// OpenReader opens the blob's file for reading on its own file offset,
// wherever it is now (in tmp/, or in blobs/ once committed), so that a
// reader can follow the blob with sendfile while it is written. The caller
// closes the file; the bytes it may read are those written so far.
func (w *BlobWriter) OpenReader() (*os.File, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, fmt.Errorf("store: blob writer closed")
	}
	path := w.path
	if w.committed {
		path = w.final
	}
	return os.Open(path)
}

// Digest returns the digest of the bytes written so far, in the writer's
// algorithm.
func (w *BlobWriter) Digest() Digest {
	return Digest{alg: w.alg, hex: hex.EncodeToString(w.h.Sum(nil))}
}

// Commit checks that the blob is want (and, if wantSize >= 0, that long),
// makes it durable, moves it into blobs/ and enters it in the index with
// the given links. On ErrDigestMismatch or ErrSizeMismatch nothing is
// stored. Committing a blob that is already stored only adds the links.
func (w *BlobWriter) Commit(ctx context.Context, want Digest, wantSize int64, links ...Link) (BlobInfo, error) {
	if err := w.Verify(want, wantSize); err != nil {
		return BlobInfo{}, err
	}
	return w.s.commitFile(w, want, w.Size(), links)
}

// Verify checks that the bytes written so far are want (and, if
// wantSize >= 0, that long): ErrDigestMismatch or ErrSizeMismatch if not.
func (w *BlobWriter) Verify(want Digest, wantSize int64) error {
	size := w.Size()
	if wantSize >= 0 && size != wantSize {
		return fmt.Errorf("%w: wrote %d bytes, expected %d", ErrSizeMismatch, size, wantSize)
	}
	got := w.Digest()
	if want.alg != w.alg {
		var err error
		if got, err = w.rehash(want.alg); err != nil {
			return err
		}
	}
	if got != want {
		return fmt.Errorf("%w: content is %s, expected %s", ErrDigestMismatch, got, want)
	}
	return nil
}

func (w *BlobWriter) rehash(alg string) (Digest, error) {
	h := newHash(alg)
	if _, err := io.Copy(h, io.NewSectionReader(w.f, 0, w.Size())); err != nil {
		return Digest{}, fmt.Errorf("store: rehash: %w", err)
	}
	return Digest{alg: alg, hex: hex.EncodeToString(h.Sum(nil))}, nil
}

// Close releases the writer. An uncommitted blob's temp file is removed.
// Readers that use ReadAt must be done before Close.
func (w *BlobWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.f.Close()
	if !w.committed {
		os.Remove(w.path)
		w.settleTempLocked()
	}
	return err
}

// Link names a repository that holds a blob being committed.
type Link struct {
	Repo string
	Kind string
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
