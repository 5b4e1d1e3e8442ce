package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/doctor"
	"github.com/urfave/cli/v2"
)

// doctorCommand: berth doctor, run on a node: do its clients pull through
// berth?
func doctorCommand(stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "on a node: say whether Docker, containerd, podman/CRI-O and k3s/rke2 pull through berth, and how to fix them",
		Description: "Reads the node's client configuration (or a copy of it under --root) and, for each registry berth proxies,\n" +
			"says whether each client's pulls go through berth. Then asks berth itself: is it reachable, and does a manifest\n" +
			"HEAD of --image through it answer? Exit 1 when a pull would bypass berth or fail.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "berth's config `FILE`, for the registries it proxies (default: docker.io only)"},
			&cli.StringFlag{Name: "url", Usage: "berth's `URL` as this node reaches it (default: [auth] external_url)"},
			&cli.StringFlag{Name: "root", Value: "/", Usage: "the node's root `DIR` (a copy of a node's /etc, for tests and support)"},
			&cli.StringFlag{Name: "image", Usage: "an `IMAGE` (library/alpine:3.20) to HEAD through berth as the clients would (?ns=docker.io)"},
			&cli.BoolFlag{Name: "no-probe", Usage: "read the files only; send nothing to berth"},
			&cli.BoolFlag{Name: "json", Usage: "the findings as JSON"},
		},
		Action: func(c *cli.Context) error { return runDoctor(c, stdout) },
	}
}

func runDoctor(c *cli.Context, out io.Writer) error {
	var registries []string
	berthURL := c.String("url")
	if c.String("config") != "" {
		cfg, err := loadConfigFile(c.String("config"))
		if err == nil {
			err = cfg.setDefaults()
		}
		if err != nil {
			return err
		}
		for _, r := range clientRegistries(cfg).Registries {
			registries = append(registries, r.Host)
		}
		if berthURL == "" {
			berthURL = cfg.Auth.ExternalURL
		}
	}
	if berthURL == "" {
		return cli.Exit("doctor: say where berth is: --url http(s)://host:port", 2)
	}
	findings, err := doctor.Check(doctor.Options{Root: c.String("root"), URL: berthURL, Registries: registries})
	if err != nil {
		return cli.Exit("doctor: "+err.Error(), 2)
	}
	if !c.Bool("no-probe") {
		findings = append(findings, probe(c.Context, berthURL, c.String("image"))...)
	}
	bad := 0
	for _, f := range findings {
		if f.Level == doctor.Bad {
			bad++
		}
	}
	if c.Bool("json") {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		enc.Encode(findings)
	} else {
		for _, f := range findings {
			fmt.Fprintf(out, "%-4s %-10s %-16s %s\n", strings.ToUpper(f.Level), f.Client, f.Registry, f.Why)
			if f.Fix != "" && f.Level != doctor.OK {
				fmt.Fprintf(out, "     fix: %s\n", f.Fix)
			}
		}
	}
	if bad > 0 {
		return cli.Exit(fmt.Sprintf("doctor: %d way(s) pulls would bypass berth or fail", bad), 1)
	}
	return nil
}

// probe asks berth what a client would: /v2/, then a manifest HEAD of
// image as a Docker Hub mirror is asked.
func probe(ctx context.Context, base, image string) []doctor.Finding {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	status := func(method, path string) (int, error) {
		req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base, "/")+path, nil)
		if err != nil {
			return 0, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	f := doctor.Finding{Client: "berth", Registry: base}
	code, err := status(http.MethodGet, "/v2/")
	switch {
	case err != nil:
		f.Level, f.Why, f.Fix = doctor.Bad, "berth does not answer: "+err.Error(), "check the address, the firewall, and that berth runs"
		return []doctor.Finding{f}
	case code != http.StatusOK && code != http.StatusUnauthorized:
		f.Level, f.Why = doctor.Bad, fmt.Sprintf("GET /v2/ answered %d: not a registry", code)
		return []doctor.Finding{f}
	}
	f.Level, f.Why = doctor.OK, fmt.Sprintf("answers /v2/ (%d)", code)
	out := []doctor.Finding{f}
	if image == "" {
		return out
	}
	name, ref, _ := strings.Cut(image, ":")
	if ref == "" {
		ref = "latest"
	}
	code, err = status(http.MethodHead, "/v2/"+name+"/manifests/"+ref+"?ns=docker.io")
	p := doctor.Finding{Client: "berth", Registry: "docker.io", Level: doctor.OK, Why: fmt.Sprintf("HEAD %s through berth: %d", image, code)}
	switch {
	case err != nil:
		p.Level, p.Why = doctor.Bad, "HEAD "+image+": "+err.Error()
	case code == http.StatusUnauthorized:
		p.Level, p.Why, p.Fix = doctor.Bad, "the mirror answers 401 to an anonymous pull: mirrors get no credentials from Docker or containerd", "anonymous_pull = true on the repository, or credentials in hosts.toml"
	case code != http.StatusOK:
		p.Level, p.Fix = doctor.Bad, "is the image's registry one berth proxies? (berth ls, the status page)"
	}
	return append(out, p)
}
