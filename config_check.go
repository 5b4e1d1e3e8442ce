package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/internal/sigverify"
	"github.com/berth-registry/berth/server"
	"golang.org/x/crypto/bcrypt"
)

// The checks of a config file past its syntax: each names the key at
// fault (setDefaults calls them).

// setRepositoryDefaults: the [[repository]] tables. The keys of each kind
// are checked here; the rules between repositories are the server's
// (server.ValidateRepositories).
func (c *Config) setRepositoryDefaults() error {
	if len(c.Repositories) == 0 {
		return errors.New("config: no [[repository]]")
	}
	for i := range c.Repositories {
		r := &c.Repositories[i]
		where := fmt.Sprintf("repository[%d]", i)
		if r.Name != "" {
			where = fmt.Sprintf("repository %q", r.Name)
		}
		if r.TagTTL == 0 {
			r.TagTTL = Duration(time.Hour)
		}
		if r.NotFoundTTL == 0 {
			r.NotFoundTTL = Duration(time.Minute)
		}
		if r.ServeStale == nil {
			r.ServeStale = ptr(true)
		}
		switch r.Kind {
		case "proxy":
			if err := r.proxyDefaults(where); err != nil {
				return err
			}
		case "hosted":
			if r.AnonymousPull == nil {
				r.AnonymousPull = ptr(false)
			}
			if r.URL != "" || len(r.URLs) > 0 || len(r.Hosts) > 0 || len(r.Credentials) > 0 || r.ForwardNS || r.Username != "" || r.Password != "" || r.PasswordFile != "" || len(r.NSAliases) > 0 || r.LibraryPrefix != nil {
				return fmt.Errorf("config: %s: url, credentials, ns_aliases and library_prefix are for proxies", where)
			}
		case "group":
			if r.AnonymousPull == nil {
				r.AnonymousPull = ptr(true)
			}
			if r.URL != "" || len(r.URLs) > 0 || len(r.Hosts) > 0 || len(r.Credentials) > 0 || r.ForwardNS || r.Username != "" || r.Password != "" || r.PasswordFile != "" || len(r.NSAliases) > 0 || r.LibraryPrefix != nil {
				return fmt.Errorf("config: %s: url, credentials, ns_aliases and library_prefix are for proxies", where)
			}
		}
	}
	if c.DefaultRepository == "" {
		c.DefaultRepository = c.Repositories[0].Name
	}
	// The rules between repositories are the server's (one source).
	repos, err := c.repositories(nil)
	if err == nil {
		err = server.ValidateRepositories(repos, c.DefaultRepository)
	}
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// checkPrefetch: the [[prefetch]] tables.
func (c *Config) checkPrefetch() error {
	for i, p := range c.Prefetch {
		if len(p.Images) == 0 {
			return fmt.Errorf("config: prefetch[%d]: images is required", i)
		}
		for _, img := range p.Images {
			if _, _, err := server.ParseImageRef(img); err != nil {
				return fmt.Errorf("config: prefetch[%d]: %w", i, err)
			}
			if p.AllTags && strings.ContainsAny(img[strings.LastIndex(img, "/")+1:], ":@") {
				return fmt.Errorf("config: prefetch[%d]: all_tags takes image names without a tag (%q)", i, img)
			}
		}
		if p.Every != 0 && p.Every < Duration(time.Minute) {
			return fmt.Errorf("config: prefetch[%d]: every must be at least 1m", i)
		}
	}
	return nil
}

// checkListeners: [[listener]] addresses and repositories.
func (c *Config) checkListeners() error {
	addrs := map[string]string{c.Listen: "listen"}
	for i, l := range c.Listeners {
		where := fmt.Sprintf("config: listener[%d]", i)
		switch {
		case l.Listen == "":
			return fmt.Errorf("%s: listen is required", where)
		case l.Repository == "":
			return fmt.Errorf("%s (%s): repository is required", where, l.Listen)
		case !c.hasRepository(l.Repository):
			return fmt.Errorf("%s (%s): repository %q is not configured", where, l.Listen, l.Repository)
		case addrs[l.Listen] != "" && !strings.HasSuffix(l.Listen, ":0"): // :0 picks a free port each time
			return fmt.Errorf("%s: listen %q is already used by %s", where, l.Listen, addrs[l.Listen])
		}
		addrs[l.Listen] = fmt.Sprintf("listener[%d]", i)
	}
	return nil
}

// checkFiles: the files the config names exist.
func (c *Config) checkFiles() error {
	for _, f := range []struct{ key, path string }{{"tls_cert", c.TLSCert}, {"tls_key", c.TLSKey}, {"auth.htpasswd", c.Auth.Htpasswd}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("config: %s: %w", f.key, err)
		}
	}
	return nil
}

// checkGrants: every grant names a configured repository (or a glob).
func (c *Config) checkGrants() error {
	for _, u := range c.Users {
		for _, g := range append(append([]string{}, u.Pull...), u.Push...) {
			// A grant names a repository (or a glob over them) first.
			repo, _, _ := strings.Cut(g, "/")
			if !strings.ContainsAny(repo, "*?[") && !c.hasRepository(repo) {
				return fmt.Errorf("config: user %q: grant %q names repository %q, which is not configured", u.Name, g, repo)
			}
		}
	}
	return nil
}

