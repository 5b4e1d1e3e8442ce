package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os/user"
	"time"

	"github.com/berth-registry/berth/server"
	"github.com/urfave/cli/v2"
)

// approveCommand: berth approve NAME@DIGEST releases a held digest.
func approveCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "approve",
		Usage:     "release an image a policy's min_age holds, before it is old enough",
		ArgsUsage: "NAME@DIGEST",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` (overrides the file)"},
		}, serverFlags...),
		Action: func(c *cli.Context) error { return runApprove(c, stdout) },
	}
}

func runApprove(c *cli.Context, out io.Writer) error {
	if c.NArg() != 1 {
		return cli.Exit("approve needs one NAME@DIGEST (berth policy test NAME:TAG shows the digest a tag holds back)", 2)
	}
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	ops, _, done, err := openOps(c, cfg, nil)
	if err != nil {
		return err
	}
	defer done()
	by := "an operator"
	if u, err := user.Current(); err == nil {
		by = u.Username
	}
	res, err := ops.Approve(c.Context, c.Args().First(), by)
	if err != nil {
		return opsError(c, cfg, "approve", err)
	}
	fmt.Fprintf(out, "approved %s@%s: min_age no longer holds it\n", res.Name, res.Digest)
	return nil
}

// policyCommand: berth policy test REF explains a verdict.
func policyCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "policy",
		Usage:     "explain what a repository's policy decides",
		ArgsUsage: "test REF",
		Subcommands: []*cli.Command{{
			Name:      "test",
			Usage:     "say whether the running berth would serve an image, and why, without serving it",
			ArgsUsage: "REPOSITORY/NAME@DIGEST|REPOSITORY/NAME:TAG",
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` (overrides the file)"},
				&cli.BoolFlag{Name: "json", Usage: "JSON instead of text"},
			}, serverFlags...),
			Action: func(c *cli.Context) error { return runPolicyTest(c, stdout) },
		}},
	}
}

func runPolicyTest(c *cli.Context, out io.Writer) error {
	if c.NArg() != 1 {
		return cli.Exit("policy test needs one REPOSITORY/NAME@DIGEST or REPOSITORY/NAME:TAG", 2)
	}
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	base, client := adminClient(c, cfg)
	res, err := server.AdminClient{Base: base, HTTP: client}.PolicyTest(c.Context, c.Args().First())
	if err != nil {
		return opsError(c, cfg, "policy test", err)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	fmt.Fprintf(out, "%s/%s@%s\n", res.Repository, res.Name, res.Digest)
	if res.Policy != "" {
		fmt.Fprintf(out, "  policy     %s (fingerprint %s)\n", res.Policy, res.Fingerprint)
	}
	fmt.Fprintf(out, "  decision   %s (rule %s)\n  reason     %s\n", res.Decision, res.Rule, res.Reason)
	if !res.FirstSeen.IsZero() {
		fmt.Fprintf(out, "  first seen %s\n", res.FirstSeen.UTC().Format(time.RFC3339))
	}
	if !res.Until.IsZero() {
		fmt.Fprintf(out, "  held until %s; berth approve %s/%s@%s releases it now\n", res.Until.UTC().Format(time.RFC3339), res.Repository, res.Name, res.Digest)
	}
	if res.Decision != "allow" {
		return cli.Exit("", 3)
	}
	return nil
}
