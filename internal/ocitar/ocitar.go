// Package ocitar reads and writes the image tarballs of berth export and
// berth import: an OCI image layout packed in a tar file (written and
// read), and docker save's format (read). It knows nothing of registries.
package ocitar

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// Annotations that carry an image's name in an OCI layout: the OCI one
// and containerd's (ctr import reads it).
const (
	annotationRefName    = "org.opencontainers.image.ref.name"
	annotationContainerd = "io.containerd.image.name"
)

// Writer builds an OCI image layout in a temporary directory; Finish packs
// it into a tar file. Close removes the directory.
type Writer struct {
	dir string
	p   layout.Path
}

// NewWriter starts an empty layout.
func NewWriter() (*Writer, error) {
	dir, err := os.MkdirTemp("", "berth-export-")
	if err != nil {
		return nil, err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &Writer{dir: dir, p: p}, nil
}

// WriteBlob stores blob h (a layer, a config or a manifest) from rc,
// which it closes.
func (w *Writer) WriteBlob(h v1.Hash, rc io.ReadCloser) error {
	return w.p.WriteBlob(h, rc)
}

// AddImage names manifest desc (whose blobs were written) refName
// ("name:tag" or "name@digest") in the layout's index.
func (w *Writer) AddImage(desc v1.Descriptor, refName string) error {
	desc.Annotations = map[string]string{annotationRefName: refName, annotationContainerd: refName}
	return w.p.AppendDescriptor(desc)
}

// Finish packs the layout into out (entries in sorted order, times zeroed,
// so the same images give the same bytes) and syncs it.
func (w *Writer) Finish(out string) error {
	return pack(w.dir, out)
}

// Close removes the temporary layout.
func (w *Writer) Close() error { return os.RemoveAll(w.dir) }

func pack(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	var paths []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			paths = append(paths, p)
		}
		return err
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	tw := tar.NewWriter(f)
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name, _ = filepath.Rel(dir, p)
		hdr.ModTime = time.Unix(0, 0)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			if err := copyFile(tw, p); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

func copyFile(w io.Writer, path string) error {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	_, err = io.Copy(w, src)
	return err
}

// unpack extracts a tar file into dir, refusing entries that leave it.
func unpack(file, dir string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		clean := filepath.Clean(hdr.Name)
		if !filepath.IsLocal(clean) {
			return fmt.Errorf("%s: entry %q leaves the archive", file, hdr.Name)
		}
		target := filepath.Join(dir, clean)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			out.Close()
			if err != nil {
				return err
			}
		}
	}
}

// Entry is one named image of an archive: an image or an index, with
// every blob and manifest digest already checked.
type Entry struct {
	Name  string // "name:tag" or "name@digest", as the archive names it
	Image v1.Image
	Index v1.ImageIndex
}

// Archive is an image tarball opened for reading. Close it when done.
type Archive struct {
	Entries []Entry
	dir     string
}

// ErrUnnamed is returned by Open for an OCI layout manifest without an
// image name annotation: berth cannot know where to import it.
var ErrUnnamed = errors.New("no image name annotation (org.opencontainers.image.ref.name = name:tag)")

// Open reads an OCI layout tarball or a docker save tarball and checks
// every image in it (validate.Image / validate.Index: digests and sizes)
// before returning; an archive with one bad image is refused whole.
func Open(file string) (*Archive, error) {
	dir, err := os.MkdirTemp("", "berth-import-")
	if err != nil {
		return nil, err
	}
	a := &Archive{dir: dir}
	if err := a.read(file); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// Close removes the unpacked files.
func (a *Archive) Close() error { return os.RemoveAll(a.dir) }

func (a *Archive) read(file string) error {
	if err := unpack(file, a.dir); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(a.dir, "index.json")); err != nil {
		return a.readDockerSave(file)
	}
	p, err := layout.FromPath(a.dir)
	if err != nil {
		return err
	}
	ii, err := p.ImageIndex()
	if err != nil {
		return err
	}
	im, err := ii.IndexManifest()
	if err != nil {
		return err
	}
	for _, d := range im.Manifests {
		e := Entry{Name: d.Annotations[annotationContainerd]}
		if e.Name == "" {
			e.Name = d.Annotations[annotationRefName]
		}
		if e.Name == "" || !strings.ContainsAny(e.Name, ":@") {
			return fmt.Errorf("manifest %s: %w", d.Digest, ErrUnnamed)
		}
		if d.MediaType.IsIndex() {
			if e.Index, err = ii.ImageIndex(d.Digest); err == nil {
				err = validate.Index(e.Index)
			}
		} else if e.Image, err = ii.Image(d.Digest); err == nil {
			err = validate.Image(e.Image)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", e.Name, err)
		}
		a.Entries = append(a.Entries, e)
	}
	return nil
}

// readDockerSave reads docker save's manifest.json and its RepoTags.
func (a *Archive) readDockerSave(file string) error {
	manifest, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(file) })
	if err != nil {
		return fmt.Errorf("neither an OCI layout nor a docker save tarball: %w", err)
	}
	for _, m := range manifest {
		for _, t := range m.RepoTags {
			tag, err := name.NewTag(t)
			if err != nil {
				return err
			}
			img, err := tarball.ImageFromPath(file, &tag)
			if err != nil {
				return err
			}
			if err := validate.Image(img); err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			a.Entries = append(a.Entries, Entry{Name: tag.RepositoryStr() + ":" + tag.TagStr(), Image: img})
		}
	}
	return nil
}

// AddIndex writes idx (its manifests and their blobs) and names it
// refName in the layout's index.
func (w *Writer) AddIndex(idx v1.ImageIndex, refName string) error {
	return w.p.AppendIndex(idx, layout.WithAnnotations(map[string]string{annotationRefName: refName, annotationContainerd: refName}))
}
