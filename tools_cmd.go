package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-registry/berth/server"
	"github.com/berth-registry/berth/store"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// adminTarget is where the operator commands reach the running berth:
// its admin listener (--server unix:PATH or http://HOST:PORT, else the
// config's admin_listen, by default data_dir/admin.sock). It returns the
// base URL and the transport to use.
func adminTarget(c *cli.Context, cfg *Config) (base string, rt http.RoundTripper) {
	network, addr := adminAddr(cfg)
	if u := c.String("server"); u != "" {
		if !strings.HasPrefix(u, "unix:") {
			return strings.TrimSuffix(u, "/"), http.DefaultTransport
		}
		network, addr = "unix", strings.TrimPrefix(u, "unix:")
	}
	if network == "tcp" {
		return "http://" + addr, http.DefaultTransport
	}
	return "http://localhost", &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}}
}

// adminClient is an HTTP client for adminTarget.
func adminClient(c *cli.Context, cfg *Config) (string, *http.Client) {
	base, rt := adminTarget(c, cfg)
	return base, &http.Client{Transport: rt}
}

// notRunning explains a failure to reach the admin listener.
func notRunning(c *cli.Context, cfg *Config, what string, err error) error {
	network, addr := adminAddr(cfg)
	where := network + ":" + addr
	if u := c.String("server"); u != "" {
		where = u
	}
	return fmt.Errorf("%s needs a running berth: none answers at %s (give its config with -c FILE, or --server unix:SOCKET or http://ADMIN_HOST:PORT): %w",
		what, where, err)
}

var serverFlags = []cli.Flag{
	&cli.StringFlag{Name: "config", Aliases: []string{"c"}, EnvVars: []string{"BERTH_CONFIG"}, Usage: "TOML config `FILE` (for the listen address)"},
	&cli.StringFlag{Name: "server", Usage: "the running berth's admin listener, `unix:SOCKET or http://HOST:PORT` (default: the config's admin_listen, data_dir/admin.sock)"},
}

