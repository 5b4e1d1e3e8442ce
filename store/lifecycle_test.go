package store_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/store/storetest"
)

func openOpts(t *testing.T, dir string, o store.Options) *store.Store {
	t.Helper()
	o.FlushInterval = time.Hour
	o.ManualEviction = true
	s, err := store.Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { storetest.CheckAndClose(t, s) })
	return s
}

func blobOf(i, size int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, size)
	copy(b, fmt.Sprintf("blob-%d", i))
	return b
}

// cachedImage stores a proxy manifest in repo naming the given layers.
func cachedImage(t *testing.T, s *store.Store, repo string, hosted bool, layers ...store.Digest) store.Digest {
	t.Helper()
	body := []byte(fmt.Sprintf(`{"schemaVersion":2,"layers":%q,"r":%q}`, fmt.Sprint(layers), repo))
	m := store.Manifest{Digest: store.DigestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body, Hosted: hosted}
	if err := s.PutManifest(ctx, repo, m, "latest", layers); err != nil {
		t.Fatal(err)
	}
	return m.Digest
}

func has(s *store.Store, d store.Digest) bool {
	_, err := s.StatBlob(ctx, d)
	return err == nil
}

// TestEvictionLRUAndWaterMarks: above high water, the least recently used
// cached content goes first, down to low water; hosted content stays.
func TestEvictionLRUAndWaterMarks(t *testing.T) {
	s := openOpts(t, t.TempDir(), store.Options{MaxSize: 10_000, HighWater: 0.9, LowWater: 0.5})
	hosted := put(t, s, blobOf(100, 2000), store.Link{Repo: "local/app", Kind: store.LinkPushed})
	var cached []store.Digest
	for i := 0; i < 6; i++ {
		cached = append(cached, put(t, s, blobOf(i, 1000), store.Link{Repo: "hub/x", Kind: store.LinkFetched}))
		time.Sleep(2 * time.Millisecond)
	}
	// Touch 0 and 1 so 2 and 3 are the least recently used.
	for _, d := range cached[:2] {
		f, err := s.OpenBlob(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	// 2000 + 6000 = 8000 is below 9000: nothing happens.
	if n, _, _ := s.Evict(); n != 0 {
		t.Fatalf("evicted %d below high water", n)
	}
	cached = append(cached, put(t, s, blobOf(6, 1500), store.Link{Repo: "hub/x", Kind: store.LinkFetched}))
	// 9500 > 9000: evict down to 5000.
	n, freed, err := s.Evict()
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := s.Stats(); b > 5000 {
		t.Fatalf("store at %d bytes after eviction, want <= 5000", b)
	}
	t.Logf("evicted %d blobs, %d bytes", n, freed)
	if !has(s, hosted) {
		t.Fatal("hosted blob evicted")
	}
	for _, i := range []int{2, 3, 4} {
		if has(s, cached[i]) {
			t.Errorf("blob %d (least recently used) survived", i)
		}
	}
	if !has(s, cached[6]) || !has(s, cached[1]) {
		t.Error("recently used blobs evicted before older ones")
	}
	if b, _ := s.Stats(); s.Counters().EvictedBytes != 9500-b || s.Counters().EvictedBytes != freed || s.Counters().Evictions != int64(n) {
		t.Errorf("counters %+v, store at %d", s.Counters(), b)
	}
}

// TestEvictionSparesPinnedAndReferenced: a blob being read, or named by a
// cached manifest, is not deleted; evicting the manifest frees its blobs.
func TestEvictionSparesPinnedAndReferenced(t *testing.T) {
	s := openOpts(t, t.TempDir(), store.Options{MaxSize: 4000, HighWater: 0.2, LowWater: 0.01})
	layer := put(t, s, blobOf(1, 1000), store.Link{Repo: "hub/a", Kind: store.LinkFetched})
	reading := put(t, s, blobOf(2, 1000), store.Link{Repo: "hub/b", Kind: store.LinkFetched})
	m := cachedImage(t, s, "hub/a", false, layer)
	f, err := s.OpenBlob(ctx, reading)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Evict(); err != nil {
		t.Fatal(err)
	}
	if !has(s, reading) {
		t.Fatal("a blob being read was evicted")
	}
	if got, _ := io.ReadAll(f); len(got) != 1000 {
		t.Fatal("reader broken")
	}
	f.Close()
	// The manifest was evicted, and with it the layer it named.
	if has(s, m) || has(s, layer) {
		t.Fatalf("manifest %v layer %v still there", has(s, m), has(s, layer))
	}
	if _, err := s.ResolveTag(ctx, "hub/a", "latest"); !store.IsNotFound(err) {
		t.Fatal("tag of an evicted manifest still resolves")
	}
	if _, _, err := s.Evict(); err != nil || has(s, reading) {
		t.Fatalf("unpinned blob not evicted on the next run: %v", err)
	}
}

func TestEvictionNeverTouchesHostedManifests(t *testing.T) {
	s := openOpts(t, t.TempDir(), store.Options{MaxSize: 1000, HighWater: 0.1, LowWater: 0.05})
	layer := put(t, s, blobOf(1, 800), store.Link{Repo: "local/app", Kind: store.LinkPushed})
	m := cachedImage(t, s, "local/app", true, layer)
	s.Evict()
	if !has(s, layer) || !has(s, m) {
		t.Fatal("hosted content evicted")
	}
}

func TestGCGraceAndReferences(t *testing.T) {
	s := openOpts(t, t.TempDir(), store.Options{})
	used := put(t, s, blobOf(1, 100), store.Link{Repo: "local/app", Kind: store.LinkPushed})
	cachedImage(t, s, "local/app", true, used)
	orphan := put(t, s, blobOf(2, 100), store.Link{Repo: "local/app", Kind: store.LinkPushed})

	// Within the grace period nothing is collected (a push in progress).
	if res, err := s.GC(store.GCOptions{Grace: time.Hour}); err != nil || res.Blobs != 0 {
		t.Fatalf("GC within grace: %+v %v", res, err)
	}
	dry, _ := s.GC(store.GCOptions{DryRun: true})
	if dry.Blobs != 1 || dry.Digests[0] != orphan.String() || !has(s, orphan) {
		t.Fatalf("dry run: %+v", dry)
	}
	res, err := s.GC(store.GCOptions{})
	if err != nil || res.Blobs != 1 || res.Bytes != 100 || has(s, orphan) || !has(s, used) {
		t.Fatalf("GC: %+v %v", res, err)
	}
	if ok, _ := s.HasLink(ctx, "local/app", orphan); ok {
		t.Error("link to a collected blob kept")
	}
	// Deleting the manifest makes its layer garbage.
	ti, _ := s.ResolveTag(ctx, "local/app", "latest")
	if err := s.DeleteManifest(ctx, "local/app", ti.Digest); err != nil {
		t.Fatal(err)
	}
	res, _ = s.GC(store.GCOptions{})
	if res.Blobs != 2 || has(s, used) { // the layer and the manifest's own bytes
		t.Fatalf("after manifest delete: %+v", res)
	}
}

// TestVerifyDamagedDataDir damages a data dir in every way verify knows,
// then checks that verify reports each and that repair leaves a clean
// store that refetches instead of serving bad bytes.
func TestVerifyDamagedDataDir(t *testing.T) {
	dir := t.TempDir()
	s, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ds []store.Digest
	for i := 0; i < 5; i++ {
		ds = append(ds, put(t, s, blobOf(i, 1000)))
	}
	m := cachedImage(t, s, "hub/app", false, ds[0])
	s.Close()
	path := func(d store.Digest) string { return filepath.Join(dir, "blobs", "sha256", d.Hex()[:2], d.Hex()) }
	os.Truncate(path(ds[1]), 10)                       // truncated
	os.WriteFile(path(ds[2]), blobOf(99, 1000), 0o640) // flipped content, same size
	os.Remove(path(ds[3]))                             // missing
	os.Remove(path(m))                                 // a manifest's bytes missing
	os.WriteFile(filepath.Join(dir, "blobs", "sha256", "orphan"), []byte("x"), 0o640)
	os.WriteFile(filepath.Join(dir, "tmp", "blob-stale"), []byte("partial"), 0o640)
	os.WriteFile(filepath.Join(dir, "uploads", "0123456789abcdef0123456789abcdef"), []byte("x"), 0o640)

	s, err = store.Open(dir, store.Options{KeepTmp: true})
	if err != nil {
		t.Fatal(err)
	}
	probs, err := s.Check(ctx, store.CheckOptions{Rehash: true, Orphans: true, Tmp: true})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, p := range probs {
		kinds[p.Kind]++
	}
	want := map[string]int{"wrong_size": 1, "wrong_digest": 1, "missing_file": 2, "orphan_file": 1, "tmp_leftover": 1}
	// Opening the store finishes interrupted work: an upload file without
	// a session is already gone.
	if _, err := os.Stat(filepath.Join(dir, "uploads", "0123456789abcdef0123456789abcdef")); !os.IsNotExist(err) {
		t.Error("orphan upload file not removed at open")
	}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("%s: %d problems, want %d (all: %v)", k, kinds[k], n, probs)
		}
	}
	if err := s.Repair(ctx, probs); err != nil {
		t.Fatal(err)
	}
	probs, _ = s.Check(ctx, store.CheckOptions{Rehash: true, Orphans: true, Tmp: true})
	if len(probs) != 0 {
		t.Fatalf("after repair: %v", probs)
	}
	if _, err := s.ResolveTag(ctx, "hub/app", "latest"); !store.IsNotFound(err) {
		t.Error("tag of a manifest with missing bytes survived repair")
	}
	for _, d := range ds[1:4] {
		if has(s, d) {
			t.Errorf("damaged %s still indexed", d)
		}
	}
	if !has(s, ds[4]) || !has(s, ds[0]) {
		t.Error("repair removed healthy blobs")
	}
	if b, n := s.Stats(); n != 2 || b != 2000 {
		t.Errorf("totals after repair: %d bytes, %d blobs", b, n)
	}
	s.Close()
}

