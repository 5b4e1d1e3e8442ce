package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	// ErrUploadUnknown is returned for an upload id that does not exist,
	// has expired, or belongs to another repository.
	ErrUploadUnknown = errors.New("upload unknown")
	// ErrRangeInvalid is returned by AppendUpload when a chunk does not
	// start where the upload ends.
	ErrRangeInvalid = errors.New("chunk out of order")
)

var bucketUploads = []byte("uploads")

// Upload is an upload session. Its bytes live in uploads/<id>; the
// session survives a restart.
type Upload struct {
	ID      string    `json:"-"`
	Repo    string    `json:"repo"`
	Offset  int64     `json:"offset"`          // bytes received
	Owner   string    `json:"owner,omitempty"` // who started it (a user, or a client address), for quotas
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// HashState is the sha256 state after Offset bytes, so a resumed
	// upload needs no re-read.
	HashState []byte `json:"hashState,omitempty"`
}

// keyedLocks serializes work on one key (an upload id, a digest). A key's
// mutex lives only while someone holds or waits for it, so the map holds
// no more entries than there are callers.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	refs int // holders and waiters; guarded by keyedLocks.mu
}

// lock locks id and returns its unlock.
func (l *keyedLocks) lock(id string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*keyedLock{}
	}
	k, ok := l.m[id]
	if !ok {
		k = &keyedLock{}
		l.m[id] = k
	}
	k.refs++
	l.mu.Unlock()
	k.Lock()
	return func() {
		k.Unlock()
		l.mu.Lock()
		if k.refs--; k.refs == 0 {
			delete(l.m, id)
		}
		l.mu.Unlock()
	}
}

// len is the number of keys with a holder or waiter.
func (l *keyedLocks) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

func (area *uploadArea) uploadPath(id string) string { return filepath.Join(area.s.dir, "uploads", id) }

// ValidUploadID reports whether id has the form of the upload ids the
// store hands out (32 hex digits): the one grammar of an upload id, also
// used to reject a bad URL before the store is asked.
func ValidUploadID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// CreateUpload starts an upload session for repo, started by owner (""
// for none).
func (area *uploadArea) CreateUpload(ctx context.Context, repo, owner string) (Upload, error) {
	s := area.s
	var rnd [16]byte
	rand.Read(rnd[:])
	now := time.Now()
	u := Upload{ID: hex.EncodeToString(rnd[:]), Repo: repo, Owner: owner, Created: now, Updated: now}
	f, err := os.OpenFile(s.uploadPath(u.ID), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return u, fmt.Errorf("store: %w", err)
	}
	f.Close()
	if err := s.putUpload(u); err != nil {
		os.Remove(s.uploadPath(u.ID))
		return u, err
	}
	return u, nil
}

func (area *uploadArea) putUpload(u Upload) error {
	s := area.s
	v, _ := json.Marshal(u)
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketUploads).Put([]byte(u.ID), v) })
}

// GetUpload returns the session id of repo, or ErrUploadUnknown.
func (area *uploadArea) GetUpload(ctx context.Context, repo, id string) (Upload, error) {
	s := area.s
	var u Upload
	if !ValidUploadID(id) {
		return u, ErrUploadUnknown
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketUploads).Get([]byte(id))
		if v == nil {
			return ErrUploadUnknown
		}
		return json.Unmarshal(v, &u)
	})
	u.ID = id
	if err == nil && u.Repo != repo {
		err = ErrUploadUnknown
	}
	return u, err
}

// AppendUpload writes a chunk that must start at start (the upload's
// offset; -1 means "wherever it ends"). When size >= 0 the chunk must be
// exactly that long. The chunk is durable before the new offset is
// recorded; a failed chunk leaves the upload as it was.
func (area *uploadArea) AppendUpload(ctx context.Context, repo, id string, start int64, r io.Reader, size int64) (Upload, error) {
	s := area.s
	defer s.uploads.lock(id)()
	u, err := s.GetUpload(ctx, repo, id)
	if err != nil {
		return u, err
	}
	if start >= 0 && start != u.Offset {
		return u, fmt.Errorf("%w: chunk starts at %d, upload has %d bytes", ErrRangeInvalid, start, u.Offset)
	}
	h := sha256.New()
	if len(u.HashState) > 0 {
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(u.HashState); err != nil {
			return u, fmt.Errorf("store: upload %s hash state: %w", id, err)
		}
	}
	f, err := os.OpenFile(s.uploadPath(id), os.O_RDWR, 0)
	if err != nil {
		return u, fmt.Errorf("store: upload %s: %w", id, ErrUploadUnknown)
	}
	defer f.Close()
	// Bytes past the recorded offset are from a chunk that failed or a
	// crash; they do not count.
	if err := f.Truncate(u.Offset); err != nil {
		return u, fmt.Errorf("store: %w", err)
	}
	if _, err := f.Seek(u.Offset, io.SeekStart); err != nil {
		return u, fmt.Errorf("store: %w", err)
	}
	src := r
	if size >= 0 {
		src = io.LimitReader(r, size)
	}
	n, err := io.Copy(io.MultiWriter(f, h), src)
	if err != nil {
		return u, errors.Join(fmt.Errorf("store: upload chunk: %w", err), f.Truncate(u.Offset))
	}
	if size >= 0 && n != size {
		if err := f.Truncate(u.Offset); err != nil {
			return u, fmt.Errorf("store: upload chunk: %w", err)
		}
		return u, fmt.Errorf("%w: chunk has %d bytes, Content-Range says %d", ErrRangeInvalid, n, size)
	}
	if err := f.Sync(); err != nil {
		return u, fmt.Errorf("store: %w", err)
	}
	state, _ := h.(encoding.BinaryMarshaler).MarshalBinary()
	u.Offset += n
	u.HashState = state
	u.Updated = time.Now()
	return u, s.putUpload(u)
}

