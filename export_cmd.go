package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/berth-registry/berth/internal/ocitar"
	"github.com/berth-registry/berth/server"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/urfave/cli/v2"
)

// runExport writes the images as an OCI image layout tarball, pulling
// them through berth (which fetches what it has not cached).
func runExport(c *cli.Context, out io.Writer) error {
	if c.NArg() == 0 || c.String("out") == "" {
		return errors.New("export needs --out FILE.tar and at least one IMAGE")
	}
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	base, ropts := registryTarget(c, cfg)
	p, err := ocitar.NewWriter()
	if err != nil {
		return err
	}
	defer p.Close()
	for _, img := range c.Args().Slice() {
		imgName, tag, err := server.ParseImageRef(img)
		if err != nil {
			return err
		}
		ref, err := berthRef(base, imgName+refSep(tag)+tag)
		if err != nil {
			return err
		}
		desc, err := remote.Get(ref, ropts...)
		if err != nil {
			return fmt.Errorf("export %s: %w", img, explainRegistryErr(err))
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
		Usage:     "write images as an OCI image layout tarball (fetching what is not cached)",
		ArgsUsage: "IMAGE...",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "`FILE.tar` to write"},
			&cli.StringFlag{Name: "creds", Usage: "`user:password` for protected repositories"},
		}, serverFlags...),
		Action: func(c *cli.Context) error { return runExport(c, stdout) },
	}
}
