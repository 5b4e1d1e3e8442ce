// Command mkimage builds berth's container image without a Docker daemon:
// one image per platform from the static binaries make built, an index of
// them, written as an OCI image layout tarball and, with -push, to a
// registry. The image runs as a non-root user, keeps its data in the
// /var/lib/berth volume, listens on 5000 and serves a Docker Hub proxy
// with the config it carries (mount another on /etc/berth/berth.toml).
//
//	go run ./scripts/mkimage -version v1.2.3 -out build/berth-image.tar \
//	    linux/amd64=build/berth-linux-amd64 linux/arm64=build/berth-linux-arm64
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/ocitar"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// uid is the user berth runs as in the image (no shell, no home).
const uid = 65532

// defaultConfig is /etc/berth/berth.toml in the image.
const defaultConfig = `# berth in a container: a Docker Hub pull-through cache on :5000.
# Mount your own config over this file; keep data_dir on the volume.
listen = ":5000"
data_dir = "/var/lib/berth"
admin_listen = "unix:/var/lib/berth/admin.sock"

[[repository]]
name = "dockerhub"
kind = "proxy"
url = "https://registry-1.docker.io"
`

func main() {
	version := flag.String("version", "dev", "version label")
	source := flag.String("source", "https://github.com/berth-registry/berth", "source label")
	out := flag.String("out", "", "OCI layout tarball to write")
	push := flag.String("push", "", "also push the index to this reference (registry/repository:tag)")
	insecure := flag.Bool("insecure", false, "push over plain HTTP")
	flag.Parse()
	if flag.NArg() == 0 || (*out == "" && *push == "") {
		log.Fatal("usage: mkimage [-version V] [-out FILE.tar] [-push REF [-insecure]] os/arch=BINARY...")
	}
	idx := v1.ImageIndex(empty.Index)
	idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	for _, arg := range flag.Args() {
		platform, bin, ok := strings.Cut(arg, "=")
		osName, arch, ok2 := strings.Cut(platform, "/")
		if !ok || !ok2 {
			log.Fatalf("%q: want os/arch=BINARY", arg)
		}
		img, err := image(bin, osName, arch, *version, *source)
		if err != nil {
			log.Fatalf("%s: %v", platform, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: osName, Architecture: arch}}})
	}
	d, err := idx.Digest()
	if err != nil {
		log.Fatal(err)
	}
	if *out != "" {
		w, err := ocitar.NewWriter()
		if err != nil {
			log.Fatal(err)
		}
		defer w.Close()
		if err := w.AddIndex(idx, "berth:"+*version); err != nil {
			log.Fatal(err)
		}
		if err := w.Finish(*out); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("wrote %s (%s)\n", *out, d)
	}
	if *push != "" {
		var opts []name.Option
		if *insecure {
			opts = append(opts, name.Insecure)
		}
		ref, err := name.ParseReference(*push, opts...)
		if err != nil {
			log.Fatal(err)
		}
		if err := remote.WriteIndex(ref, idx); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("pushed %s (%s)\n", ref, d)
	}
}

// image is berth for one platform: one layer with the binary, the config,
// the user and the data directory.
func image(bin, osName, arch, version, source string) (v1.Image, error) {
	binary, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	add := func(h *tar.Header, body []byte) {
		h.ModTime, h.Size = epoch, int64(len(body))
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		tw.WriteHeader(h)
		tw.Write(body)
	}
	for _, dir := range []string{"etc/", "etc/berth/", "usr/", "usr/local/", "usr/local/bin/", "tmp/", "var/", "var/lib/"} {
		mode := int64(0o755)
		if dir == "tmp/" {
			mode = 0o1777
		}
		add(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: mode}, nil)
	}
	add(&tar.Header{Name: "var/lib/berth/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: uid, Gid: uid}, nil)
	add(&tar.Header{Name: "etc/passwd", Mode: 0o644}, []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nberth:x:%d:%d:berth:/var/lib/berth:/sbin/nologin\n", uid, uid)))
	add(&tar.Header{Name: "etc/group", Mode: 0o644}, []byte(fmt.Sprintf("root:x:0:\nberth:x:%d:\n", uid)))
	add(&tar.Header{Name: "etc/berth/berth.toml", Mode: 0o644}, []byte(defaultConfig))
	add(&tar.Header{Name: "usr/local/bin/berth", Mode: 0o755}, binary)
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = osName, arch, v1.Time{Time: epoch}
	cf.Config = v1.Config{
		User:         fmt.Sprintf("%d:%d", uid, uid),
		Entrypoint:   []string{"/usr/local/bin/berth"},
		Cmd:          []string{"serve", "--config", "/etc/berth/berth.toml"},
		WorkingDir:   "/var/lib/berth",
		ExposedPorts: map[string]struct{}{"5000/tcp": {}},
		Volumes:      map[string]struct{}{"/var/lib/berth": {}},
		Labels: map[string]string{
			"org.opencontainers.image.title":    "berth",
			"org.opencontainers.image.version":  version,
			"org.opencontainers.image.source":   source,
			"org.opencontainers.image.licenses": "Apache-2.0",
		},
	}
	return mutate.ConfigFile(img, cf)
}
