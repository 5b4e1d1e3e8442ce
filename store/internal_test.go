package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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

// TestKeyedLocksFreed: a key's mutex goes when its last holder unlocks,
// and the lock still excludes while it is held and waited for.
func TestKeyedLocksFreed(t *testing.T) {
	var l keyedLocks
	var wg sync.WaitGroup
	var inside, maxInside atomic.Int32
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				key := fmt.Sprint(i % 4)
				unlock := l.lock(key)
				if key == "0" {
					if n := inside.Add(1); n > maxInside.Load() {
						maxInside.Store(n)
					}
					inside.Add(-1)
				}
				unlock()
			}
		}()
	}
	wg.Wait()
	if maxInside.Load() > 1 {
		t.Errorf("%d holders of one key at once", maxInside.Load())
	}
	if n := l.len(); n != 0 {
		t.Errorf("%d mutexes left after every unlock", n)
	}
}

// TestUploadAndCommitLocksDoNotGrow: after many uploads and commits the
// store keeps no per-id or per-digest lock.
func TestUploadAndCommitLocksDoNotGrow(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < 100; i++ {
		body := []byte(fmt.Sprintf("blob %d", i))
		u, err := s.CreateUpload(context.Background(), "local/app", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.FinishUpload(context.Background(), "local/app", u.ID, bytes.NewReader(body), int64(len(body)), DigestOf(body)); err != nil {
			t.Fatal(err)
		}
	}
	if a, b := s.uploads.len(), s.digests.len(); a != 0 || b != 0 {
		t.Errorf("locks kept: %d upload ids, %d digests", a, b)
	}
}

// TestMemCacheForgetsOnlyWhatChanged: a tag check drops that tag's cached
// record and nothing else; a changed tag is read anew.
func TestMemCacheForgetsOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ds []Digest
	for i := 0; i < 2; i++ {
		body := []byte(fmt.Sprintf(`{"schemaVersion":2,"n":%d}`, i))
		m := Manifest{Digest: DigestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}
		if err := s.PutManifest(ctx, "hub/app", m, fmt.Sprint("t", i), nil); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, m.Digest)
	}
	for i, d := range ds {
		if _, err := s.GetManifest(ctx, "hub/app", d); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ResolveTag(ctx, "hub/app", fmt.Sprint("t", i)); err != nil {
			t.Fatal(err)
		}
	}
	if s.cache.manifests.Len() != 2 || s.cache.tags.Len() != 2 {
		t.Fatalf("cached %d manifests, %d tags; want 2, 2", s.cache.manifests.Len(), s.cache.tags.Len())
	}
	// t0 now points at the second manifest.
	if err := s.TagChecked(ctx, "hub/app", "t0", ds[1], time.Now()); err != nil {
		t.Fatal(err)
	}
	if s.cache.manifests.Len() != 2 || s.cache.tags.Len() != 1 {
		t.Errorf("after one tag change: %d manifests, %d tags cached; want 2, 1", s.cache.manifests.Len(), s.cache.tags.Len())
	}
	if ti, err := s.ResolveTag(ctx, "hub/app", "t0"); err != nil || ti.Digest != ds[1] {
		t.Errorf("t0 = %v %v, want %s", ti.Digest, err, ds[1])
	}
	// Deleting a manifest forgets it and the tags that pointed at it.
	if err := s.DeleteManifest(ctx, "hub/app", ds[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ResolveTag(ctx, "hub/app", "t1"); !IsNotFound(err) {
		t.Errorf("tag of a deleted manifest: %v", err)
	}
	if _, err := s.GetManifest(ctx, "hub/app", ds[1]); !IsNotFound(err) {
		t.Errorf("deleted manifest: %v", err)
	}
	if _, ok := s.cache.manifests.Get(string(repoKey("hub/app", ds[0].String()))); !ok {
		t.Error("an unrelated manifest was dropped from the cache")
	}
}

// TestSchemaVersion: a new index records SchemaVersion; an index without
// a version (schema 1) is migrated, its dangling links dropped; an index
// from a newer berth is refused before anything is written to it.
func TestSchemaVersion(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ghost := DigestOf([]byte("gone"))
	if err := s.Link(context.Background(), "hub/a", ghost, LinkFetched); err != nil {
		t.Fatal(err)
	}
	// Make it look like an index from before versions were recorded.
	s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(metaSchema) })
	s.Close()

	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.HasLink(context.Background(), "hub/a", ghost); ok {
		t.Error("migration kept a dangling link")
	}
	var v int64
	s.db.View(func(tx *bolt.Tx) error { v = schemaOf(tx); return nil })
	if v != SchemaVersion {
		t.Errorf("schema %d after open, want %d", v, SchemaVersion)
	}
	s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaSchema, encodeInt(SchemaVersion+1)) })
	s.Close()
	before, _ := os.ReadFile(filepath.Join(dir, "index.db"))

	_, err = Open(dir, Options{})
	if !errors.Is(err, ErrSchemaNewer) || !strings.Contains(err.Error(), fmt.Sprintf("schema is %d, this berth reads up to %d", SchemaVersion+1, SchemaVersion)) {
		t.Fatalf("opening a newer index: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "index.db")); !bytes.Equal(before, after) {
		t.Error("the refused index was written to")
	}
}

