package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// berthApp is the command line: urfave/cli's app, with flags allowed
// anywhere on the line (`berth ls internal --json`): urfave/cli v2 stops
// reading flags at the first argument and would take the rest for
// arguments, silently.
type berthApp struct{ *cli.App }

// Run runs the command line args (args[0] is the program).
func (a *berthApp) Run(args []string) error { return a.App.Run(permuteArgs(a.App, args)) }

// permuteArgs moves the flags of the command named in args before its
// arguments, keeping their order; "--" ends the flags. A flag the command
// does not define is left where it is (urfave/cli then names it).
func permuteArgs(app *cli.App, args []string) []string {
	if len(args) < 3 {
		return args
	}
	at := -1 // the command's index
	for i := 1; i < len(args); i++ {
		if !strings.HasPrefix(args[i], "-") {
			at = i
			break
		}
	}
	if at < 0 {
		return args
	}
	cmd := app.Command(args[at])
	if cmd == nil {
		return args
	}
	takesValue := map[string]bool{}
	known := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			known[n], takesValue[n] = true, !isBool
		}
	}
	var flags, rest []string
	for i := at + 1; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		name, hasValue := strings.CutPrefix(strings.TrimPrefix(a, "-"), "-")
		name, _, hasEq := strings.Cut(name, "=")
		if !strings.HasPrefix(a, "-") || a == "-" || !known[name] {
			rest = append(rest, a)
			continue
		}
		_ = hasValue
		flags = append(flags, a)
		if takesValue[name] && !hasEq && i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
	}
	out := append(append(append([]string{}, args[:at+1]...), flags...), rest...)
	return out
}

// commandNotFound answers an unknown command with the nearest one.
func commandNotFound(c *cli.Context, name string) {
	best, bestD := "", 4
	for _, cmd := range c.App.Commands {
		for _, n := range cmd.Names() {
			d := editDistance(name, n)
			if strings.HasPrefix(n, name) {
				d = 0
			}
			if d < bestD {
				best, bestD = n, d
			}
		}
	}
	msg := fmt.Sprintf("berth: no command %q", name)
	if best != "" {
		msg += fmt.Sprintf("; did you mean %q?", best)
	}
	fmt.Fprintln(c.App.ErrWriter, msg+" (berth help lists the commands)")
	cli.OsExiter(2)
}
