package store

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// recover finishes what a crash interrupted, from the intents in the
// index (no scan of blob files):
//   - pending: a blob renamed into blobs/ whose index entry may be
//     missing. A whole, correct file is entered; anything else is removed.
//   - deleting: a blob removed from the index whose file may remain.
//   - uploads: a session whose file is gone (the push finished, or the
//     file was never made) or a file without a session.
func (s *Store) recover() error {
	if err := s.reconcileUploads(); err != nil {
		return err
	}
	type item struct {
		key string
		rec blobRecord
	}
	var pending []item
	var deleting []string
	err := s.db.View(func(tx *bolt.Tx) error {
		tx.Bucket(bucketPending).ForEach(func(k, v []byte) error {
			var rec blobRecord
			json.Unmarshal(v, &rec)
			pending = append(pending, item{string(k), rec})
			return nil
		})
		return tx.Bucket(bucketDeleting).ForEach(func(k, v []byte) error {
			deleting = append(deleting, string(k))
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, k := range deleting {
		d, err := ParseDigest(k)
		if err == nil {
			os.Remove(filepath.Join(s.dir, d.relPath()))
		}
		if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketDeleting).Delete([]byte(k)) }); err != nil {
			return err
		}
	}
	for _, it := range pending {
		d, err := ParseDigest(it.key)
		keep := false
		if err == nil {
			path := filepath.Join(s.dir, d.relPath())
			if st, serr := os.Stat(path); serr == nil && st.Size() == it.rec.Size {
				keep, _ = fileHasDigest(path, d)
			}
			if !keep {
				os.Remove(path)
			}
		}
		err = s.db.Update(func(tx *bolt.Tx) error {
			if keep {
				if err := s.addBlobRecord(tx, d, it.rec); err != nil {
					return err
				}
			}
			return tx.Bucket(bucketPending).Delete([]byte(it.key))
		})
		if err != nil {
			return fmt.Errorf("recover %s: %w", it.key, err)
		}
		s.log.Info("recovered interrupted commit", "digest", it.key, "kept", keep)
	}
	return nil
}

// reconcileUploads drops upload sessions without a file and upload files
// without a session. It runs at open, before any request.
func (s *Store) reconcileUploads() error {
	var stale []string
	live := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUploads).ForEach(func(k, v []byte) error {
			if _, err := os.Stat(s.uploadPath(string(k))); err != nil {
				stale = append(stale, string(k))
			} else {
				live[string(k)] = true
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	if len(stale) > 0 {
		err := s.db.Update(func(tx *bolt.Tx) error {
			for _, k := range stale {
				if err := tx.Bucket(bucketUploads).Delete([]byte(k)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, "uploads"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !live[e.Name()] {
			os.Remove(filepath.Join(s.dir, "uploads", e.Name()))
		}
	}
	return nil
}