// TestBackupWhileServing: Backup writes a consistent index while writes go
// on; with the blob files copied after it, the copy opens and checks
// clean (blobs stored after the backup are orphan files there, which
// repair removes).
func TestBackupWhileServing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put := func(i int) {
		b := []byte(fmt.Sprintf("blob %d", i))
		if _, err := s.PutBlob(ctx, DigestOf(b), b, Link{Repo: "local/app", Kind: LinkPushed}); err != nil {
			t.Error(err)
		}
	}
	for i := 0; i < 50; i++ {
		put(i)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 50; i < 150; i++ {
			put(i)
		}
	}()
	restore := t.TempDir()
	f, err := os.Create(filepath.Join(restore, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	<-done
	if err := os.CopyFS(filepath.Join(restore, "blobs"), os.DirFS(filepath.Join(dir, "blobs"))); err != nil {
		t.Fatal(err)
	}
	r, err := Open(restore, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	probs, err := r.Check(ctx, CheckOptions{Rehash: true, Orphans: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		if p.Kind != "orphan_file" {
			t.Errorf("restored copy: %s", p)
		}
	}
	if err := r.Repair(ctx, probs); err != nil {
		t.Fatal(err)
	}
	if left, _ := r.Check(ctx, CheckOptions{Rehash: true, Orphans: true}); len(left) != 0 {
		t.Errorf("after repair: %v", left)
	}
	if _, n := r.Stats(); n < 50 {
		t.Errorf("restored %d blobs, want at least the 50 before the backup", n)
	}
}

// TestCountsHoldThroughAFlush: a reader that adds pending to flushed
// counts never sees a pull vanish while a flush moves it from one to the
// other (the status page once showed 0 pulls, then 1, then 0).
func TestCountsHoldThroughAFlush(t *testing.T) {
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
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				s.flushAccess()
			}
		}
	}()
	var want int64
	var lastSeen time.Time
	for i := 0; i < 300; i++ {
		s.Pulled(ctx, m.Digest)
		want++
		for j := 0; j < 5; j++ {
			if n, _ := s.Pulls(ctx, m.Digest); n != want {
				close(stop)
				wg.Wait()
				t.Fatalf("pull %d: counted %d", want, n)
			}
			at, err := s.LastAccess(ctx, m.Digest)
			if err != nil || at.Before(lastSeen) {
				close(stop)
				wg.Wait()
				t.Fatalf("last access went back from %v to %v (%v)", lastSeen, at, err)
			}
			lastSeen = at
		}
	}
	close(stop)
	wg.Wait()
}

// TestPruneVerdicts: the verdicts of fingerprints no longer live go;
// first-seen times and approvals stay; nothing to prune writes nothing.
func TestPruneVerdicts(t *testing.T) {
	s, err := Open(t.TempDir(), Options{FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	d := "sha256:" + strings.Repeat("a", 64)
	for _, k := range []string{"old@" + d, "new@" + d, "passed@old@hub/app:v1", "passed@new@hub/app:v1", "seen@" + d, "approved@" + d} {
		if err := s.PutVerdict(ctx, k, Verdict{Decision: "allow"}); err != nil {
			t.Fatal(err)
		}
	}
	live := func(fp string) bool { return fp == "new" }
	if n, err := s.PruneVerdicts(ctx, live); err != nil || n != 2 {
		t.Fatalf("pruned %d (%v), want 2", n, err)
	}
	for k, want := range map[string]bool{"old@" + d: false, "passed@old@hub/app:v1": false, "new@" + d: true, "passed@new@hub/app:v1": true, "seen@" + d: true, "approved@" + d: true} {
		if _, ok, _ := s.GetVerdict(ctx, k); ok != want {
			t.Errorf("%s kept: %v, want %v", k, ok, want)
		}
	}
	before := txID(t, s)
	if n, err := s.PruneVerdicts(ctx, live); err != nil || n != 0 || txID(t, s) != before {
		t.Fatalf("a second prune: %d %v, wrote %v", n, err, txID(t, s) != before)
	}
}