// FinishUpload appends a last chunk (r may be empty), checks the whole
// upload against want, stores it as a blob linked to repo, and ends the
// session. On a digest mismatch the session is ended and nothing stored.
func (area *uploadArea) FinishUpload(ctx context.Context, repo, id string, r io.Reader, size int64, want Digest) (BlobInfo, error) {
	s := area.s
	if r != nil {
		if _, err := s.AppendUpload(ctx, repo, id, -1, r, size); err != nil {
			return BlobInfo{}, err
		}
	}
	defer s.uploads.lock(id)()
	u, err := s.GetUpload(ctx, repo, id)
	if err != nil {
		return BlobInfo{}, err
	}
	h := sha256.New()
	if len(u.HashState) > 0 {
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(u.HashState); err != nil {
			return BlobInfo{}, fmt.Errorf("store: upload %s hash state: %w", id, err)
		}
	}
	f, err := os.OpenFile(s.uploadPath(id), os.O_RDWR, 0)
	if err != nil {
		return BlobInfo{}, fmt.Errorf("store: upload %s: %w", id, ErrUploadUnknown)
	}
	if err := f.Truncate(u.Offset); err != nil {
		f.Close()
		return BlobInfo{}, fmt.Errorf("store: %w", err)
	}
	w := &BlobWriter{s: s, f: f, path: s.uploadPath(id), alg: "sha256", h: h, n: u.Offset}
	info, cerr := w.Commit(ctx, want, -1, Link{Repo: repo, Kind: LinkPushed})
	w.Close() // removes the file unless it was moved into blobs/
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketUploads).Delete([]byte(id)) }); err != nil && cerr == nil {
		cerr = err
	}
	return info, cerr
}

// DeleteUpload cancels a session and removes its bytes.
func (area *uploadArea) DeleteUpload(ctx context.Context, repo, id string) error {
	s := area.s
	defer s.uploads.lock(id)()
	if _, err := s.GetUpload(ctx, repo, id); err != nil {
		return err
	}
	os.Remove(s.uploadPath(id))
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketUploads).Delete([]byte(id)) })
}

// ExpireUploads removes sessions not touched for longer than ttl, and
// upload files without a session. It returns how many it removed.
func (area *uploadArea) ExpireUploads(ctx context.Context, ttl time.Duration) (int, error) {
	s := area.s
	var expired []string
	live := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUploads).ForEach(func(k, v []byte) error {
			var u Upload
			if json.Unmarshal(v, &u) != nil || time.Since(u.Updated) > ttl {
				expired = append(expired, string(k))
			} else {
				live[string(k)] = true
			}
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range expired {
		unlock := s.uploads.lock(id)
		os.Remove(s.uploadPath(id))
		err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketUploads).Delete([]byte(id)) })
		unlock()
		if err != nil {
			return n, err
		}
		n++
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, "uploads"))
	if err != nil {
		return n, err
	}
	for _, e := range entries {
		if !live[e.Name()] && !slices.Contains(expired, e.Name()) {
			// A file without a session: a crash between creating the
			// file and recording the session, or an upload just created.
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Minute {
				os.Remove(filepath.Join(s.dir, "uploads", e.Name()))
				n++
			}
		}
	}
	return n, nil
}

// UploadUsage is what upload sessions hold: sessions and bytes received,
// in all and per owner.
type UploadUsage struct {
	Sessions int
	Bytes    int64
	Owner    map[string]OwnerUsage
}

// OwnerUsage is one owner's part of UploadUsage.
type OwnerUsage struct {
	Sessions int
	Bytes    int64
}

// UploadUsage sums the sessions that have not expired.
func (area *uploadArea) UploadUsage(ctx context.Context) (UploadUsage, error) {
	s := area.s
	use := UploadUsage{Owner: map[string]OwnerUsage{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUploads).ForEach(func(k, v []byte) error {
			var u Upload
			if json.Unmarshal(v, &u) != nil {
				return nil
			}
			use.Sessions++
			use.Bytes += u.Offset
			o := use.Owner[u.Owner]
			o.Sessions++
			o.Bytes += u.Offset
			use.Owner[u.Owner] = o
			return nil
		})
	})
	return use, err
}