// runPrefetch asks the running server to pull images into its cache and
// shows progress: a bar on a terminal, log lines otherwise.
func runPrefetch(c *cli.Context, out, errOut io.Writer) error {
	if c.NArg() == 0 {
		return errors.New("prefetch needs at least one IMAGE")
	}
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	var platforms []string
	if p := c.String("platform"); p != "" {
		platforms = strings.Split(p, ",")
	}
	body, _ := json.Marshal(map[string]any{"images": c.Args().Slice(), "platforms": platforms, "all_platforms": c.Bool("all-platforms")})
	base, client := adminClient(c, cfg)
	resp, err := client.Post(base+"/admin/prefetch", "application/json", strings.NewReader(string(body)))
	if err != nil {
		return notRunning(c, cfg, "prefetch", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("prefetch: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	start := time.Now()
	failed := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev server.PrefetchEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		switch ev.Kind {
		case "error":
			failed++
			fmt.Fprintf(errOut, "prefetch %s: error: %s\n", ev.Image, ev.Error)
		case "done":
			if tty {
				fmt.Fprintln(out)
			}
			fmt.Fprintf(out, "prefetched %s: %s in %s\n", ev.Image, humanSize(ev.DoneBytes), time.Since(start).Round(time.Millisecond))
		case "blob":
			if tty {
				fmt.Fprintf(out, "\r%s", progressBar(ev.Image, ev.DoneBytes, ev.TotalBytes, time.Since(start)))
			} else {
				fmt.Fprintf(out, "prefetch %s: blob %s (%s) %d/%d bytes\n", ev.Image, ev.Digest, humanSize(ev.Bytes), ev.DoneBytes, ev.TotalBytes)
			}
		}
	}
	if failed > 0 {
		return cli.Exit(fmt.Sprintf("prefetch: %d image(s) failed", failed), 1)
	}
	return sc.Err()
}

func progressBar(image string, done, total int64, took time.Duration) string {
	const width = 30
	frac := 0.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	n := int(frac * width)
	rate := float64(done) / max(took.Seconds(), 0.001)
	eta := "-"
	if rate > 0 && total > done {
		eta = (time.Duration(float64(total-done)/rate) * time.Second / time.Second * time.Second).String()
	}
	return fmt.Sprintf("%-30s [%s%s] %5.1f%% %s/%s %s/s ETA %s", truncateStr(image, 30), strings.Repeat("=", n), strings.Repeat(" ", width-n),
		frac*100, humanSize(done), humanSize(total), humanSize(int64(rate)), eta)
}

func truncateStr(s string, n int) string {
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

// runLs lists images and tags: through the running server, or from the
// data dir when berth is stopped.
func runLs(c *cli.Context, out io.Writer) error {
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	filter := c.Args().First()
	var list []server.ListEntry
	var st *store.Store
	if c.String("server") == "" { // --server wins over the local data dir
		if err := dataDirExists(cfg.DataDir); err != nil {
			return err
		}
		st, err = store.Open(cfg.DataDir, store.Options{ManualEviction: true, OpenTimeout: 300 * time.Millisecond, KeepTmp: true})
		if err != nil && !errors.Is(err, store.ErrLocked) {
			return err
		}
	}
	if st != nil {
		list, err = server.List(c.Context, st, nil, filter) // what the index holds
		st.Close()
	} else {
		base, client := adminClient(c, cfg)
		resp, herr := client.Get(base + "/admin/ls?filter=" + url.QueryEscape(filter))
		if herr != nil {
			return notRunning(c, cfg, "ls", herr)
		}
		defer resp.Body.Close()
		err = json.NewDecoder(resp.Body).Decode(&list)
	}
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPOSITORY\tIMAGE\tTAG\tDIGEST\tSIZE\tLAST PULLED\tPULLS")
	for _, e := range list {
		last := "-"
		if !e.LastPulled.IsZero() {
			last = e.LastPulled.UTC().Format("2006-01-02 15:04")
		}
		tag := e.Tag
		if e.Damaged {
			tag += " (DAMAGED: see berth verify)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", e.Repository, e.Image, tag, shortDigest(e.Digest), humanSize(e.Size), last, e.Hits)
	}
	return tw.Flush()
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// registryOptions are the ggcr options for talking to berth.
// registryTarget is the registry export and import talk to: --server URL
// (over the network, with --creds), else the admin listener, which acts
// with full rights like prefetch (the same rule for all three: the admin
// socket is the operator's; the network needs credentials).
func registryTarget(c *cli.Context, cfg *Config) (base string, opts []remote.Option) {
	opts = registryOptions(c)
	if u := c.String("server"); u != "" && !strings.HasPrefix(u, "unix:") {
		return strings.TrimSuffix(u, "/"), opts
	}
	base, rt := adminTarget(c, cfg)
	return base, append(opts, remote.WithTransport(rt))
}

// explainRegistryErr turns the registry's 401 or 403 (which a HEAD
// reports as "HEAD responses have no body") into what to do about it.
func explainRegistryErr(err error) error {
	var te *transport.Error
	if errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden) {
		return fmt.Errorf("berth answered %d %s: give a user's credentials with --creds USER:PASSWORD, or run the command on the berth host without --server (over its admin socket): %w",
			te.StatusCode, http.StatusText(te.StatusCode), err)
	}
	return err
}

func registryOptions(c *cli.Context) []remote.Option {
	opts := []remote.Option{remote.WithContext(c.Context)}
	if creds := c.String("creds"); creds != "" {
		u, p, _ := strings.Cut(creds, ":")
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: u, Password: p}))
	}
	return opts
}

