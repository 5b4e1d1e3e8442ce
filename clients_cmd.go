package main

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/berth-registry/berth/internal/clientcfg"
	"github.com/berth-registry/berth/server"
	"github.com/berth-registry/berth/upstream"
	"github.com/urfave/cli/v2"
)

// clientsCommand: berth clients, the configuration files of each client
// kind, from berth's configuration.
func clientsCommand(stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "clients",
		Usage: "write the files that make Docker, containerd, podman/CRI-O, k3s/rke2 and kind pull through berth",
		Description: "From berth's configuration: Docker's daemon.json (when berth's default repository proxies Docker Hub), a containerd\n" +
			"certs.d/<registry>/hosts.toml per proxied registry (and _default for an allowlist), a registries.conf.d drop-in,\n" +
			"k3s' registries.yaml and a kind cluster config. Printed, or written under --out DIR at their paths on a node.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "config `FILE` (default: the built-in Docker Hub proxy)"},
			&cli.StringFlag{Name: "url", Usage: "berth's `URL` as clients reach it (default: [auth] external_url, else this host's name and the listen port)"},
			&cli.StringFlag{Name: "ca", Usage: "`PATH` of berth's CA certificate on the nodes (https with a private CA)"},
			&cli.StringFlag{Name: "out", Usage: "write the files under `DIR` (DIR/etc/docker/daemon.json, ...) instead of printing them"},
			&cli.StringFlag{Name: "username", Usage: "a berth `USER` for nodes, when pulls need credentials (containerd's hosts.toml and k3s' registries.yaml carry them; written 0600)"},
			&cli.StringFlag{Name: "password-file", Usage: "`FILE` whose first line is that user's password (or BERTH_CLIENT_PASSWORD)"},
		},
		Action: func(c *cli.Context) error { return runClients(c, stdout) },
	}
}

func runClients(c *cli.Context, out io.Writer) error {
	cfg, err := storageConfig(c)
	if err != nil {
		return err
	}
	o, err := clientOptions(cfg, c.String("url"))
	if err != nil {
		return cli.Exit("clients: "+err.Error(), 2)
	}
	o.CA = c.String("ca")
	if o.Username = c.String("username"); o.Username != "" {
		o.Password = os.Getenv("BERTH_CLIENT_PASSWORD")
		if f := c.String("password-file"); f != "" {
			if o.Password, err = readPassword("clients", "", f); err != nil {
				return err
			}
		}
		if o.Password == "" {
			return cli.Exit("clients: --username needs --password-file or BERTH_CLIENT_PASSWORD", 2)
		}
	}
	files, err := clientcfg.Generate(o)
	if err != nil {
		return cli.Exit("clients: "+err.Error(), 2)
	}
	dir := c.String("out")
	for _, f := range files {
		if dir == "" {
			fmt.Fprintf(out, "# ==> %s (%s) <==\n%s# %s\n\n", f.Path, f.Client, f.Content, f.Note)
			continue
		}
		p := filepath.Join(dir, strings.TrimPrefix(f.Path, "/"))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if f.Secret {
			mode = 0o600
		}
		if err := os.WriteFile(p, []byte(f.Content), mode); err != nil {
			return err
		}
		fmt.Fprintf(out, "%-10s %s\n           %s\n", f.Client, p, f.Note)
	}
	return nil
}

// clientOptions describes berth as cfg makes it, reached at rawURL (""
// for external_url or this host's name and listen port).
func clientOptions(cfg *Config, rawURL string) (clientcfg.Options, error) {
	o := clientRegistries(cfg)
	o.URL = rawURL
	if o.URL == "" {
		o.URL = cfg.Auth.ExternalURL
	}
	if o.URL == "" {
		host, _ := os.Hostname()
		_, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil || host == "" {
			return o, fmt.Errorf("say how clients reach berth: --url http(s)://host:port")
		}
		scheme := "http"
		if cfg.TLSCert != "" {
			scheme = "https"
		}
		o.URL = scheme + "://" + net.JoinHostPort(host, port)
	}
	return o, nil
}

// clientRegistries is what clients are told of cfg's repositories (no
// URL: the status page uses the one the browser came by).
func clientRegistries(cfg *Config) clientcfg.Options {
	var o clientcfg.Options
	hub := map[string]bool{} // proxies of Docker Hub
	for _, r := range cfg.Repositories {
		if r.Kind != server.KindProxy {
			continue
		}
		if len(r.Hosts) > 0 || r.ForwardNS {
			o.Default = true
		}
		urls := r.upstreamURLs()
		if len(urls) == 0 {
			continue
		}
		origin := urls[len(urls)-1]
		u, err := url.Parse(origin)
		if err != nil {
			continue
		}
		host := u.Host
		if upstream.IsDockerHub(u.Hostname()) {
			host = "docker.io"
		}
		o.Registries = append(o.Registries, clientcfg.Registry{Host: host, Upstream: origin, Repository: r.Name})
		for _, a := range r.NSAliases {
			up := "https://" + a
			if a == "docker.io" {
				up = "https://registry-1.docker.io"
			}
			o.Registries = append(o.Registries, clientcfg.Registry{Host: a, Upstream: up, Repository: r.Name})
		}
		if host == "docker.io" || slices.Contains(r.NSAliases, "docker.io") {
			hub[r.Name] = true
		}
	}
	if def := cfg.repository(cfg.DefaultRepository); def != nil {
		o.DockerMirror = hub[def.Name] || slices.ContainsFunc(def.Members, func(m string) bool { return hub[m] })
	}
	return o
}
