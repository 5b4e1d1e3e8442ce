package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-registry/berth/server"
	"github.com/berth-registry/berth/store"
	"github.com/urfave/cli/v2"
)

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
		if err := knownRepository(c.Context, cfg, st, filter); err != nil {
			st.Close()
			return err
		}
		list, err = server.List(c.Context, st, nil, filter) // what the index holds
		st.Close()
	} else {
		base, client := adminClient(c, cfg)
		resp, herr := client.Get(base + "/admin/ls?filter=" + url.QueryEscape(filter))
		if herr != nil {
			return notRunning(c, cfg, "ls", herr)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return adminFailure("ls", resp)
		}
		err = json.NewDecoder(resp.Body).Decode(&list)
	}
	if err != nil {
		return err
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

// knownRepository refuses a filter whose repository is neither in the
// config nor in the store: `berth ls nosuch` is an error, not an empty
// table.
func knownRepository(ctx context.Context, cfg *Config, st *store.Store, filter string) error {
	first, _, _ := strings.Cut(filter, "/")
	if first == "" {
		return nil
	}
	var names []string
	for _, r := range cfg.Repositories {
		if r.Name == first {
			return nil
		}
		names = append(names, r.Name)
	}
	if held, err := st.Repositories(ctx, first+"/"); err == nil && len(held) > 0 {
		return nil
	}
	return fmt.Errorf("ls: no repository %q in the config (%s) or the store", first, strings.Join(names, ", "))
}
