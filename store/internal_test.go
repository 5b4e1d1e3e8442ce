package store

import (
	"context"
	bolt "go.etcd.io/bbolt"
	"testing"
	"time"
)

func txID(t *testing.T, s *Store) int {
	var id int
	s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil })
	return id
}

// TestWarmReadsWriteNothing: serving cached content must not write to
// bbolt; access times are batched and flushed later.
func TestWarmReadsWriteNothing(t *testing.T) {
	s, err := Open(t.TempDir(), Options{FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	body := []byte(`{"schemaVersion":2}`)
	m := Manifest{Digest: DigestOf(body), MediaType: "application/json", Body: body}
	if err := s.PutManifest(ctx, "r/a", m, "t", nil); err != nil {
		t.Fatal(err)
	}
	created, _ := s.LastAccess(ctx, m.Digest)
	before := txID(t, s)
	for i := 0; i < 100; i++ {
		if _, err := s.ResolveTag(ctx, "r/a", "t"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetManifest(ctx, "r/a", m.Digest); err != nil {
			t.Fatal(err)
		}
		f, err := s.OpenBlob(ctx, m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if after := txID(t, s); after != before {
		t.Fatalf("warm reads wrote %d transactions", after-before)
	}
	s.flushAccess()
	if after := txID(t, s); after != before+1 {
		t.Fatalf("flush wrote %d transactions, want 1", after-before)
	}
	last, err := s.LastAccess(ctx, m.Digest)
	if err != nil || !last.After(created) {
		t.Fatalf("last access %v (created %v): %v", last, created, err)
	}
}
