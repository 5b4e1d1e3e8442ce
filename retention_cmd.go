package main

import (
	"fmt"
	"io"
	"slices"

	"github.com/berth-registry/berth/server"
	"github.com/urfave/cli/v2"
)

// retentionCommand: berth retention, apply hosted repositories'
// retention rules in the running berth (a dry run first).
func retentionCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "retention",
		Usage: "remove old tags and untagged manifests of hosted repositories by their [repository.retention] rules (--dry-run first)",
		Description: "Applies the retention rules of each REPOSITORY (every hosted repository that has rules, with none).\n" +
			"--dry-run lists what would go and the bytes it holds, removing nothing. What is removed is freed by the\n" +
			"next garbage collection (berth gc runs one now).",
		ArgsUsage: "[REPOSITORY...]",
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Usage: "list what would be removed; remove nothing"},
			&cli.BoolFlag{Name: "quiet", Usage: "print only the summary"},
		}, serverFlags...),
		Action: func(c *cli.Context) error { return runRetention(c, stdout) },
	}
}

func runRetention(c *cli.Context, out io.Writer) error {
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	repos := c.Args().Slice()
	if len(repos) == 0 {
		for _, r := range cfg.Repositories {
			if r.Retention != nil {
				repos = append(repos, r.Name)
			}
		}
	}
	if len(repos) == 0 {
		return cli.Exit("retention: no hosted repository has [repository.retention] rules", 2)
	}
	for _, r := range repos {
		if i := slices.IndexFunc(cfg.Repositories, func(rc RepositoryConfig) bool { return rc.Name == r }); i >= 0 && cfg.Repositories[i].Retention == nil {
			return cli.Exit(fmt.Sprintf("retention: repository %q has no [repository.retention] rules", r), 2)
		}
	}
	base, client := adminClient(c, cfg)
	admin := server.AdminClient{Base: base, HTTP: client}
	dry := c.Bool("dry-run")
	for _, r := range repos {
		rep, err := admin.Retention(c.Context, r, dry)
		if err != nil {
			return opsError(c, cfg, "retention", err)
		}
		verb := "removed"
		if dry {
			verb = "would remove"
		}
		if !c.Bool("quiet") {
			for _, t := range rep.Tags {
				fmt.Fprintf(out, "%s tag %s/%s\n", verb, r, t)
			}
			for _, m := range rep.Manifests {
				fmt.Fprintf(out, "%s manifest %s/%s\n", verb, r, m)
			}
		}
		fmt.Fprintf(out, "%s: %s %d tags and %d manifests (up to %s); %d tags kept; in %s\n", r, verb, len(rep.Tags), len(rep.Manifests), humanSize(rep.Bytes), rep.Kept, rep.Took)
	}
	if !dry {
		fmt.Fprintln(out, "the next garbage collection frees their blobs (berth gc runs one now)")
	}
	return nil
}
