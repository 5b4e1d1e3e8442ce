package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

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
	if c.String("server") != "" {
		return gcRemote(c, cfg, out, dry)
	}
	if err := dataDirExists(cfg.DataDir); err != nil {
		return err
	}
	st, err := store.Open(cfg.DataDir, store.Options{ManualEviction: true, OpenTimeout: 500 * time.Millisecond, KeepTmp: true})
	if errors.Is(err, store.ErrLocked) {
		fmt.Fprintf(out, "data dir %s is in use by a running berth; asking it\n", cfg.DataDir)
		return gcRemote(c, cfg, out, dry)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	res, err := st.GC(store.GCOptions{Grace: time.Duration(cfg.Storage.GCGrace), DryRun: dry})
	if err != nil {
		return err
	}
	printGC(out, res.Blobs, res.Bytes, dry)
	return nil
}

func printGC(out io.Writer, blobs int, bytes int64, dry bool) {
	verb := "freed"
	if dry {
		verb = "would free"
	}
	fmt.Fprintf(out, "gc: %s %d blobs, %s\n", verb, blobs, humanSize(bytes))
}

func gcRemote(c *cli.Context, cfg *Config, out io.Writer, dry bool) error {
	base, client := adminClient(c, cfg)
	u := base + "/admin/gc"
	if dry {
		u += "?dry_run=1"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	resp, err := client.Do(req)
	if err != nil {
		return notRunning(c, cfg, "gc", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return adminFailure("gc", resp)
	}
	var res struct {
		Blobs int   `json:"blobs"`
		Bytes int64 `json:"bytes"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&res); err != nil {
		return fmt.Errorf("gc: reading the running berth's answer: %w", err)
	}
	printGC(out, res.Blobs, res.Bytes, dry)
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
			&cli.StringFlag{Name: "server", Usage: "ask the berth at `URL` (default: the listen address of the config, when the data dir is in use)"},
		},
		Action: func(c *cli.Context) error { return runGC(c, stdout) },
	}
}
