package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/berth-registry/berth/internal/ocitar"
	"github.com/berth-registry/berth/server"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/urfave/cli/v2"
)

// runExport writes the images as an OCI image layout tarball, pulling
// them through berth (which fetches what it has not cached).
func runExport(c *cli.Context, out io.Writer) error {
	if c.NArg() == 0 || c.String("out") == "" {
		return errors.New("export needs --out FILE.tar and at least one IMAGE")
	}
	if err := writableDir(filepath.Dir(c.String("out"))); err != nil {
		return fmt.Errorf("export: cannot write %s: %w", c.String("out"), err)
	}
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	base, ropts := registryTarget(c, cfg)
	switch c.String("format") {
	case "oci":
	case "docker-archive":
		return exportDockerArchive(c, cfg, out, base, ropts)
	default:
		return fmt.Errorf("export: --format %q: want oci or docker-archive", c.String("format"))
	}
	p, err := ocitar.NewWriter()
	if err != nil {
		return err
	}
	defer p.Close()
	for _, img := range c.Args().Slice() {
		imgName, tag, ref, err := exportRef(base, img)
		if err != nil {
			return err
		}
		desc, err := remote.Get(ref, ropts...)
		if err != nil {
			return exportFailed(c, cfg, img, err)
		}
		// Collect the manifests and blobs first, so the bar knows the total.
		var plan exportPlan
		if err := plan.add(ropts, ref, desc); err != nil {
			return fmt.Errorf("export %s: %w", img, err)
		}
		pr := newProgress(out, img, plan.total)
		for _, b := range plan.blobs {
			rc, err := b.open()
			if err != nil {
				return fmt.Errorf("export %s: %w", img, err)
			}
			if err := p.WriteBlob(b.digest, &countingReader{ReadCloser: rc, p: pr}); err != nil {
				return fmt.Errorf("export %s: blob %s: %w", img, b.digest, err)
			}
			pr.object("blob "+b.digest.String(), b.size)
		}
		for _, m := range plan.manifests {
			if err := p.WriteBlob(m.digest, io.NopCloser(bytes.NewReader(m.raw))); err != nil {
				return err
			}
		}
		pr.finish()
		refName := imgName + refSep(tag) + tag
		if err := p.AddImage(v1.Descriptor{MediaType: desc.MediaType, Size: desc.Size, Digest: desc.Digest}, refName); err != nil {
			return err
		}
		fmt.Fprintf(out, "exported %s (%s, %s)\n", img, desc.Digest, humanSize(plan.total))
	}
	if err := p.Finish(c.String("out")); err != nil {
		return err
	}
	st, _ := os.Stat(c.String("out"))
	fmt.Fprintf(out, "wrote %s (%s)\n", c.String("out"), humanSize(st.Size()))
	return nil
}

// exportPlan lists what an export writes: blobs (with sizes, for the
// progress bar) and manifests (children before parents).
type exportPlan struct {
	blobs     []exportBlob
	manifests []exportManifest
	total     int64
	seen      map[v1.Hash]bool
}

type exportBlob struct {
	digest v1.Hash
	size   int64
	open   func() (io.ReadCloser, error)
}

type exportManifest struct {
	digest v1.Hash
	raw    []byte
}

func (e *exportPlan) add(ropts []remote.Option, ref name.Reference, desc *remote.Descriptor) error {
	if e.seen == nil {
		e.seen = map[v1.Hash]bool{}
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return err
		}
		for _, child := range im.Manifests {
			cref := ref.Context().Digest(child.Digest.String())
			cdesc, err := remote.Get(cref, ropts...)
			if err != nil {
				return err
			}
			if err := e.add(ropts, cref, cdesc); err != nil {
				return err
			}
		}
	} else {
		img, err := desc.Image()
		if err != nil {
			return err
		}
		m, err := img.Manifest()
		if err != nil {
			return err
		}
		rawCfg, err := img.RawConfigFile()
		if err != nil {
			return err
		}
		if !e.seen[m.Config.Digest] {
			e.seen[m.Config.Digest] = true
			e.blobs = append(e.blobs, exportBlob{m.Config.Digest, int64(len(rawCfg)), func() (io.ReadCloser, error) {
				return io.NopCloser(bytes.NewReader(rawCfg)), nil
			}})
			e.total += int64(len(rawCfg))
		}
		for _, l := range m.Layers {
			if l.MediaType.IsDistributable() && !e.seen[l.Digest] {
				e.seen[l.Digest] = true
				layer, err := img.LayerByDigest(l.Digest)
				if err != nil {
					return err
				}
				e.blobs = append(e.blobs, exportBlob{l.Digest, l.Size, layer.Compressed})
				e.total += l.Size
			}
		}
	}
	e.manifests = append(e.manifests, exportManifest{desc.Digest, desc.Manifest})
	return nil
}

