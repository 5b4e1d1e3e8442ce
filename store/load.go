package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Loader fills a store in bulk: blob files are written without a sync
// each, and their index records go in one transaction per batch, where
// PutBlob and PutManifest sync a file and commit the index for every
// call (about a millisecond each, an hour for a million blobs). Flush
// commits what is queued and syncs the file systems once.
//
// It is for filling a store nothing serves yet (the cost benchmark,
// restoring into an empty data directory). A crash before Flush leaves
// blob files the index does not name; the next open keeps them out of
// every count and `berth verify` lists them.
type Loader struct {
	s      *Store
	batch  int
	queued []func(tx *bolt.Tx) error
	dirs   map[string]bool
}

// NewLoader returns a loader that commits every batch records (0: 10,000).
func NewLoader(s *Store, batch int) *Loader {
	if batch <= 0 {
		batch = 10_000
	}
	return &Loader{s: s, batch: batch, dirs: map[string]bool{}}
}

// Blob stores b, which must hash to d, with links.
func (l *Loader) Blob(d Digest, b []byte, links ...Link) error {
	if got := DigestOf(b); got != d {
		return fmt.Errorf("store: load %s: %w (the bytes hash to %s)", d, ErrDigestMismatch, got)
	}
	final := filepath.Join(l.s.dir, d.relPath())
	if dir := filepath.Dir(final); !l.dirs[dir] {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		l.dirs[dir] = true
	}
	tmp := final + ".load"
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	rec := blobRecord{Size: int64(len(b)), Created: time.Now().UnixNano()}
	return l.queue(func(tx *bolt.Tx) error {
		if err := l.s.addBlobRecord(tx, d, rec); err != nil {
			return err
		}
		return putLinks(tx, d, links)
	})
}

// Manifest stores m in repo as PutManifest does, tagged tag unless it is
// empty.
func (l *Loader) Manifest(repo string, m Manifest, tag string, refs []Digest) error {
	if err := l.Blob(m.Digest, m.Body); err != nil {
		return err
	}
	return l.queue(func(tx *bolt.Tx) error { return putManifestTx(l.s, tx, repo, m, tag, refs) })
}

func (l *Loader) queue(f func(tx *bolt.Tx) error) error {
	l.queued = append(l.queued, f)
	if len(l.queued) >= l.batch {
		return l.commit()
	}
	return nil
}

func (l *Loader) commit() error {
	if len(l.queued) == 0 {
		return nil
	}
	if l.s.closed.Load() {
		return ErrClosed
	}
	err := l.s.db.Update(func(tx *bolt.Tx) error {
		for _, f := range l.queued {
			if err := f(tx); err != nil {
				return err
			}
		}
		return nil
	})
	l.queued = l.queued[:0]
	if err != nil {
		return fmt.Errorf("store: load: %w", err)
	}
	return nil
}

// Flush commits the queued records and makes every file written durable.
func (l *Loader) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := l.commit(); err != nil {
		return err
	}
	syscall.Sync() // every file written, at once
	return nil
}