func berthRef(base, image string) (name.Reference, error) {
	host := strings.TrimPrefix(strings.TrimPrefix(base, "https://"), "http://")
	var nopts []name.Option
	if strings.HasPrefix(base, "http://") {
		nopts = append(nopts, name.Insecure)
	}
	return name.ParseReference(host+"/"+image, nopts...)
}

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
	dir, err := os.MkdirTemp("", "berth-export-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
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
		err = p.AppendDescriptor(v1.Descriptor{MediaType: desc.MediaType, Size: desc.Size, Digest: desc.Digest,
			Annotations: map[string]string{"org.opencontainers.image.ref.name": refName, "io.containerd.image.name": refName}})
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "exported %s (%s, %s)\n", img, desc.Digest, humanSize(plan.total))
	}
	if err := tarDir(dir, c.String("out")); err != nil {
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

func tarDir(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
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
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return err
		}
		hdr, _ := tar.FileInfoHeader(info, "")
		hdr.Name, _ = filepath.Rel(dir, p)
		hdr.ModTime = time.Unix(0, 0)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			if err != nil {
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

// untar extracts a tarball, refusing paths that leave dir.
func untar(file, dir string) error {
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

// runImport pushes the images of an OCI layout tarball (or a docker save
// tarball) into a repository of the running berth, verifying every digest
// first.
// importTarget is the hosted repository an import into name writes to: a
// group's push_to, the repository itself when hosted. A proxy, or a group
// without push_to, is refused with the reason: a write there would find
// the image already resolved by a proxy member, write nothing, and still
// say "imported". Names not in the config are left to the server.
func importTarget(cfg *Config, name string) (string, error) {
	for _, r := range cfg.Repositories {
		if r.Name != name {
			continue
		}
		switch {
		case r.Kind == "group" && r.PushTo == "":
			return "", fmt.Errorf("import: %s is a group without push_to; name a hosted repository with --repository", name)
		case r.Kind == "group":
			return r.PushTo, nil
		case r.Kind == "proxy":
			return "", fmt.Errorf("import: %s is a proxy (read-only); name a hosted repository with --repository", name)
		}
	}
	return name, nil
}

func runImport(c *cli.Context, out io.Writer) (err error) {
	if c.NArg() != 1 {
		return errors.New("import needs one FILE.tar")
	}
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	base, ropts := registryTarget(c, cfg)
	repoName := c.String("repository")
	if repoName == "" && (c.String("server") == "" || strings.HasPrefix(c.String("server"), "unix:")) {
		repoName = cfg.DefaultRepository // what the admin socket routes to
	}
	repoName, err = importTarget(cfg, repoName)
	if err != nil {
		return err
	}
	prefix := ""
	if repoName != "" {
		prefix = repoName + "/"
	}
	written := 0
	defer func() {
		if err == nil {
			fmt.Fprintf(out, "import: %d image(s) written to %s\n", written, strings.TrimSuffix(cmp.Or(prefix, "the listener's repository"), "/"))
		}
	}()
	dir, err := os.MkdirTemp("", "berth-import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := untar(c.Args().First(), dir); err != nil {
		return err
	}
	push := func(target string, write func(name.Reference, ...remote.Option) error) error {
		ref, err := berthRef(base, prefix+target)
		if err != nil {
			return err
		}
		pr := newProgress(out, target, 0)
		updates := make(chan v1.Update, 16)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for u := range updates {
				pr.set(u.Complete, u.Total)
			}
		}()
		err = write(ref, append(slices.Clone(ropts), remote.WithProgress(updates))...)
		<-done
		if err != nil {
			return fmt.Errorf("import %s: %w", target, explainRegistryErr(err))
		}
		pr.finish()
		pr.object("pushed", pr.total)
		fmt.Fprintf(out, "imported %s\n", ref)
		written++
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
		p, err := layout.FromPath(dir)
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
			target := d.Annotations["io.containerd.image.name"]
			if target == "" {
				target = d.Annotations["org.opencontainers.image.ref.name"]
			}
			if target == "" || !strings.ContainsAny(target, ":@") {
				return fmt.Errorf("import: manifest %s has no image name annotation (org.opencontainers.image.ref.name = name:tag)", d.Digest)
			}
			if d.MediaType.IsIndex() {
				idx, err := ii.ImageIndex(d.Digest)
				if err != nil {
					return err
				}
				if err := validate.Index(idx); err != nil {
					return fmt.Errorf("import %s: %w", target, err)
				}
				err = push(target, func(ref name.Reference, o ...remote.Option) error { return remote.WriteIndex(ref, idx, o...) })
				if err != nil {
					return err
				}
				continue
			}
			img, err := ii.Image(d.Digest)
			if err != nil {
				return err
			}
			if err := validate.Image(img); err != nil {
				return fmt.Errorf("import %s: %w", target, err)
			}
			if err := push(target, func(ref name.Reference, o ...remote.Option) error { return remote.Write(ref, img, o...) }); err != nil {
				return err
			}
		}
		return nil
	}
	// docker save: manifest.json with RepoTags.
	manifest, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(c.Args().First()) })
	if err != nil {
		return fmt.Errorf("import: neither an OCI layout nor a docker save tarball: %w", err)
	}
	for _, m := range manifest {
		for _, t := range m.RepoTags {
			tag, err := name.NewTag(t)
			if err != nil {
				return err
			}
			img, err := tarball.ImageFromPath(c.Args().First(), &tag)
			if err != nil {
				return err
			}
			if err := validate.Image(img); err != nil {
				return fmt.Errorf("import %s: %w", t, err)
			}
			target := tag.RepositoryStr() + ":" + tag.TagStr()
			if err := push(target, func(ref name.Reference, o ...remote.Option) error { return remote.Write(ref, img, o...) }); err != nil {
				return err
			}
		}
	}
	return nil
}
