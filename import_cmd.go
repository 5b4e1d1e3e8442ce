package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/berth-registry/berth/internal/ocitar"
	"github.com/berth-registry/berth/server"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/urfave/cli/v2"
)

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

// runImport pushes the images of an OCI layout tarball (or a docker save
// tarball) into a repository of the running berth, verifying every digest
// first.
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
	if err := checkImportTarget(c, cfg, repoName); err != nil {
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
	arc, err := ocitar.Open(c.Args().First())
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	defer arc.Close()
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
	for _, e := range arc.Entries {
		write := func(ref name.Reference, o ...remote.Option) error { return remote.Write(ref, e.Image, o...) }
		if e.Index != nil {
			write = func(ref name.Reference, o ...remote.Option) error { return remote.WriteIndex(ref, e.Index, o...) }
		}
		if err := push(e.Name, write); err != nil {
			return err
		}
	}
	return nil
}

// importCommand: berth import, push the images of an OCI layout.
func importCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "import",
		Usage:     "push the images of an OCI layout (or docker save) tarball into a repository, verifying every digest",
		ArgsUsage: "FILE.tar",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "repository", Usage: "the hosted `NAME` to import into (default: the listener's repository)"},
			&cli.StringFlag{Name: "creds", Usage: "`user:password` with push rights"},
		}, serverFlags...),
		Action: func(c *cli.Context) error { return runImport(c, stdout) },
	}
}

// checkImportTarget asks the running berth, over its admin listener,
// whether repository name exists before anything is pushed: a push to
// "nosuch/app" would land in the listener's repository under that name.
// A --server that is a registry URL cannot be asked; its answer to the
// push decides.
func checkImportTarget(c *cli.Context, cfg *Config, name string) error {
	if name == "" || (c.String("server") != "" && !strings.HasPrefix(c.String("server"), "unix:")) {
		return nil
	}
	base, client := adminClient(c, cfg)
	if _, err := (server.AdminClient{Base: base, HTTP: client}).List(c.Context, name); err != nil {
		return opsError(c, cfg, "import", err)
	}
	return nil
}
