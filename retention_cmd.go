package main

import (
	"fmt"
	"io"

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
		repos = []string{""} // the running berth's repositories that have rules
	}
	base, client := adminClient(c, cfg)
	admin := server.AdminClient{Base: base, HTTP: client}
	dry := c.Bool("dry-run")
	for _, r := range repos {
		reps, err := admin.Retention(c.Context, r, dry)
		if err != nil {
			return opsError(c, cfg, "retention", err)
		}
		for _, rep := range reps {
			printRetention(out, rep, c.Bool("quiet"))
		}
	}
	if !dry {
		fmt.Fprintln(out, "the next garbage collection frees their blobs (berth gc runs one now)")
	}
	return nil
}

// printRetention prints what a retention pass removed (or would), then
// a summary line.
func printRetention(out io.Writer, rep server.RetentionReport, quiet bool) {
	verb := "removed"
	if rep.DryRun {
		verb = "would remove"
	}
	if !quiet {
		for _, t := range rep.Tags {
			fmt.Fprintf(out, "%s tag %s/%s\n", verb, rep.Repository, t)
		}
		for _, m := range rep.Manifests {
			fmt.Fprintf(out, "%s manifest %s/%s\n", verb, rep.Repository, m)
		}
	}
	fmt.Fprintf(out, "%s: %s %d tags and %d manifests (up to %s); %d tags kept; in %s\n", rep.Repository, verb, len(rep.Tags), len(rep.Manifests), humanSize(rep.Bytes), rep.Kept, rep.Took)
}
