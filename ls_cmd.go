package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/berth-registry/berth/server"
	"github.com/urfave/cli/v2"
)

// runLs lists images and tags: through the running server, or from the
// data dir when berth is stopped.
func runLs(c *cli.Context, out io.Writer) error {
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	ops, _, done, err := openOps(c, cfg, nil)
	if err != nil {
		return err
	}
	defer done()
	list, err := ops.List(c.Context, c.Args().First())
	if err != nil {
		return opsError(c, cfg, "ls", err)
	}
	if list == nil {
		list = []server.ListEntry{} // [] for none, not null
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", e.Repository, e.Image, tag, shortDigest(e.Digest), humanSize(e.Size), last, e.Pulls)
	}
	return tw.Flush()
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// lsCommand: berth ls, list repositories, images, tags, digests, sizes, last pulled and pulls.
func lsCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list repositories, images, tags, digests, sizes, last pulled and pulls",
		ArgsUsage: "[REPOSITORY[/IMAGE]]",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` (overrides the file)"},
			&cli.BoolFlag{Name: "json", Usage: "JSON instead of a table"},
		}, serverFlags...),
		Action: func(c *cli.Context) error { return runLs(c, stdout) },
	}
}
