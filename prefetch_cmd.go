package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/berth-registry/berth/server"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// runPrefetch asks the running server to pull images into its cache and
// shows progress: a bar on a terminal, log lines otherwise.
func runPrefetch(c *cli.Context, out, errOut io.Writer) error {
	if c.NArg() == 0 {
		return errors.New("prefetch needs at least one IMAGE")
	}
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	var platforms []string
	if p := c.String("platform"); p != "" {
		platforms = strings.Split(p, ",")
	}
	base, client := adminClient(c, cfg)
	admin := server.AdminClient{Base: base, HTTP: client}
	req := server.PrefetchRequest{Images: c.Args().Slice(), Platforms: platforms, AllPlatforms: c.Bool("all-platforms"), AllTags: c.Bool("all-tags")}
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	start := time.Now()
	failed := 0
	err = admin.Prefetch(c.Context, req, func(ev server.PrefetchEvent) {
		switch ev.Kind {
		case "error":
			failed++
			fmt.Fprintf(errOut, "prefetch %s: error: %s\n", ev.Image, ev.Error)
		case "done":
			if tty {
				fmt.Fprintln(out)
			}
			fmt.Fprintf(out, "prefetched %s: %s in %s\n", ev.Image, humanSize(ev.DoneBytes), time.Since(start).Round(time.Millisecond))
		case "blob":
			if tty {
				fmt.Fprintf(out, "\r%s", progressBar(ev.Image, ev.DoneBytes, ev.TotalBytes, time.Since(start)))
			} else {
				fmt.Fprintf(out, "prefetch %s: blob %s (%s) %d/%d bytes\n", ev.Image, ev.Digest, humanSize(ev.Bytes), ev.DoneBytes, ev.TotalBytes)
			}
		}
	})
	if err != nil {
		return opsError(c, cfg, "prefetch", err)
	}
	if failed > 0 {
		return cli.Exit(fmt.Sprintf("prefetch: %d image(s) failed", failed), 1)
	}
	return nil
}

func progressBar(image string, done, total int64, took time.Duration) string {
	const width = 30
	frac := 0.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	n := int(frac * width)
	rate := float64(done) / max(took.Seconds(), 0.001)
	eta := "-"
	if rate > 0 && total > done {
		eta = (time.Duration(float64(total-done)/rate) * time.Second / time.Second * time.Second).String()
	}
	return fmt.Sprintf("%-30s [%s%s] %5.1f%% %s/%s %s/s ETA %s", truncateStr(image, 30), strings.Repeat("=", n), strings.Repeat(" ", width-n),
		frac*100, humanSize(done), humanSize(total), humanSize(int64(rate)), eta)
}

func truncateStr(s string, n int) string {
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

// prefetchCommand: berth prefetch, pull images into the running berth's cache.
func prefetchCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "prefetch",
		Usage:     "pull images into the running berth's cache (a progress bar on a terminal)",
		ArgsUsage: "IMAGE...",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "platform", Usage: "`os/arch[,...]` of multi-platform images (default linux/amd64)"},
			&cli.BoolFlag{Name: "all-platforms", Usage: "every platform"},
			&cli.BoolFlag{Name: "all-tags", Usage: "every tag of each IMAGE (names without a tag): keeps a read replica warm"},
		}, serverFlags...),
		Action: func(c *cli.Context) error { return runPrefetch(c, stdout, stderr) },
	}
}
