package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/urfave/cli/v2"
)

// runVerify re-hashes every blob and checks index and files both ways.
// It exits non-zero when it finds problems (unless --repair fixed them).
func runVerify(c *cli.Context, out io.Writer) error {
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	if err := dataDirExists(cfg.DataDir); err != nil {
		return err
	}
	st, err := store.Open(cfg.DataDir, store.Options{ManualEviction: true, OpenTimeout: 500 * time.Millisecond, KeepTmp: true})
	if errors.Is(err, store.ErrLocked) {
		return lockedError(cfg.DataDir, "stop it first")
	}
	if err != nil {
		return err
	}
	defer st.Close()
	ctx := c.Context
	start := time.Now()
	probs, err := st.Check(ctx, store.CheckOptions{Rehash: true, Orphans: true, Tmp: true})
	if err != nil {
		return err
	}
	bytes, count := st.Stats()
	byKind := map[string]int{}
	for _, p := range probs {
		byKind[p.Kind]++
		fmt.Fprintf(out, "problem: %s\n", p)
	}
	fmt.Fprintf(out, "verify: %d blobs, %s re-hashed in %s; %d problems", count, humanSize(bytes), time.Since(start).Round(time.Millisecond), len(probs))
	for k, n := range byKind {
		fmt.Fprintf(out, ", %s=%d", k, n)
	}
	fmt.Fprintln(out)
	if len(probs) == 0 {
		return st.RecordVerify(0)
	}
	if !c.Bool("repair") {
		if err := st.RecordVerify(len(probs)); err != nil {
			fmt.Fprintln(c.App.ErrWriter, "verify: could not record the result:", err)
		}
		return cli.Exit("verify: problems found (run with --repair to drop them; the next pull refetches)", 1)
	}
	if err := st.Repair(ctx, probs); err != nil {
		return err
	}
	left, err := st.Check(ctx, store.CheckOptions{Rehash: true, Orphans: true, Tmp: true})
	if err != nil {
		return err
	}
	if err := st.RecordVerify(len(left)); err != nil {
		return err
	}
	if len(left) > 0 {
		return cli.Exit(fmt.Sprintf("verify: %d problems left after repair", len(left)), 1)
	}
	fmt.Fprintf(out, "verify: repaired %d problems\n", len(probs))
	return nil
}

// verifyCommand: berth verify, check the index against the blob files.
func verifyCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "check the index against the blob files (run with the server stopped)",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` (overrides the file)"},
			&cli.BoolFlag{Name: "repair", Usage: "drop bad entries and files so the next pull refetches them"},
		},
		Action: func(c *cli.Context) error { return runVerify(c, stdout) },
	}
}
