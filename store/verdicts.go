package store

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bucketVerdicts: what a policy learned about a manifest digest beyond
// the digest itself (a denied tag named it; an index it belongs to was
// decided), "<policy fingerprint>@<digest>" → JSON; and what holds for a
// digest under any policy: "seen@<digest>" (when berth first knew it),
// "approved@<digest>" (an operator released it), and
// "passed@<fingerprint>@<repo>/<name>:<tag>" (the tag's last digest the
// policy let through). A new bucket in an older index is made at open;
// an older berth ignores it.
var bucketVerdicts = []byte("verdicts")

// Verdict is a remembered policy decision on a digest.
type Verdict struct {
	Decision string    `json:"decision"`
	Rule     string    `json:"rule"`
	Reason   string    `json:"reason"`
	At       time.Time `json:"at"`
	Digest   string    `json:"digest,omitempty"` // passed@: the tag's digest
}

// PutVerdict remembers v under key ("<policy fingerprint>@<digest>").
func (s *Store) PutVerdict(ctx context.Context, key string, v Verdict) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketVerdicts).Put([]byte(key), b) })
}

// GetVerdict returns the verdict remembered under key; ok is false when
// none is.
func (s *Store) GetVerdict(ctx context.Context, key string) (v Verdict, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVerdicts).Get([]byte(key))
		if b == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(b, &v)
	})
	return v, ok, err
}

// PruneVerdicts deletes what policies learned under a fingerprint live
// does not name ("<fp>@<digest>", "passed@<fp>@…"): a changed policy's
// old verdicts are never read again. When digests were first seen and
// approvals hold under any policy and are kept. It returns how many went.
func (s *Store) PruneVerdicts(ctx context.Context, live func(fp string) bool) (int, error) {
	var dead [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVerdicts).ForEach(func(k, _ []byte) error {
			key := string(k)
			if strings.HasPrefix(key, "seen@") || strings.HasPrefix(key, "approved@") {
				return nil
			}
			key = strings.TrimPrefix(key, "passed@")
			if fp, _, ok := strings.Cut(key, "@"); ok && !live(fp) {
				dead = append(dead, append([]byte(nil), k...))
			}
			return nil
		})
	})
	if err != nil || len(dead) == 0 {
		return 0, err // nothing to delete: no write
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVerdicts)
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(dead), nil
}
