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
		if repairable(probs) == 0 {
			return cli.Exit("verify: problems found that --repair cannot fix: "+damagedAdvice, 1)
		}
		return cli.Exit("verify: problems found (run with --repair to drop them; the next pull refetches)", 1)
	}
	// A repair can uncover more (a dropped blob leaves a link dangling):
	// repeat until a pass fixes nothing, so one run converges.
	repaired := 0
	left := probs
	for pass := 0; pass < 8 && repairable(left) > 0; pass++ {
		if err := st.Repair(ctx, left); err != nil {
			return err
		}
		repaired += repairable(left)
		if left, err = st.Check(ctx, store.CheckOptions{Rehash: true, Orphans: true, Tmp: true}); err != nil {
			return err
		}
	}
	if err := st.RecordVerify(len(left)); err != nil {
		return err
	}
	fmt.Fprintf(out, "verify: repaired %d problems\n", repaired)
	if len(left) > 0 {
		for _, p := range left {
			fmt.Fprintf(out, "left: %s\n", p)
		}
		return cli.Exit(fmt.Sprintf("verify: %d problems left that --repair cannot fix: %s", len(left), damagedAdvice), 1)
	}
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

// damagedAdvice is what to do about what a repair leaves: pushed images
// whose content is gone (there is no upstream to refetch it from).
const damagedAdvice = "push the damaged images again, or delete them (DELETE /v2/<name>/manifests/<digest>); berth ls marks them DAMAGED"

// repairable counts the problems a repair changes something for.
func repairable(probs []store.Problem) int {
	n := 0
	for _, p := range probs {
		if p.Kind != "damaged_image" {
			n++
		}
	}
	return n
}