func refSep(ref string) string {
	if strings.Contains(ref, ":") {
		return "@"
	}
	return ":"
}

// exportCommand: berth export, write images as an OCI image layout tarball.
func exportCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write images as an OCI image layout tarball, or a docker save tarball (fetching what is not cached)",
		ArgsUsage: "IMAGE...",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "`FILE.tar` to write"},
			&cli.StringFlag{Name: "format", Value: "oci", Usage: "`oci` (an OCI image layout: every platform, digests kept) or docker-archive (docker load, skopeo docker-archive:; one platform, manifest digests may change)"},
			&cli.StringFlag{Name: "platform", Value: "linux/amd64", Usage: "`os/arch` of multi-platform images for docker-archive"},
			&cli.StringFlag{Name: "creds", Usage: "`user:password` for protected repositories"},
		}, serverFlags...),
		Action: func(c *cli.Context) error { return runExport(c, stdout) },
	}
}

// exportFailed explains a failed fetch of img from berth: most often no
// berth answers where the command looked.
func exportFailed(c *cli.Context, cfg *Config, img string, err error) error {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return notRunning(c, cfg, "export", err)
	}
	return fmt.Errorf("export %s: %w", img, explainRegistryErr(err))
}

// exportDockerArchive writes the images as one docker save tarball (for
// docker load and skopeo's docker-archive:), one platform of each. Docker
// stores the config and layers and makes its own manifest on load, so
// manifest digests may differ from the registry's; layer and config
// digests do not.
func exportDockerArchive(c *cli.Context, cfg *Config, out io.Writer, base string, ropts []remote.Option) error {
	osName, arch, ok := strings.Cut(c.String("platform"), "/")
	if !ok {
		return fmt.Errorf("export: --platform %q: want os/arch", c.String("platform"))
	}
	refs := map[name.Reference]v1.Image{}
	for _, img := range c.Args().Slice() {
		imgName, tag, ref, err := exportRef(base, img)
		if err != nil {
			return err
		}
		image, err := remote.Image(ref, append(slices.Clone(ropts), remote.WithPlatform(v1.Platform{OS: osName, Architecture: arch}))...)
		if err != nil {
			return exportFailed(c, cfg, img, err)
		}
		if strings.Contains(tag, ":") {
			tag = "sha256-" + strings.TrimPrefix(tag, "sha256:") // docker save names images by tag
		}
		named, err := name.NewTag(imgName + ":" + tag)
		if err != nil {
			return err
		}
		refs[named] = image
	}
	f, err := os.CreateTemp(filepath.Dir(c.String("out")), ".berth-export-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := tarball.MultiRefWrite(refs, f); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), c.String("out")); err != nil {
		return err
	}
	st, _ := os.Stat(c.String("out"))
	fmt.Fprintf(out, "wrote %s (%s, docker save format, %s; manifest digests may differ after docker load)\n",
		c.String("out"), humanSize(st.Size()), c.String("platform"))
	return nil
}

// exportRef is image img ("name[:tag][@digest]") at berth base: its name,
// its tag or digest, and the reference to fetch.
func exportRef(base, img string) (imgName, tag string, ref name.Reference, err error) {
	if imgName, tag, err = server.ParseImageRef(img); err != nil {
		return "", "", nil, err
	}
	ref, err = berthRef(base, imgName+refSep(tag)+tag)
	return imgName, tag, ref, err
}

// writableDir checks, before anything is fetched, that a file can be made
// in dir.
func writableDir(dir string) error {
	f, err := os.CreateTemp(dir, ".berth-check-*")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}
