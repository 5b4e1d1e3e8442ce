package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/berth-registry/berth/internal/replicate"
	"github.com/berth-registry/berth/server"
	"github.com/urfave/cli/v2"
)

// replicateCommand: berth replicate, run [[replicate]] rules, or copy a
// registry named on the command line, in the running berth.
func replicateCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "replicate",
		Usage: "copy a registry's images into a hosted repository of the running berth: configured rules, or --from URL --to REPO",
		Description: "With RULE names, runs those [[replicate]] rules (all of them with none). With --from and --to, copies the\n" +
			"registry at --from (its catalog, or --repository names and globs) into the hosted repository --to\n" +
			"(\"internal\" or \"internal/prefix\"). Runs are incremental and resumable: what the target holds is not fetched again.",
		ArgsUsage: "[RULE...]",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "from", Usage: "source registry `URL` (https://host[:port])"},
			&cli.StringFlag{Name: "to", Usage: "hosted `REPOSITORY[/PREFIX]` to copy into"},
			&cli.StringSliceFlag{Name: "repository", Usage: "source repository `NAME` or glob (* within a segment, ** across); default: the catalog"},
			&cli.StringSliceFlag{Name: "exclude", Usage: "repository `GLOB` left out"},
			&cli.StringSliceFlag{Name: "tag", Usage: "tag `GLOB` (default: every tag)"},
			&cli.StringFlag{Name: "semver", Usage: "only versions in `RANGE` (\">=1.2 <2\", \"^1.4\", \"~1.4.2\")"},
			&cli.IntFlag{Name: "newest", Usage: "keep the `N` newest versions of each repository"},
			&cli.StringFlag{Name: "platform", Usage: "`os/arch[,...]` of multi-platform images (default: all)"},
			&cli.BoolFlag{Name: "no-referrers", Usage: "leave out signatures, SBOMs and attestations"},
			&cli.BoolFlag{Name: "delete", Usage: "delete target tags the source no longer has"},
			&cli.IntFlag{Name: "concurrency", Usage: "blobs fetched at once (default 4)"},
			&cli.StringFlag{Name: "username", Usage: "source `USER`"},
			&cli.StringFlag{Name: "password-file", Usage: "`FILE` whose first line is the source's password (or BERTH_SOURCE_PASSWORD)"},
			&cli.BoolFlag{Name: "insecure", Usage: "do not verify the source's TLS certificate"},
			&cli.BoolFlag{Name: "dry-run", Usage: "list what would be copied and its size; copy nothing"},
		}, serverFlags...),
		Action: func(c *cli.Context) error { return runReplicate(c, stdout, stderr) },
	}
}

// replicateRequests are the runs c asks for.
func replicateRequests(c *cli.Context, cfg *Config) ([]server.ReplicateRequest, error) {
	if c.String("from") == "" {
		if c.String("to") != "" {
			return nil, errors.New("replicate: --to needs --from")
		}
		names := c.Args().Slice()
		if len(names) == 0 {
			for _, r := range cfg.Replicate {
				names = append(names, r.Name)
			}
		}
		if len(names) == 0 {
			return nil, errors.New("replicate: no [[replicate]] rule in the config; name a source with --from URL --to REPOSITORY")
		}
		var reqs []server.ReplicateRequest
		for _, n := range names {
			reqs = append(reqs, server.ReplicateRequest{Name: n, DryRun: c.Bool("dry-run")})
		}
		return reqs, nil
	}
	if c.NArg() > 0 || c.String("to") == "" {
		return nil, errors.New("replicate: --from takes --to REPOSITORY[/PREFIX] and no RULE")
	}
	pw := os.Getenv("BERTH_SOURCE_PASSWORD")
	if f := c.String("password-file"); f != "" {
		var err error
		if pw, err = readPassword("replicate", "", f); err != nil {
			return nil, err
		}
	}
	var platforms []string
	if p := c.String("platform"); p != "" {
		platforms = strings.Split(p, ",")
	}
	rule := replicate.Rule{Name: "cli", To: c.String("to"), Repositories: c.StringSlice("repository"), Exclude: c.StringSlice("exclude"),
		Tags: c.StringSlice("tag"), Semver: c.String("semver"), Newest: c.Int("newest"), Platforms: platforms,
		NoReferrers: c.Bool("no-referrers"), Delete: c.Bool("delete"), DryRun: c.Bool("dry-run"), Concurrency: c.Int("concurrency")}
	if err := rule.Check(); err != nil {
		return nil, err
	}
	src := &server.SourceSpec{URL: c.String("from"), Username: c.String("username"), Password: pw, Insecure: c.Bool("insecure")}
	return []server.ReplicateRequest{{Rule: &rule, Source: src}}, nil
}

// runReplicate asks the running berth for each run and shows it: a bar
// on a terminal, a line per object otherwise, then what it did.
func runReplicate(c *cli.Context, out, errOut io.Writer) error {
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	reqs, err := replicateRequests(c, cfg)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	base, client := adminClient(c, cfg)
	admin := server.AdminClient{Base: base, HTTP: client}
	failed := 0
	for _, req := range reqs {
		label := req.Name
		if req.Rule != nil {
			label = req.Source.URL + " → " + req.Rule.To
		}
		p := newProgress(out, label, 0)
		var done *replicate.Report
		err := admin.Replicate(c.Context, req, func(ev replicate.Event) {
			switch ev.Kind {
			case "error":
				failed++
				what := ev.Image
				if ev.Tag != "" {
					what += ":" + ev.Tag
				}
				if p.tty {
					fmt.Fprintln(out)
				}
				if what != "" {
					what += ": "
				}
				fmt.Fprintf(errOut, "%s: error: %s%s\n", label, what, ev.Error)
			case "would":
				if ev.Tag != "" {
					fmt.Fprintf(out, "would tag %s:%s %s\n", ev.Image, ev.Tag, ev.Digest)
				} else {
					fmt.Fprintf(out, "would fetch %s %s (%s)\n", ev.Image, ev.Digest, humanSize(ev.Bytes))
				}
			case "blob", "linked":
				p.set(ev.DoneBytes, ev.TotalBytes)
				p.object(ev.Kind+" "+ev.Image+" "+ev.Digest, ev.Bytes)
			case "tag", "deleted":
				if !p.tty {
					fmt.Fprintf(out, "%s: %s %s:%s %s\n", label, ev.Kind, ev.Image, ev.Tag, ev.Digest)
				}
			case "done":
				done = ev.Report
			}
		})
		p.finish()
		if err != nil {
			return opsError(c, cfg, "replicate", err)
		}
		if done == nil {
			continue
		}
		verb := "replicated"
		if done.DryRun {
			verb = "would replicate"
		}
		fmt.Fprintf(out, "%s %s: %d repositories, %d tags copied, %d unchanged, %d blobs (%s) fetched, %d linked, %d deleted, %d errors in %s\n",
			verb, label, done.Repositories, done.Tags, done.Unchanged, done.Blobs, humanSize(done.Bytes), done.Linked, done.Deleted, done.Errors, done.Took)
	}
	if failed > 0 {
		return cli.Exit(fmt.Sprintf("replicate: %d error(s)", failed), 1)
	}
	return nil
}
