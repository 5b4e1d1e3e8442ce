package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/berth-registry/berth/server"
	"github.com/berth-registry/berth/store"
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
	if c.String("server") != "" {
		return gcRemote(c, cfg, out, dry, grace)
	}
	if err := dataDirExists(cfg.DataDir); err != nil {
		return err
	}
	st, err := store.Open(cfg.DataDir, store.Options{ManualEviction: true, OpenTimeout: 500 * time.Millisecond, KeepTmp: true})
	if errors.Is(err, store.ErrLocked) {
		fmt.Fprintf(out, "data dir %s is in use by a running berth; asking it\n", cfg.DataDir)
		return gcRemote(c, cfg, out, dry, grace)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	res, err := st.GC(store.GCOptions{Grace: grace, DryRun: dry})
	if err != nil {
		return err
	}
	printGC(out, server.GCReply{Blobs: res.Blobs, Bytes: res.Bytes, Kept: res.Kept, KeptBytes: res.KeptBytes, Grace: grace.String()}, dry)
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

func gcRemote(c *cli.Context, cfg *Config, out io.Writer, dry bool, grace time.Duration) error {
	base, client := adminClient(c, cfg)
	q := url.Values{"grace": {grace.String()}}
	if dry {
		q.Set("dry_run", "1")
	}
	u := base + "/admin/gc?" + q.Encode()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	resp, err := client.Do(req)
	if err != nil {
		return notRunning(c, cfg, "gc", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("gc: %s is not a berth admin listener (it answered 404): give --server unix:SOCKET or http://HOST:PORT of admin_listen (default unix:DATA_DIR/admin.sock), not the registry's address", base)
	}
	if resp.StatusCode != http.StatusOK {
		return adminFailure("gc", resp)
	}
	var res server.GCReply
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&res); err != nil {
		return fmt.Errorf("gc: reading the running berth's answer: %w", err)
	}
	printGC(out, res, dry)
	return nil
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