func (c *Config) checkAuth() error {
	if c.Auth.TokenTTL == 0 {
		c.Auth.TokenTTL = Duration(5 * time.Minute)
	}
	if c.Auth.TokenTTL < Duration(10*time.Second) || c.Auth.TokenTTL > Duration(24*time.Hour) {
		return errors.New("config: auth.token_ttl must be between 10s and 24h")
	}
	if c.Auth.ExternalURL != "" {
		u, err := url.Parse(c.Auth.ExternalURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("config: auth.external_url %q: want http(s)://host[:port][/path]", c.Auth.ExternalURL)
		}
	}
	for _, p := range c.Auth.TrustedProxies {
		if _, _, err := net.ParseCIDR(p); err != nil && net.ParseIP(p) == nil {
			return fmt.Errorf("config: auth.trusted_proxies: %q is not an IP or CIDR", p)
		}
	}
	if c.Auth.MaxUploadsPerClient < 0 {
		return errors.New("config: auth.max_uploads_per_client must not be negative")
	}
	seen := map[string]bool{}
	for i, u := range c.Users {
		if u.Name == "" || strings.ContainsAny(u.Name, ":\x00") {
			return fmt.Errorf("config: user[%d]: name is required and may not contain ':'", i)
		}
		if seen[u.Name] {
			return fmt.Errorf("config: user %q: duplicate name", u.Name)
		}
		seen[u.Name] = true
		for _, g := range append(append([]string{}, u.Pull...), u.Push...) {
			if _, err := path.Match(g, ""); err != nil || g == "" {
				return fmt.Errorf("config: user %q: bad glob %q", u.Name, g)
			}
		}
		if u.PasswordHash == "" && c.Auth.Htpasswd == "" {
			return fmt.Errorf("config: user %q: password_hash is required (or auth.htpasswd)", u.Name)
		}
		if u.PasswordHash != "" {
			if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
				return fmt.Errorf("config: user %q: password_hash is not a bcrypt hash (make one with berth passwd)", u.Name)
			}
		}
	}
	return nil
}

// loadHtpasswd reads user:bcrypt-hash lines.
func loadHtpasswd(file string) (map[string]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("auth.htpasswd: %w", err)
	}
	out := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hash, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("auth.htpasswd line %d: want user:hash", i+1)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("auth.htpasswd line %d (%s): only bcrypt hashes are accepted (htpasswd -B)", i+1, name)
		}
		out[name] = hash
	}
	return out, nil
}

// rangeDefaults fills in and checks a proxy's range_fetch_* settings.
func (r *RepositoryConfig) rangeDefaults(where string) error {
	if r.RangeFetchMin == 0 {
		// The first range as long as a chunk: longer, it ends after the
		// first wave of pieces, and the readers wait at its end.
		r.RangeFetchMin = 16 << 20
	}
	if r.RangeFetchChunk == 0 {
		r.RangeFetchChunk = 16 << 20
	}
	if r.RangeFetchParallel == 0 {
		r.RangeFetchParallel = 4
	}
	if r.RangeFetchMaxParallel == 0 {
		r.RangeFetchMaxParallel = max(16, r.RangeFetchParallel)
	}
	switch {
	case r.RangeFetchMin < 0 || r.RangeFetchChunk < 0:
		return fmt.Errorf("config: %s: range_fetch_min and range_fetch_chunk must be positive sizes", where)
	case r.RangeFetchChunk < 1<<20:
		return fmt.Errorf("config: %s: range_fetch_chunk %s is below 1MiB (each range is a request)", where, r.RangeFetchChunk)
	case r.RangeFetchParallel < 1 || r.RangeFetchParallel > 32:
		return fmt.Errorf("config: %s: range_fetch_parallel %d is not between 1 (one stream per blob) and 32", where, r.RangeFetchParallel)
	case r.RangeFetchMaxParallel < r.RangeFetchParallel || r.RangeFetchMaxParallel > 32:
		return fmt.Errorf("config: %s: range_fetch_max_parallel %d is not between range_fetch_parallel (%d) and 32", where, r.RangeFetchMaxParallel, r.RangeFetchParallel)
	}
	return nil
}

// checkHosts validates the allowlist keys of a proxy.
func (r *RepositoryConfig) checkHosts(where string) error {
	if len(r.Hosts) == 0 && (len(r.HTTPHosts) > 0 || len(r.Credentials) > 0 || r.AllowPrivateNetworks) {
		return fmt.Errorf("config: %s: http_hosts, credentials and allow_private_networks go with hosts", where)
	}
	for _, g := range append(append([]string{}, r.Hosts...), r.HTTPHosts...) {
		if _, err := path.Match(g, ""); err != nil || g == "" || strings.Contains(g, "/") {
			return fmt.Errorf("config: %s: host pattern %q: want a host[:port] glob such as \"*.gcr.io\"", where, g)
		}
	}
	for i, c := range r.Credentials {
		switch {
		case c.Host == "":
			return fmt.Errorf("config: %s: credentials[%d]: host is required", where, i)
		case !matchAny(r.Hosts, c.Host):
			return fmt.Errorf("config: %s: credentials[%d]: host %q matches none of hosts", where, i, c.Host)
		case c.Password != "" && c.PasswordFile != "":
			return fmt.Errorf("config: %s: credentials[%d]: password and password_file are exclusive", where, i)
		}
	}
	return nil
}

