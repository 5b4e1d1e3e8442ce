// Command berth is a pull-through cache and private registry for container
// images. See README.md.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newApp(os.Stdout, os.Stderr).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "berth:", err)
		os.Exit(1)
	}
}

func newApp(stdout, stderr io.Writer) *berthApp {
	app := &cli.App{
		Name:            "berth",
		Usage:           "pull-through cache and private registry for container images",
		Version:         versionString(),
		Writer:          stdout,
		ErrWriter:       stderr,
		CommandNotFound: commandNotFound,
		Commands: []*cli.Command{
			serveCommand(stdout, stderr),
			checkConfigCommand(stdout, stderr),
			prefetchCommand(stdout, stderr),
			replicateCommand(stdout, stderr),
			retentionCommand(stdout, stderr),
			clientsCommand(stdout),
			doctorCommand(stdout),
			lsCommand(stdout, stderr),
			approveCommand(stdout, stderr),
			policyCommand(stdout, stderr),
			exportCommand(stdout, stderr),
			importCommand(stdout, stderr),
			passwdCommand(stdout, stderr),
			gcCommand(stdout, stderr),
			backupCommand(stdout, stderr),
			verifyCommand(stdout, stderr),
			versionCommand(stdout, stderr),
		},
	}
	for _, cmd := range app.Commands {
		if cmd.ArgsUsage == "" {
			cmd.Before = noArgs
		}
	}
	return &berthApp{app}
}

// noArgs refuses positional arguments to a command that takes none: urfave/cli
// stops reading flags at the first one, so `berth serve berth.toml --listen
// :6000` would otherwise serve the defaults and drop everything after it.
func noArgs(c *cli.Context) error {
	if c.NArg() == 0 {
		return nil
	}
	msg := fmt.Sprintf("berth %s takes no arguments, got %q", c.Command.Name, c.Args().Slice())
	if strings.HasSuffix(c.Args().First(), ".toml") {
		msg += fmt.Sprintf("; for a config file: berth %s --config %s", c.Command.Name, c.Args().First())
	} else {
		msg += "; flags go before them, and a config file with --config FILE"
	}
	return cli.Exit(msg, 2)
}
