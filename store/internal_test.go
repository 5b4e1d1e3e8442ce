package store

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
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

// TestRecoverPendingCommit simulates a crash after a blob file was renamed
// into place but before its index entry was written.
func TestRecoverPendingCommit(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	good, bad := []byte("complete blob"), []byte("torn blob")
	dg, db := DigestOf(good), DigestOf(bad)
	for _, c := range []struct {
		d    Digest
		data []byte
	}{{dg, good}, {db, bad[:4]}} {
		rec, _ := json.Marshal(blobRecord{Size: int64(len(c.data)), Created: time.Now().UnixNano()})
		if c.d == db {
			rec, _ = json.Marshal(blobRecord{Size: int64(len(bad)), Created: time.Now().UnixNano()})
		}
		s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketPending).Put([]byte(c.d.String()), rec) })
		os.MkdirAll(filepath.Dir(filepath.Join(dir, c.d.relPath())), 0o750)
		os.WriteFile(filepath.Join(dir, c.d.relPath()), c.data, 0o640)
	}
	s.Close()
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.StatBlob(context.Background(), dg); err != nil {
		t.Fatalf("complete file not entered: %v", err)
	}
	if _, err := s.StatBlob(context.Background(), db); !IsNotFound(err) {
		t.Fatal("torn file entered")
	}
	if _, err := os.Stat(filepath.Join(dir, db.relPath())); !os.IsNotExist(err) {
		t.Fatal("torn file left behind")
	}
	probs, _ := s.Check(context.Background(), CheckOptions{Rehash: true, Orphans: true, Tmp: true})
	if len(probs) != 0 {
		t.Fatalf("problems after recovery: %v", probs)
	}
}
