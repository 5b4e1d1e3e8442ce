package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/berth-registry/berth/server"
	"github.com/urfave/cli/v2"
)

// runGC collects garbage: through the running server when the data dir
// is in use, else directly.
func runGC(c *cli.Context, out io.Writer) error {
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	dry := c.Bool("dry-run")
	grace := time.Duration(cfg.Storage.GCGrace)
	if c.IsSet("grace") {
		grace = c.Duration("grace")
		if grace < 0 {
			return errors.New("gc: --grace must not be negative")
		}
	}
	ops, _, done, err := openOps(c, cfg, out)
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := context.WithTimeout(c.Context, 10*time.Minute)
	defer cancel()
	res, err := ops.GC(ctx, server.GCRequest{Grace: grace, DryRun: dry})
	if err != nil {
		return opsError(c, cfg, "gc", err)
	}
	printGC(out, res, dry)
	return nil
}

// printGC says what a collection did, and what the grace period kept.
func printGC(out io.Writer, r server.GCReply, dry bool) {
	verb := "freed"
	if dry {
		verb = "would free"
	}
	fmt.Fprintf(out, "gc: %s %d blobs, %s\n", verb, r.Blobs, humanSize(r.Bytes))
	if r.Kept > 0 {
		fmt.Fprintf(out, "gc: kept %d unreferenced blobs (%s) younger than the grace period (%s): a push may still be finishing; --grace 0 includes them\n",
			r.Kept, humanSize(r.KeptBytes), r.Grace)
	}
}

// gcCommand: berth gc, delete blobs no manifest references.
func gcCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "delete blobs no manifest references (online through a running server, else on the data dir)",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` (overrides the file)"},
			&cli.BoolFlag{Name: "dry-run", Usage: "only print what would be freed"},
			&cli.DurationFlag{Name: "grace", Usage: "spare unreferenced blobs younger than `DURATION` (default: the config's gc_grace, 1h); 0 collects them too"},
			&cli.StringFlag{Name: "server", Usage: "the running berth's admin listener, `unix:SOCKET or http://HOST:PORT` (default: the config's admin_listen, data_dir/admin.sock, when the data dir is in use)"},
		},
		Action: func(c *cli.Context) error { return runGC(c, stdout) },
	}
}
