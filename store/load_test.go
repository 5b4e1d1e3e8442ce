package store_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/store/storetest"
)

// TestLoaderFillsLikeThePutCalls: blobs and manifests loaded in batches
// are in the index after Flush, across a reopen, as PutBlob and
// PutManifest would leave them: counted, tagged, linked, with no problem
// verify sees; a blob that does not hash to its digest is refused. GC then
// frees more garbage blobs than one deletion batch, and only those.
func TestLoaderFillsLikeThePutCalls(t *testing.T) {
	dir := t.TempDir()
	s, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ld := store.NewLoader(s, 100)
	if err := ld.Blob(store.DigestOf([]byte("a")), []byte("b")); err == nil {
		t.Fatal("a blob whose bytes hash elsewhere was loaded")
	}
	var total int64
	var layers []store.Digest
	for i := range 700 {
		b := []byte(fmt.Sprintf("blob %d", i))
		d := store.DigestOf(b)
		if err := ld.Blob(d, b, store.Link{Repo: "hub/app", Kind: store.LinkFetched}); err != nil {
			t.Fatal(err)
		}
		total += int64(len(b))
		if i < 100 {
			layers = append(layers, d)
		}
	}
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`)
	m := store.Manifest{Digest: store.DigestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}
	if err := ld.Manifest("hub/app", m, "v1", layers); err != nil {
		t.Fatal(err)
	}
	if err := ld.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = storetest.OpenDir(t, dir)
	if bytes, count := s.Stats(); count != 701 || bytes != total+int64(len(body)) {
		t.Errorf("after a reopen: %d blobs, %d bytes; want 701, %d", count, bytes, total+int64(len(body)))
	}
	if ti, err := s.ResolveTag(ctx, "hub/app", "v1"); err != nil || ti.Digest != m.Digest {
		t.Errorf("tag v1: %+v, %v", ti, err)
	}
	if ok, err := s.HasLink(ctx, "hub/app", layers[5]); !ok || err != nil {
		t.Errorf("layer link: %v %v", ok, err)
	}
	if probs, err := s.Check(ctx, store.CheckOptions{Rehash: true, Orphans: true}); err != nil || len(probs) != 0 {
		t.Errorf("verify: %v %v", probs, err)
	}
	res, err := s.GC(store.GCOptions{})
	if err != nil || res.Blobs != 600 {
		t.Fatalf("GC freed %d blobs (%v), want the 600 no manifest names", res.Blobs, err)
	}
	if _, count := s.Stats(); count != 101 {
		t.Errorf("%d blobs after GC, want the manifest and its 100 layers", count)
	}
	for _, d := range layers {
		if _, err := s.StatBlob(ctx, d); err != nil {
			t.Fatalf("a referenced layer went: %v", err)
		}
	}
	if probs, err := s.Check(ctx, store.CheckOptions{Orphans: true}); err != nil || len(probs) != 0 {
		t.Errorf("verify after GC: %v %v", probs, err)
	}
}