// TestStartupTotalsSurviveRestart: the totals are kept in the index, not
// recounted at start.
func TestStartupTotalsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	s, _ := store.Open(dir, store.Options{})
	put(t, s, blobOf(1, 123))
	put(t, s, blobOf(2, 77))
	s.Close()
	s = storetest.OpenDir(t, dir)
	if b, n := s.Stats(); b != 200 || n != 2 {
		t.Fatalf("totals after restart: %d %d", b, n)
	}
}

// TestBackgroundEviction: commits above high water wake the evictor.
func TestBackgroundEviction(t *testing.T) {
	s, err := store.Open(t.TempDir(), store.Options{MaxSize: 5000, HighWater: 0.8, LowWater: 0.4})
	if err != nil {
		t.Fatal(err)
	}
	defer storetest.CheckAndClose(t, s)
	for i := 0; i < 6; i++ {
		put(t, s, blobOf(i, 1000), store.Link{Repo: "hub/x", Kind: store.LinkFetched})
	}
	// The evictor runs when a write crosses high water (4000 bytes) and
	// goes down to low water (2000); whether it ran after the 5th or the
	// 6th write, the store ends at or under high water.
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := s.Stats()
		if b <= 4000 && s.Counters().Evictions > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store still at %d bytes after %d evictions", b, s.Counters().Evictions)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestEvictThenGCLeavesNoLinks: links go with the blobs they name, so
// eviction followed by a collection leaves no link record behind (the
// cleanup's Check fails on any dangling link).
func TestEvictThenGCLeavesNoLinks(t *testing.T) {
	s := openOpts(t, t.TempDir(), store.Options{MaxSize: 4000, HighWater: 0.1, LowWater: 0.01})
	var layers []store.Digest
	for i := 0; i < 4; i++ {
		layers = append(layers, put(t, s, blobOf(i, 500), store.Link{Repo: "hub/a", Kind: store.LinkFetched}))
	}
	cachedImage(t, s, "hub/a", false, layers...)
	// A second repository confirmed one layer too.
	if err := s.Link(ctx, "hub/b", layers[0], store.LinkConfirmed); err != nil {
		t.Fatal(err)
	}
	if n, _, err := s.Evict(); err != nil || n == 0 {
		t.Fatalf("evict: %d %v", n, err)
	}
	if _, err := s.GC(store.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"hub/a", "hub/b"} {
		for _, l := range layers {
			if ok, _ := s.HasLink(ctx, repo, l); ok && !has(s, l) {
				t.Errorf("%s keeps a link to deleted %s", repo, l)
			}
		}
	}
	if probs, err := s.Check(ctx, store.CheckOptions{}); err != nil || len(probs) != 0 {
		t.Errorf("check: %v %v", probs, err)
	}
}

// TestDanglingLinksReportedAndRepaired: a link naming no stored blob and
// no manifest's reference is reported by Check and removed by Repair; a
// link to a layer a manifest names but nobody pulled yet is fine.
func TestDanglingLinksReportedAndRepaired(t *testing.T) {
	s := openOpts(t, t.TempDir(), store.Options{})
	ghost := store.DigestOf([]byte("never stored"))
	notPulled := store.DigestOf([]byte("named by a manifest, not pulled"))
	cachedImage(t, s, "hub/a", false, notPulled)
	if err := s.Link(ctx, "hub/a", ghost, store.LinkFetched); err != nil {
		t.Fatal(err)
	}
	probs, err := s.Check(ctx, store.CheckOptions{})
	if err != nil || len(probs) != 1 || probs[0].Kind != "dangling_link" || !strings.Contains(probs[0].Detail, ghost.String()) {
		t.Fatalf("check: %v %v", probs, err)
	}
	if err := s.Repair(ctx, probs); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.HasLink(ctx, "hub/a", ghost); ok {
		t.Error("repair kept the dangling link")
	}
	if ok, _ := s.HasLink(ctx, "hub/a", notPulled); !ok {
		t.Error("repair dropped the link of a layer a manifest names")
	}
	// Deleting the manifest drops the link to its unpulled layer.
	ti, _ := s.ResolveTag(ctx, "hub/a", "latest")
	if err := s.DeleteManifest(ctx, "hub/a", ti.Digest); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.HasLink(ctx, "hub/a", notPulled); ok {
		t.Error("manifest delete kept a link to a layer never stored")
	}
}

// TestRepairQuarantinesHostedContent: a damaged layer of a pushed image
// has nothing to refetch from. Repair moves its file to quarantine/ and
// the image stays reported as damaged (never "0 problems") until the
// layer is pushed again; a damaged cached layer is simply dropped.
func TestRepairQuarantinesHostedContent(t *testing.T) {
	dir := t.TempDir()
	s := openOpts(t, dir, store.Options{})
	layerBytes := blobOf(7, 3000)
	layer := put(t, s, layerBytes, store.Link{Repo: "local/app", Kind: store.LinkPushed})
	m := cachedImage(t, s, "local/app", true, layer)
	if err := s.Link(ctx, "local/app", m, store.LinkPushed); err != nil {
		t.Fatal(err)
	}
	cachedLayer := put(t, s, blobOf(8, 2000), store.Link{Repo: "hub/x", Kind: store.LinkFetched})
	cachedImage(t, s, "hub/x", false, cachedLayer)
	for _, d := range []store.Digest{layer, cachedLayer} {
		p := filepath.Join(dir, "blobs", "sha256", d.Hex()[:2], d.Hex())
		if err := os.WriteFile(p, bytes.Repeat([]byte("x"), len(layerBytes)-1000*boolInt(d == cachedLayer)), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	probs, err := s.Check(ctx, store.CheckOptions{Rehash: true})
	if err != nil || len(probs) != 2 {
		t.Fatalf("check: %v %v", probs, err)
	}
	if err := s.Repair(ctx, probs); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "quarantine", "sha256-"+layer.Hex())); err != nil {
		t.Errorf("the hosted layer's file is not in quarantine: %v", err)
	}
	left, err := s.Check(ctx, store.CheckOptions{Rehash: true})
	if err != nil || len(left) != 1 || left[0].Kind != "damaged_image" || !strings.Contains(left[0].Detail, layer.String()) {
		t.Fatalf("after repair: %v %v (want the pushed image reported damaged)", left, err)
	}
	if dmg, _ := s.DamagedImages(ctx); len(dmg) != 1 || dmg[0] != "local/app@"+m.String() {
		t.Errorf("DamagedImages = %v", dmg)
	}
	if _, err := s.ResolveTag(ctx, "local/app", "latest"); err != nil {
		t.Errorf("the damaged image's tag was dropped: %v", err)
	}
	if _, err := s.StatBlob(ctx, cachedLayer); !store.IsNotFound(err) {
		t.Errorf("the damaged cached layer was kept: %v", err)
	}
	if err := s.Repair(ctx, left); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.Check(ctx, store.CheckOptions{}); len(again) != 1 {
		t.Errorf("a second repair hid the damage: %v", again)
	}
	// Pushed again: whole.
	put(t, s, layerBytes, store.Link{Repo: "local/app", Kind: store.LinkPushed})
	if after, _ := s.Check(ctx, store.CheckOptions{Rehash: true}); len(after) != 0 {
		t.Errorf("after the push: %v", after)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestTempBytesCountTowardMaxSize: the bytes of a download in progress in
// tmp/ count toward max_size (an endless upstream blob makes room for
// itself by evicting cached content, it does not overflow the disk past
// max_size unnoticed), and leave the count when the writer commits or
// closes.
func TestTempBytesCountTowardMaxSize(t *testing.T) {
	s := openOpts(t, t.TempDir(), store.Options{MaxSize: 10_000, HighWater: 0.9, LowWater: 0.5})
	for i := 0; i < 6; i++ {
		put(t, s, blobOf(i, 1000), store.Link{Repo: "hub/x", Kind: store.LinkFetched})
	}
	w, err := s.NewBlobWriter(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 3000)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(make([]byte, 1000), 3500); err != nil {
		t.Fatal(err)
	}
	if got := s.TempBytes(); got != 4500 {
		t.Fatalf("TempBytes = %d, want 4500", got)
	}
	// 6000 stored + 4500 in tmp > 9000: evict down to 5000 in all.
	if _, _, err := s.Evict(); err != nil {
		t.Fatal(err)
	}
	if b, _ := s.Stats(); b+s.TempBytes() > 5000 {
		t.Fatalf("stored %d + tmp %d after eviction, want <= 5000", b, s.TempBytes())
	}
	w.Close()
	if got := s.TempBytes(); got != 0 {
		t.Fatalf("TempBytes after Close = %d", got)
	}
	b := blobOf(9, 700)
	w, _ = s.NewBlobWriter(ctx, "")
	w.Write(b)
	if _, err := w.Commit(ctx, store.DigestOf(b), int64(len(b)), store.Link{Repo: "hub/x", Kind: store.LinkFetched}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if got := s.TempBytes(); got != 0 {
		t.Fatalf("TempBytes after Commit = %d", got)
	}
}
