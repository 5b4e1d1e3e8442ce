package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/berth-registry/berth/upstream"
	"golang.org/x/crypto/bcrypt"
)

// minBcryptCost is the least bcrypt cost check-config accepts without a
// warning: a cost-5 hash (what htpasswd -B writes unless told -C) takes
// 2 ms to try, so a stolen hash falls to a dictionary in hours.
const minBcryptCost = 10

// configWarnings lists what in cfg works but should not be so: weak
// password hashes, files with secrets that others can read, and routes
// that can never be taken. cfgPath is the config file ("" for none).
func configWarnings(cfg *Config, cfgPath string) []string {
	var out []string
	hashes := map[string]string{}
	if cfg.Auth.Htpasswd != "" {
		if htp, err := loadHtpasswd(cfg.Auth.Htpasswd); err == nil {
			for n, h := range htp {
				hashes[n] = h
			}
		}
	}
	for _, u := range cfg.Users {
		if u.PasswordHash != "" {
			hashes[u.Name] = u.PasswordHash
		}
	}
	names := make([]string, 0, len(hashes))
	for n := range hashes {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if c, err := bcrypt.Cost([]byte(hashes[n])); err == nil && c < minBcryptCost {
			out = append(out, fmt.Sprintf("user %q has a bcrypt cost of %d: use %d or more (berth passwd does; htpasswd -B -C %d)", n, c, minBcryptCost, minBcryptCost))
		}
	}
	for _, f := range []struct{ path, what string }{
		{cfg.Auth.Htpasswd, "the htpasswd file"},
		{cfgPath, "the config file"},
		{cfg.Auth.TokenKeyFile, "the token key file"},
	} {
		if f.path == "" {
			continue
		}
		if st, err := os.Stat(f.path); err == nil && st.Mode().Perm()&0o004 != 0 {
			if f.what == "the config file" && len(cfg.Users) == 0 && !hasSecrets(cfg) {
				continue
			}
			out = append(out, fmt.Sprintf("%s %s is readable by every user of the machine (mode %#o): chmod o-r", f.what, f.path, st.Mode().Perm()))
		}
	}
	for _, r := range cfg.Repositories {
		for _, c := range r.Credentials {
			if c.PasswordFile == "" {
				continue
			}
			if st, err := os.Stat(c.PasswordFile); err == nil && st.Mode().Perm()&0o004 != 0 {
				out = append(out, fmt.Sprintf("repository %q: password_file %s is readable by every user of the machine: chmod o-r", r.Name, c.PasswordFile))
			}
		}
	}
	return append(out, shadowedRoutes(cfg)...)
}

// hasSecrets reports whether cfg holds upstream passwords inline.
func hasSecrets(cfg *Config) bool {
	for _, r := range cfg.Repositories {
		if r.Password != "" && !strings.HasPrefix(r.Password, "${") {
			return true
		}
		for _, c := range r.Credentials {
			if c.Password != "" && !strings.HasPrefix(c.Password, "${") {
				return true
			}
		}
	}
	return false
}

// shadowedRoutes names the routes no request can take: a ?ns= host that
// an earlier proxy answers already, an allowlist pattern an earlier
// allowlist repository lists too, and on a [[listener]] the routes to
// repositories it cannot reach.
func shadowedRoutes(cfg *Config) []string {
	var out []string
	ownerOf := map[string]string{} // ns host → the proxy that answers it
	globOwner := map[string]string{}
	for _, r := range cfg.Repositories {
		if r.Kind != "proxy" {
			continue
		}
		if len(r.Hosts) > 0 {
			for _, g := range r.Hosts {
				g = strings.ToLower(g)
				if o, ok := globOwner[g]; ok {
					out = append(out, fmt.Sprintf("repository %q: hosts pattern %q is never used: repository %q lists it first", r.Name, g, o))
				} else {
					globOwner[g] = r.Name
				}
			}
			continue
		}
		urls := r.upstreamURLs()
		hosts := append([]string{strings.ToLower(upstreamHost(urls[len(urls)-1]))}, r.NSAliases...)
		for _, h := range hosts {
			h = strings.ToLower(h)
			if upstream.IsDockerHub(h) {
				h = "docker.io"
			}
			if o, ok := ownerOf[h]; ok {
				out = append(out, fmt.Sprintf("repository %q: ?ns=%s never reaches it: repository %q answers that host first", r.Name, h, o))
			} else {
				ownerOf[h] = r.Name
			}
		}
	}
	members := map[string][]string{}
	for _, r := range cfg.Repositories {
		members[r.Name] = r.Members
	}
	for _, l := range cfg.Listeners {
		reach := map[string]bool{l.Repository: true}
		var walk func(string)
		walk = func(n string) {
			for _, m := range members[n] {
				if !reach[m] {
					reach[m] = true
					walk(m)
				}
			}
		}
		walk(l.Repository)
		var outside []string
		for _, r := range cfg.Repositories {
			if !reach[r.Name] && r.Kind == "proxy" {
				outside = append(outside, r.Name)
			}
		}
		if len(outside) > 0 {
			out = append(out, fmt.Sprintf("listener %s reaches only %q and its members: ?ns= and host prefixes for %s are answered 404 there", l.Listen, l.Repository, strings.Join(outside, ", ")))
		}
	}
	return out
}
