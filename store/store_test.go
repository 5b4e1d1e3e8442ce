package store_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/store/storetest"
)

var ctx = context.Background()

func put(t *testing.T, s *store.Store, b []byte, links ...store.Link) store.Digest {
	t.Helper()
	d := store.DigestOf(b)
	if _, err := s.PutBlob(ctx, d, b, links...); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestBlobRoundTrip(t *testing.T) {
	s := storetest.Open(t)
	data := bytes.Repeat([]byte("berth"), 1000)
	d := put(t, s, data, store.Link{Repo: "hub/library/a", Kind: store.LinkFetched})

	f, err := s.OpenBlob(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info := f.Info
	got, _ := io.ReadAll(f)
	if !bytes.Equal(got, data) || info.Size != int64(len(data)) {
		t.Fatalf("read %d bytes (info %d), want %d", len(got), info.Size, len(data))
	}
	if want := filepath.Join(s.Dir(), "blobs", "sha256", d.Hex()[:2], d.Hex()); f.Name() != want {
		t.Errorf("file %s, want %s", f.Name(), want)
	}
	if ok, _ := s.HasLink(ctx, "hub/library/a", d); !ok {
		t.Error("link missing")
	}
	if ok, _ := s.HasLink(ctx, "hub/library/b", d); ok {
		t.Error("blob linked to a repository that never held it")
	}
	if b, n := s.Stats(); b != int64(len(data)) || n != 1 {
		t.Errorf("stats = %d bytes, %d blobs", b, n)
	}
}

func TestCommitRejectsWrongContent(t *testing.T) {
	s := storetest.Open(t)
	good := []byte("good content")
	d := store.DigestOf(good)
	for _, tc := range []struct {
		name string
		body []byte
		size int64
		want error
	}{
		{"digest", []byte("evil content"), -1, store.ErrDigestMismatch},
		{"truncated", good[:5], int64(len(good)), store.ErrSizeMismatch},
		{"too long", append(good, 'x'), int64(len(good)), store.ErrSizeMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := s.NewBlobWriter(ctx, "sha256")
			if err != nil {
				t.Fatal(err)
			}
			w.Write(tc.body)
			if _, err := w.Commit(ctx, d, tc.size); !errors.Is(err, tc.want) {
				t.Fatalf("Commit: %v, want %v", err, tc.want)
			}
			w.Close()
			if _, err := s.StatBlob(ctx, d); !store.IsNotFound(err) {
				t.Fatalf("corrupt blob was indexed: %v", err)
			}
		})
	}
	// The store stays usable: the right bytes are accepted afterwards.
	put(t, s, good)
}

func TestSHA512(t *testing.T) {
	s := storetest.Open(t)
	data := []byte("sha512 content")
	sum := sha512.Sum512(data)
	d := store.MustDigest(fmt.Sprintf("sha512:%x", sum))
	// Written as sha256 (the upload default), committed as sha512: rehashed.
	w, _ := s.NewBlobWriter(ctx, "")
	w.Write(data)
	if _, err := w.Commit(ctx, d, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := os.Stat(filepath.Join(s.Dir(), "blobs", "sha512", d.Hex()[:2], d.Hex())); err != nil {
		t.Fatal(err)
	}
}

func TestCommitTwiceStoresOnce(t *testing.T) {
	s := storetest.Open(t)
	data := []byte("shared layer")
	d := put(t, s, data, store.Link{Repo: "h/a", Kind: store.LinkPushed})
	put(t, s, data, store.Link{Repo: "h/b", Kind: store.LinkPushed})
	if _, n := s.Stats(); n != 1 {
		t.Fatalf("%d blobs, want 1", n)
	}
	for _, r := range []string{"h/a", "h/b"} {
		if ok, _ := s.HasLink(ctx, r, d); !ok {
			t.Errorf("%s: no link", r)
		}
	}
}

func TestOpenEmptiesTmp(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tmp"), 0o750)
	os.WriteFile(filepath.Join(dir, "tmp", "blob-leftover"), []byte("partial"), 0o640)
	s := storetest.OpenDir(t, dir)
	if entries, _ := os.ReadDir(filepath.Join(s.Dir(), "tmp")); len(entries) != 0 {
		t.Fatalf("tmp not emptied: %v", entries)
	}
}

func TestDamagedFileIsNeverServed(t *testing.T) {
	dir := t.TempDir()
	s, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := put(t, s, []byte("0123456789"))
	path := filepath.Join(dir, "blobs", "sha256", d.Hex()[:2], d.Hex())
	os.Truncate(path, 4)
	if _, err := s.OpenBlob(ctx, d); !store.IsNotFound(err) {
		t.Fatalf("truncated blob served: %v", err)
	}
	probs, _ := s.Check(ctx, store.CheckOptions{})
	if len(probs) != 1 || probs[0].Kind != "wrong_size" {
		t.Fatalf("check = %v", probs)
	}
	os.WriteFile(path, []byte("012345678X"), 0o640) // same size, flipped byte
	probs, _ = s.Check(ctx, store.CheckOptions{Rehash: true})
	if len(probs) != 1 || probs[0].Kind != "wrong_digest" {
		t.Fatalf("check = %v", probs)
	}
	os.Remove(path)
	if _, err := s.OpenBlob(ctx, d); !store.IsNotFound(err) {
		t.Fatalf("missing blob served: %v", err)
	}
}

func TestManifestsAndTags(t *testing.T) {
	s := storetest.Open(t)
	layer := put(t, s, []byte("layer"))
	body := []byte(`{"schemaVersion":2}`)
	m := store.Manifest{Digest: store.DigestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}
	if err := s.PutManifest(ctx, "hub/library/nginx", m, "latest", []store.Digest{layer}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutManifest(ctx, "hub/library/nginx", m, "1.27", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.PutManifest(ctx, "hub/library/redis", m, "7", nil); err != nil {
		t.Fatal(err)
	}
	ti, err := s.ResolveTag(ctx, "hub/library/nginx", "latest")
	if err != nil || ti.Digest != m.Digest {
		t.Fatalf("ResolveTag = %v, %v", ti, err)
	}
	got, err := s.GetManifest(ctx, "hub/library/nginx", m.Digest)
	if err != nil || !bytes.Equal(got.Body, body) || got.MediaType != m.MediaType {
		t.Fatalf("GetManifest = %+v, %v", got, err)
	}
	if _, err := s.GetManifest(ctx, "hub/library/other", m.Digest); !store.IsNotFound(err) {
		t.Fatalf("manifest leaked to another repository: %v", err)
	}
	if ok, _ := s.HasLink(ctx, "hub/library/nginx", layer); !ok {
		t.Error("referenced layer not linked")
	}
	tags, _ := s.Tags(ctx, "hub/library/nginx")
	if fmt.Sprint(tags) != "[1.27 latest]" {
		t.Errorf("tags = %v", tags)
	}
	repos, _ := s.Repositories(ctx, "hub/")
	if fmt.Sprint(repos) != "[hub/library/nginx hub/library/redis]" {
		t.Errorf("repositories = %v", repos)
	}
	if err := s.DeleteTag(ctx, "hub/library/nginx", "latest"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ResolveTag(ctx, "hub/library/nginx", "latest"); !store.IsNotFound(err) {
		t.Fatalf("deleted tag resolves: %v", err)
	}
}

func TestReadWhileWriting(t *testing.T) {
	s := storetest.Open(t)
	w, err := s.NewBlobWriter(ctx, "sha256")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write([]byte("hello "))
	buf := make([]byte, 6)
	if n, err := w.ReadAt(buf, 0); n != 6 || err != nil || string(buf) != "hello " {
		t.Fatalf("ReadAt = %d %v %q", n, err, buf)
	}
	w.Write([]byte("world"))
	data := []byte("hello world")
	if _, err := w.Commit(ctx, store.DigestOf(data), 11); err != nil {
		t.Fatal(err)
	}
	// Still readable after the rename.
	buf = make([]byte, 5)
	if n, _ := w.ReadAt(buf, 6); n != 5 || string(buf) != "world" {
		t.Fatalf("ReadAt after commit = %q", buf)
	}
}

// TestOpenReaderFollowsTheFile: a reader opened before the commit keeps
// reading across the rename, one opened after it finds the file in
// blobs/, and none can be opened once the writer is closed.
func TestOpenReaderFollowsTheFile(t *testing.T) {
	s := storetest.Open(t)
	w, err := s.NewBlobWriter(ctx, "sha256")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("hello "))
	before, err := w.OpenReader()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	w.Write([]byte("world"))
	data := []byte("hello world")
	if _, err := w.Commit(ctx, store.DigestOf(data), 11); err != nil {
		t.Fatal(err)
	}
	after, err := w.OpenReader()
	if err != nil {
		t.Fatalf("OpenReader after commit: %v", err)
	}
	defer after.Close()
	for name, f := range map[string]*os.File{"before": before, "after": after} {
		if got, err := io.ReadAll(f); err != nil || string(got) != "hello world" {
			t.Errorf("reader opened %s commit read %q, %v", name, got, err)
		}
	}
	w.Close()
	if f, err := w.OpenReader(); err == nil {
		f.Close()
		t.Error("OpenReader after Close succeeded")
	}
}

// Bytes written out of order with WriteAt become the blob as Absorb takes
// them in; an absorb past the written bytes fails.
func TestBlobWriterOutOfOrder(t *testing.T) {
	s := storetest.Open(t)
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	d := store.DigestOf(data)
	w, err := s.NewBlobWriter(ctx, "sha256")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// The last quarter, then the second, then the first by Write, then
	// the third.
	q := len(data) / 4
	for _, part := range []int{3, 1} {
		if _, err := w.WriteAt(data[part*q:(part+1)*q], int64(part*q)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Write(data[:q]); err != nil {
		t.Fatal(err)
	}
	if err := w.Absorb(int64(2 * q)); err != nil || w.Size() != int64(2*q) {
		t.Fatalf("absorb to %d: size %d, %v", 2*q, w.Size(), err)
	}
	if err := w.Verify(d, -1); !errors.Is(err, store.ErrDigestMismatch) {
		t.Fatalf("half a blob verified: %v", err)
	}
	if _, err := w.WriteAt(data[2*q:3*q], int64(2*q)); err != nil {
		t.Fatal(err)
	}
	if err := w.Absorb(int64(q)); err != nil || w.Size() != int64(2*q) {
		t.Fatalf("absorb backwards changed the size to %d (%v)", w.Size(), err)
	}
	if err := w.Absorb(int64(len(data) + 1)); err == nil {
		t.Fatal("absorbed a byte never written")
	}
	w2, _ := s.NewBlobWriter(ctx, "sha256")
	defer w2.Close()
	w2.WriteAt(data[q:], int64(q))
	w2.Write(data[:q])
	if err := w2.Absorb(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if _, err := w2.Commit(ctx, d, int64(len(data)), store.Link{Repo: "hub/x", Kind: store.LinkFetched}); err != nil {
		t.Fatal(err)
	}
	f, err := s.OpenBlob(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, _ := io.ReadAll(f); !bytes.Equal(got, data) {
		t.Fatal("stored bytes differ")
	}
}
