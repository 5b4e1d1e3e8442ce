package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"
)

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
