package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"
)

// runBackup writes a consistent copy of index.db to --out: from the
// running berth over its admin socket (a read transaction; it keeps
// serving), or from the data dir when none runs. Blob files are immutable:
// copy data_dir/blobs/ after this (README, Upgrading and backup).
func runBackup(c *cli.Context, out io.Writer) (err error) {
	dest := c.String("out")
	if dest == "" {
		return errors.New("backup needs --out FILE")
	}
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	ops, from, done, err := openOps(c, cfg, nil)
	if err != nil {
		return err
	}
	defer done()
	tmp, err := os.CreateTemp(filepath.Dir(dest), ".berth-backup-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	n, err := ops.Backup(c.Context, tmp)
	if err != nil {
		tmp.Close()
		return opsError(c, cfg, "backup", err)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dest)
	}
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	fmt.Fprintf(out, "backup: wrote %s (%s of index, from %s); now copy %s as it is\n", dest, humanSize(n), from, filepath.Join(cfg.DataDir, "blobs"))
	return nil
}

// backupCommand: berth backup, write a consistent copy of index.db.
func backupCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "write a consistent copy of index.db (from the running berth, or the data dir when it is stopped)",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` (overrides the file)"},
			&cli.StringFlag{Name: "out", Usage: "`FILE` to write (written whole or not at all)"},
			&cli.StringFlag{Name: "server", Usage: "the running berth's admin listener, `unix:SOCKET or http://HOST:PORT`"},
		},
		Action: func(c *cli.Context) error { return runBackup(c, stdout) },
	}
}
