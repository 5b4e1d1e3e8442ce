package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

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