func matchAny(globs []string, host string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, host); ok {
			return true
		}
	}
	return false
}

// proxyDefaults: the keys of a proxy repository.
func (r *RepositoryConfig) proxyDefaults(where string) error {
	if r.AnonymousPull == nil {
		r.AnonymousPull = ptr(true)
	}
	if r.EagerLayers == nil {
		r.EagerLayers = ptr(true)
	}
	if err := r.rangeDefaults(where); err != nil {
		return err
	}
	if err := r.checkHosts(where); err != nil {
		return err
	}
	switch {
	case len(r.Hosts) > 0 && r.ForwardNS:
		return fmt.Errorf("config: %s: forward_ns is for a proxy with url (its upstream picks the registry by ns)", where)
	case len(r.Hosts) > 0 && (r.URL != "" || len(r.URLs) > 0):
		return fmt.Errorf("config: %s: hosts and url are exclusive (hosts serves any registry it matches)", where)
	case len(r.Hosts) > 0:
	case r.URL == "" && len(r.URLs) == 0:
		return fmt.Errorf("config: %s: url is required for a proxy (or urls, the list form)", where)
	case r.URL != "" && len(r.URLs) > 0:
		return fmt.Errorf("config: %s: url and urls are exclusive (urls is the list form)", where)
	}
	for _, raw := range r.upstreamURLs() {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("config: %s: url %q: want http(s)://host[:port]", where, raw)
		}
	}
	if r.MaxUpstreamConnections < 0 || r.MaxUpstreamBandwidth < 0 {
		return fmt.Errorf("config: %s: max_upstream_connections and max_upstream_bandwidth must not be negative", where)
	}
	if r.Password != "" && r.PasswordFile != "" {
		return fmt.Errorf("config: %s: password and password_file are exclusive", where)
	}
	return nil
}

// checkPolicies: the [[policy]] tables, and each repository's policy.
func (c *Config) checkPolicies() error {
	seen := map[string]bool{}
	for i := range c.Policies {
		p, err := c.Policies[i].policy()
		if err != nil {
			return fmt.Errorf("config: policy %q: %w", c.Policies[i].Name, err)
		}
		if p.Name == "" {
			return fmt.Errorf("config: policy[%d]: name is required", i)
		}
		if seen[p.Name] {
			return fmt.Errorf("config: policy %q is defined twice", p.Name)
		}
		seen[p.Name] = true
		if err := p.Check(); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	for _, r := range c.Repositories {
		if r.Policy != "" && !seen[r.Policy] {
			return fmt.Errorf("config: repository %q: policy %q: no [[policy]] has that name", r.Name, r.Policy)
		}
	}
	return nil
}

// policy is what internal/policy decides with: its defaults set, its
// keys and trusted roots read (an error names the file); what else is
// wrong with it is Check's, which checkPolicies calls.
func (pc PolicyConfig) policy() (*policy.Policy, error) {
	p := &policy.Policy{Name: pc.Name, Default: policy.Decision(pc.Default), Allow: pc.Allow, Deny: pc.Deny,
		DenyTags: pc.DenyTags, AllowDigests: pc.AllowDigests, DenyDigests: pc.DenyDigests,
		MinAge: time.Duration(pc.MinAge), RequireSignature: pc.RequireSignature}
	for _, f := range pc.Keys {
		b, err := readSmallFile(f)
		if err == nil {
			var v *sigverify.Verifier
			if v, err = sigverify.NewKey(f, b); err == nil {
				p.Verifiers = append(p.Verifiers, v)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("keys: %w", err)
		}
	}
	for i, k := range pc.Keyless {
		if k.TrustedRoot == "" {
			return nil, fmt.Errorf("keyless[%d]: trusted_root is required (berth never fetches one)", i)
		}
		b, err := readSmallFile(k.TrustedRoot)
		if err == nil {
			var v *sigverify.Verifier
			name := fmt.Sprintf("%s (identity %s%s, issuer %s%s)", k.TrustedRoot, k.Identity, k.IdentityRegexp, k.Issuer, k.IssuerRegexp)
			id := sigverify.Identity{Subject: k.Identity, SubjectRegexp: k.IdentityRegexp, Issuer: k.Issuer, IssuerRegexp: k.IssuerRegexp}
			if v, err = sigverify.NewKeyless(name, b, id); err == nil {
				p.Verifiers = append(p.Verifiers, v)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("keyless[%d]: %w", i, err)
		}
	}
	p.Check()
	return p, nil
}

// readSmallFile reads a key or trusted root: at most 4 MiB.
func readSmallFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4<<20+1))
	if err == nil && len(b) > 4<<20 {
		err = fmt.Errorf("%s: larger than 4 MiB", name)
	}
	return b, err
}
