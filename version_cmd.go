package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

// versionString is the version stamped by make (git describe), else the
// module version go install recorded, else the VCS revision go build
// recorded, else "dev".
func versionString() string {
	if version != "dev" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return version
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		return "dev-" + rev[:12] + dirty
	}
	return version
}

// versionCommand: berth version, print version and build information.
func versionCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print version and build information",
		Action: func(c *cli.Context) error {
			fmt.Fprintf(stdout, "berth %s\n", versionString())
			if bi, ok := debug.ReadBuildInfo(); ok {
				fmt.Fprintf(stdout, "go %s\n", bi.GoVersion)
				for _, s := range bi.Settings {
					if strings.HasPrefix(s.Key, "vcs.") {
						fmt.Fprintf(stdout, "%s %s\n", s.Key, s.Value)
					}
				}
			}
			return nil
		},
	}
}
