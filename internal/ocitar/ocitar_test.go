package ocitar

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// writeImage writes img's config, layers and manifest to w and names it.
func writeImage(t *testing.T, w *Writer, img v1.Image, ref string) v1.Hash {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, _ := l.Digest()
		rc, _ := l.Compressed()
		if err := w.WriteBlob(d, rc); err != nil {
			t.Fatal(err)
		}
	}
	cfg, _ := img.RawConfigFile()
	cd, _ := img.ConfigName()
	if err := w.WriteBlob(cd, io.NopCloser(bytes.NewReader(cfg))); err != nil {
		t.Fatal(err)
	}
	raw, _ := img.RawManifest()
	desc, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteBlob(desc.Digest, io.NopCloser(bytes.NewReader(raw))); err != nil {
		t.Fatal(err)
	}
	if err := w.AddImage(*desc, ref); err != nil {
		t.Fatal(err)
	}
	return desc.Digest
}

// TestRoundTrip: what Writer packs, Open reads back with names and
// digests, and the same images pack to the same bytes.
func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	a, _ := random.Image(1024, 2)
	b, _ := random.Image(2048, 1)
	pack := func(out string) (v1.Hash, v1.Hash) {
		w, err := NewWriter()
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		da := writeImage(t, w, a, "team/a:v1")
		db := writeImage(t, w, b, "team/b@sha256:"+strings.Repeat("0", 64))
		if err := w.Finish(out); err != nil {
			t.Fatal(err)
		}
		return da, db
	}
	one, two := filepath.Join(dir, "1.tar"), filepath.Join(dir, "2.tar")
	da, db := pack(one)
	pack(two)
	b1, _ := os.ReadFile(one)
	b2, _ := os.ReadFile(two)
	if !bytes.Equal(b1, b2) {
		t.Error("the same images packed to different bytes")
	}
	arc, err := Open(one)
	if err != nil {
		t.Fatal(err)
	}
	defer arc.Close()
	if len(arc.Entries) != 2 {
		t.Fatalf("%d entries, want 2", len(arc.Entries))
	}
	for i, want := range []struct {
		name string
		d    v1.Hash
	}{{"team/a:v1", da}, {"team/b@sha256:" + strings.Repeat("0", 64), db}} {
		e := arc.Entries[i]
		got, _ := e.Image.Digest()
		if e.Name != want.name || got != want.d {
			t.Errorf("entry %d: %s %s, want %s %s", i, e.Name, got, want.name, want.d)
		}
	}
}

// TestOpenRefusesBadArchives: a corrupt blob, an entry that leaves the
// directory, and an unnamed manifest are refused with the reason.
func TestOpenRefusesBadArchives(t *testing.T) {
	dir := t.TempDir()
	img, _ := random.Image(1024, 1)

	// A layer whose bytes do not match its digest.
	w, _ := NewWriter()
	defer w.Close()
	writeImage(t, w, img, "x:1")
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	os.WriteFile(filepath.Join(w.dir, "blobs", ld.Algorithm, ld.Hex), []byte("not the layer"), 0o644)
	corrupt := filepath.Join(dir, "corrupt.tar")
	if err := w.Finish(corrupt); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(corrupt); err == nil || !strings.Contains(err.Error(), "x:1") {
		t.Errorf("corrupt layer: %v", err)
	}

	// An entry named ../escape.
	evil := filepath.Join(dir, "evil.tar")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "../escape", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
	tw.Write([]byte("x"))
	tw.Close()
	os.WriteFile(evil, buf.Bytes(), 0o644)
	if _, err := Open(evil); err == nil || !strings.Contains(err.Error(), "leaves the archive") {
		t.Errorf("escaping entry: %v", err)
	}
	if _, err := os.Stat(filepath.Join(os.TempDir(), "escape")); err == nil {
		t.Error("an entry was written outside the directory")
	}

	// A manifest without a name.
	w2, _ := NewWriter()
	defer w2.Close()
	writeImage(t, w2, img, "nameless") // no ":" or "@": not a reference
	unnamed := filepath.Join(dir, "unnamed.tar")
	w2.Finish(unnamed)
	if _, err := Open(unnamed); !errors.Is(err, ErrUnnamed) {
		t.Errorf("unnamed manifest: %v", err)
	}
}

// TestOpenDockerSave: docker save's format is read with its RepoTags.
func TestOpenDockerSave(t *testing.T) {
	img, _ := random.Image(512, 2)
	tag, _ := name.NewTag("alpine:3")
	file := filepath.Join(t.TempDir(), "save.tar")
	if err := tarball.WriteToFile(file, tag, img); err != nil {
		t.Fatal(err)
	}
	arc, err := Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer arc.Close()
	want, _ := img.Digest()
	if len(arc.Entries) != 1 || arc.Entries[0].Name != "library/alpine:3" {
		t.Fatalf("entries %+v", arc.Entries)
	}
	if got, _ := arc.Entries[0].Image.Digest(); got != want {
		t.Errorf("digest %s, want %s", got, want)
	}
}
