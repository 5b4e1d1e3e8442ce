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
func (s *Store) recover() error {
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
