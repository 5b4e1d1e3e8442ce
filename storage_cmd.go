package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/urfave/cli/v2"
)

// storageConfig reads the config (or defaults) for the offline commands.
func storageConfig(c *cli.Context) (*Config, error) {
	cfg := defaultConfig()
	path := c.String("config")
	if path == "" && c.String("data-dir") == "" && c.String("server") == "" {
		// On the box, the operator commands find the server's config.
		if _, err := os.Stat(installedConfig); err == nil {
			path = installedConfig
		}
	}
	if path != "" {
		var err error
		if cfg, err = loadConfigFile(path); err != nil {
			return nil, err
		}
	}
	if v := c.String("data-dir"); v != "" {
		cfg.DataDir = v
	}
	return cfg, cfg.setDefaults()
}

// installedConfig is where the README's install puts the config; the
// operator commands read it when given neither -c, BERTH_CONFIG,
// --data-dir nor --server.
const installedConfig = "/etc/berth/berth.toml"

// dataDirExists refuses a data dir that is not there: every command but
// serve works on an existing store, and would otherwise create an empty
// one and report that all is well.
func dataDirExists(dir string) error {
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return cli.Exit(fmt.Sprintf("data dir %s does not exist (give the config with -c FILE, as the server uses, or --data-dir DIR)", dir), 1)
	}
	return nil
}

// lockedError says that dir is in use by a running berth, with its PID
// when the server wrote one.
func lockedError(dir, advice string) error {
	msg := fmt.Sprintf("data dir %s is in use by a running berth", dir)
	if b, err := os.ReadFile(filepath.Join(dir, pidFile)); err == nil {
		msg += fmt.Sprintf(" (pid %s)", strings.TrimSpace(string(b)))
	}
	if advice != "" {
		msg += "; " + advice
	}
	return errors.New(msg)
}

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
	var res struct {
		Blobs int   `json:"blobs"`
		Bytes int64 `json:"bytes"`
		Error string
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&res); err != nil || resp.StatusCode != 200 {
		return fmt.Errorf("ask the running berth: status %d %s", resp.StatusCode, res.Error)
	}
	printGC(out, res.Blobs, res.Bytes, dry)
	return nil
}

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
