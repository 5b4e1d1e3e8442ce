package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/berth-registry/berth/server"
	"github.com/berth-registry/berth/store"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/urfave/cli/v2"
)

// adminTarget is where the operator commands reach the running berth:
// its admin listener (--server unix:PATH or http://HOST:PORT, else the
// config's admin_listen, by default data_dir/admin.sock). It returns the
// base URL and the transport to use.
func adminTarget(c *cli.Context, cfg *Config) (base string, rt http.RoundTripper) {
	network, addr := adminAddr(cfg)
	if u := c.String("server"); u != "" {
		if !strings.HasPrefix(u, "unix:") {
			return strings.TrimSuffix(u, "/"), http.DefaultTransport
		}
		network, addr = "unix", strings.TrimPrefix(u, "unix:")
	}
	if network == "tcp" {
		return "http://" + addr, http.DefaultTransport
	}
	return "http://localhost", &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}}
}

// adminClient is an HTTP client for adminTarget.
func adminClient(c *cli.Context, cfg *Config) (string, *http.Client) {
	base, rt := adminTarget(c, cfg)
	return base, &http.Client{Transport: rt}
}

// notRunning explains a failure to reach the admin listener.
func notRunning(c *cli.Context, cfg *Config, what string, err error) error {
	network, addr := adminAddr(cfg)
	where := network + ":" + addr
	if u := c.String("server"); u != "" {
		where = u
	}
	return fmt.Errorf("%s needs a running berth: none answers at %s (give its config with -c FILE, or --server unix:SOCKET or http://ADMIN_HOST:PORT): %w",
		what, where, err)
}

var serverFlags = []cli.Flag{
	&cli.StringFlag{Name: "config", Aliases: []string{"c"}, EnvVars: []string{"BERTH_CONFIG"}, Usage: "TOML config `FILE` (for the listen address)"},
	&cli.StringFlag{Name: "server", Usage: "the running berth's admin listener, `unix:SOCKET or http://HOST:PORT` (default: the config's admin_listen, data_dir/admin.sock)"},
}

// registryOptions are the ggcr options for talking to berth.
// registryTarget is the registry export and import talk to: --server URL
// (over the network, with --creds), else the admin listener, which acts
// with full rights like prefetch (the same rule for all three: the admin
// socket is the operator's; the network needs credentials).
func registryTarget(c *cli.Context, cfg *Config) (base string, opts []remote.Option) {
	opts = registryOptions(c)
	if u := c.String("server"); u != "" && !strings.HasPrefix(u, "unix:") {
		return strings.TrimSuffix(u, "/"), opts
	}
	base, rt := adminTarget(c, cfg)
	return base, append(opts, remote.WithTransport(rt))
}

// explainRegistryErr turns the registry's 401 or 403 (which a HEAD
// reports as "HEAD responses have no body") into what to do about it.
func explainRegistryErr(err error) error {
	var te *transport.Error
	if !errors.As(err, &te) {
		return err
	}
	// A sentence from the registry's codes and messages, not the Go
	// rendering of their details.
	var msgs []string
	for _, d := range te.Errors {
		msgs = append(msgs, fmt.Sprintf("%s: %s", d.Code, d.Message))
	}
	what := fmt.Sprintf("berth answered %d %s", te.StatusCode, http.StatusText(te.StatusCode))
	if len(msgs) > 0 {
		what += ": " + strings.Join(msgs, "; ")
	}
	if te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden {
		return fmt.Errorf("%s: give a user's credentials with --creds USER:PASSWORD, or run the command on the berth host without --server (over its admin socket)", what)
	}
	return errors.New(what)
}

func registryOptions(c *cli.Context) []remote.Option {
	opts := []remote.Option{remote.WithContext(c.Context)}
	if creds := c.String("creds"); creds != "" {
		u, p, _ := strings.Cut(creds, ":")
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: u, Password: p}))
	}
	return opts
}

func berthRef(base, image string) (name.Reference, error) {
	host := strings.TrimPrefix(strings.TrimPrefix(base, "https://"), "http://")
	var nopts []name.Option
	if strings.HasPrefix(base, "http://") {
		nopts = append(nopts, name.Insecure)
	}
	return name.ParseReference(host+"/"+image, nopts...)
}

// configFlag is -c/--config of the commands that read the config.
func configFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Aliases: []string{"c"}, EnvVars: []string{"BERTH_CONFIG"}, Usage: "TOML config `FILE`"}
}

// openOps returns the Ops of the berth cfg names, and what they act on
// ("the data dir" or "the running berth"): the data dir opened offline
// when no berth runs, else the running berth's admin listener (always
// with --server). When the data dir is in use, a line saying so goes to
// note (may be nil). done releases the store.
func openOps(c *cli.Context, cfg *Config, note io.Writer) (ops server.Ops, from string, done func(), err error) {
	if c.String("server") == "" {
		if err := dataDirExists(cfg.DataDir); err != nil {
			return nil, "", nil, err
		}
		st, err := store.Open(cfg.DataDir, store.Options{ManualEviction: true, OpenTimeout: 300 * time.Millisecond, KeepTmp: true})
		switch {
		case err == nil:
			known := make([]string, len(cfg.Repositories))
			for i, r := range cfg.Repositories {
				known[i] = r.Name
			}
			return server.StoreOps{Store: st, Known: known}, "the data dir", func() { st.Close() }, nil
		case !errors.Is(err, store.ErrLocked):
			return nil, "", nil, err
		}
		if note != nil {
			fmt.Fprintf(note, "data dir %s is in use by a running berth; asking it\n", cfg.DataDir)
		}
	}
	base, client := adminClient(c, cfg)
	return server.AdminClient{Base: base, HTTP: client}, "the running berth", func() {}, nil
}

// opsError says what went wrong with command what: no berth answering,
// something else than its admin listener answering, or its answer.
func opsError(c *cli.Context, cfg *Config, what string, err error) error {
	var unreachable *server.UnreachableError
	switch {
	case errors.As(err, &unreachable):
		return notRunning(c, cfg, what, unreachable.Err)
	case errors.Is(err, server.ErrNotAdmin):
		base, _ := adminTarget(c, cfg)
		return fmt.Errorf("%s: %s is not a berth admin listener (it answered 404): give --server unix:SOCKET or http://HOST:PORT of admin_listen (default unix:DATA_DIR/admin.sock), not the registry's address", what, base)
	}
	return fmt.Errorf("%s: %w", what, err)
}
