package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/berth-registry/berth/upstream"
	"github.com/urfave/cli/v2"
)

func printConfig(w io.Writer, cfg *Config) {
	fmt.Fprintf(w, "data_dir: %s\nmax_size: %s (evict above %.0f%% down to %.0f%%)\n",
		cfg.DataDir, cfg.Storage.MaxSize, cfg.Storage.HighWater*100, cfg.Storage.LowWater*100)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nREPOSITORY\tKIND\tUPSTREAM / MEMBERS\tTAG TTL\tNOT FOUND TTL\tSERVE STALE\tANONYMOUS PULL\tCREDENTIALS")
	for _, r := range cfg.Repositories {
		cred := "-"
		if r.Username != "" || r.Password != "" || r.PasswordFile != "" {
			cred = r.Username + ":****"
		}
		target, ttl, nf, stale := strings.Join(r.upstreamURLs(), " → "), r.TagTTL.String(), r.NotFoundTTL.String(), fmt.Sprint(*r.ServeStale)
		if len(r.Hosts) > 0 {
			target = "any of " + strings.Join(r.Hosts, " ")
			if len(r.Credentials) > 0 {
				var hs []string
				for _, c := range r.Credentials {
					hs = append(hs, c.Username+"@"+c.Host)
				}
				cred = strings.Join(hs, " ")
			}
		}
		switch r.Kind {
		case "group":
			target = strings.Join(r.Members, " → ")
			if r.PushTo != "" {
				target += " (push to " + r.PushTo + ")"
			}
			ttl, nf, stale = "-", "-", "-"
		case "hosted":
			target, ttl, nf, stale = "-", "-", "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%t\t%s\n", r.Name, r.Kind, target, ttl, nf, stale, *r.AnonymousPull, cred)
	}
	tw.Flush()
	if len(cfg.Users) > 0 {
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nUSER\tPULL\tPUSH")
		for _, u := range cfg.Users {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", u.Name, strings.Join(u.Pull, " "), strings.Join(u.Push, " "))
		}
		tw.Flush()
	}
	printPolicies(w, cfg)
	printRouting(w, cfg)
	printReplication(w, cfg)
}

func upstreamHost(u string) string {
	u = strings.TrimPrefix(strings.TrimPrefix(u, "https://"), "http://")
	return strings.TrimSuffix(u, "/")
}

// checkConfigCommand: berth check-config, validate a config file and print what it would serve.
func checkConfigCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "check-config",
		Usage:     "validate a config file and print what it would serve",
		ArgsUsage: "FILE",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("check-config needs one FILE")
			}
			cfg, err := loadConfigFile(c.Args().First())
			if err != nil {
				return err
			}
			if err := cfg.setDefaults(); err != nil {
				return err
			}
			for i := range cfg.Repositories {
				if _, err := cfg.Repositories[i].password(); err != nil {
					return err
				}
			}
			if cfg.Auth.Htpasswd != "" {
				htp, err := loadHtpasswd(cfg.Auth.Htpasswd)
				if err != nil {
					return err
				}
				for _, u := range cfg.Users {
					if u.PasswordHash == "" && htp[u.Name] == "" {
						return fmt.Errorf("user %q has no password_hash and is not in %s", u.Name, cfg.Auth.Htpasswd)
					}
				}
			}
			printConfig(stdout, cfg)
			for _, warn := range configWarnings(cfg, c.Args().First()) {
				fmt.Fprintln(stderr, "warning:", warn)
			}
			return nil
		},
	}
}

// printRouting says which repository answers which listener, path prefix
// and ?ns=.
func printRouting(w io.Writer, cfg *Config) {
	fmt.Fprintln(w, "\nROUTING")
	fmt.Fprintf(w, "  listener %s → %s\n", cfg.Listen, cfg.DefaultRepository)
	for _, l := range cfg.Listeners {
		fmt.Fprintf(w, "  listener %s → %s only (and its members, for a group)\n", l.Listen, l.Repository)
	}
	for _, r := range cfg.Repositories {
		prefixes := []string{"/v2/" + r.Name + "/…"}
		var ns []string
		if r.Kind == "proxy" && len(r.Hosts) > 0 {
			fmt.Fprintf(w, "  ?ns=<host> or path /v2/<host>/… → %s, for hosts matching %s (a proxy of https://<host> each", r.Name, strings.Join(r.Hosts, ", "))
			if len(r.HTTPHosts) > 0 {
				fmt.Fprintf(w, "; plain HTTP for %s", strings.Join(r.HTTPHosts, ", "))
			}
			if r.AllowPrivateNetworks {
				fmt.Fprint(w, "; private addresses ALLOWED")
			} else {
				fmt.Fprint(w, "; hosts resolving to private, loopback, link-local or other special-purpose addresses refused")
			}
			fmt.Fprintln(w, ")")
			continue
		}
		if r.Kind == "proxy" {
			urls := r.upstreamURLs()
			host := upstreamHost(urls[len(urls)-1]) // the origin: mirrors come first
			prefixes = append(prefixes, "/v2/"+host+"/…")
			ns = append(ns, host)
			if upstream.IsDockerHub(host) {
				ns = append(ns, upstream.DockerHubHosts()...)
			}
			ns = append(ns, r.NSAliases...)
			slices.Sort(ns)
			ns = slices.Compact(ns)
		}
		fmt.Fprintf(w, "  path prefix %s → %s\n", strings.Join(prefixes, ", "), r.Name)
		if len(ns) > 0 {
			fmt.Fprintf(w, "  ?ns=%s → %s\n", strings.Join(ns, ", ?ns="), r.Name)
		}
		if r.ForwardNS {
			fmt.Fprintf(w, "  ?ns=<any other registry> → %s, passed on to its upstream (forward_ns)\n", r.Name)
		}
	}
}

// printPolicies says what each [[policy]] decides and which repositories
// it guards.
func printPolicies(w io.Writer, cfg *Config) {
	for _, pc := range cfg.Policies {
		p, err := pc.policy()
		if err != nil {
			fmt.Fprintf(w, "\nPOLICY %s: %v\n", pc.Name, err)
			continue
		}
		var guards []string
		for _, r := range cfg.Repositories {
			if r.Policy == p.Name {
				guards = append(guards, r.Name)
			}
		}
		if len(guards) == 0 {
			guards = []string{"no repository"}
		}
		fmt.Fprintf(w, "\nPOLICY %s (guards %s; fingerprint %s)\n", p.Name, strings.Join(guards, ", "), p.Fingerprint())
		rule := func(what string, v []string) {
			if len(v) > 0 {
				fmt.Fprintf(w, "  %-14s %s\n", what, strings.Join(v, " "))
			}
		}
		rule("deny digests", p.DenyDigests)
		rule("allow digests", p.AllowDigests)
		rule("deny tags", p.DenyTags)
		rule("deny images", p.Deny)
		rule("allow images", p.Allow)
		fmt.Fprintf(w, "  %-14s %s\n", "otherwise", p.Default)
		if p.RequireSignature {
			for _, v := range p.Verifiers {
				fmt.Fprintf(w, "  %-14s %s\n", "signed by", v)
			}
		}
		if p.MinAge > 0 {
			fmt.Fprintf(w, "  %-14s %s (berth approve NAME@DIGEST releases one earlier)\n", "held for", p.MinAge)
		}
	}
}
