package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/replicate"
	"github.com/berth-registry/berth/server"
	"github.com/berth-registry/berth/upstream"
)

// ReplicateConfig is one [[replicate]]: a registry's repositories copied
// into a hosted repository at start and then every Every (zero: at start
// only; berth replicate runs it when asked).
type ReplicateConfig struct {
	Name string `toml:"name"`
	// From is the source: a registry URL, or the name of a proxy
	// repository (its upstream, credentials, caps and pull budget).
	From         string `toml:"from"`
	Username     string `toml:"username"`
	Password     string `toml:"password"` // ${ENV} is expanded
	PasswordFile string `toml:"password_file"`
	// CAFile is a PEM bundle the source's certificate must chain to
	// (besides the system's roots); InsecureSkipVerify trusts any.
	CAFile             string `toml:"ca_file"`
	InsecureSkipVerify bool   `toml:"insecure_skip_verify"`
	// The source's caps, as a proxy's (0: none).
	MaxUpstreamConnections int  `toml:"max_upstream_connections"`
	MaxUpstreamBandwidth   Rate `toml:"max_upstream_bandwidth"`

	To           string   `toml:"to"` // a hosted repository, optionally /prefix
	Repositories []string `toml:"repositories"`
	Exclude      []string `toml:"exclude"`
	Tags         []string `toml:"tags"`
	Semver       string   `toml:"semver"`
	Newest       int      `toml:"newest"`
	Platforms    []string `toml:"platforms"`
	Referrers    *bool    `toml:"referrers"` // default true
	Delete       bool     `toml:"delete"`
	Concurrency  int      `toml:"concurrency"`
	Every        Duration `toml:"every"`
	// NotifyToken (${ENV} is expanded) lets the source's webhooks ask for
	// a run at once: POST /replicate/notify/<name> with "Authorization:
	// Bearer <token>" (a primary berth's [[webhook]] does).
	NotifyToken string `toml:"notify_token"`
}

// rule is the replicate.Rule of rc.
func (rc *ReplicateConfig) rule() replicate.Rule {
	return replicate.Rule{Name: rc.Name, To: rc.To, Repositories: rc.Repositories, Exclude: rc.Exclude, Tags: rc.Tags,
		Semver: rc.Semver, Newest: rc.Newest, Platforms: rc.Platforms, NoReferrers: rc.Referrers != nil && !*rc.Referrers,
		Delete: rc.Delete, Concurrency: rc.Concurrency}
}

// checkReplicate: the [[replicate]] tables.
func (c *Config) checkReplicate() error {
	seen := map[string]bool{}
	for i, rc := range c.Replicate {
		where := fmt.Sprintf("config: replicate[%d] %q", i, rc.Name)
		if seen[rc.Name] {
			return fmt.Errorf("%s: a second rule of that name", where)
		}
		seen[rc.Name] = true
		rule := rc.rule()
		if err := rule.Check(); err != nil {
			return fmt.Errorf("config: %w", err)
		}
		to, _, _ := strings.Cut(rc.To, "/")
		if r := c.repository(to); r == nil || r.Kind != server.KindHosted {
			return fmt.Errorf("%s: to = %q: no hosted repository %q", where, rc.To, to)
		}
		if r := c.repository(rc.From); r != nil {
			if r.Kind != server.KindProxy || len(r.Hosts) > 0 {
				return fmt.Errorf("%s: from = %q: a proxy repository with a url, or a registry URL", where, rc.From)
			}
			if rc.Username != "" || rc.Password != "" || rc.PasswordFile != "" || rc.CAFile != "" || rc.InsecureSkipVerify {
				return fmt.Errorf("%s: from names proxy repository %q: its credentials and TLS settings are used (drop them here)", where, rc.From)
			}
		} else if u, err := url.Parse(rc.From); err == nil && u.User != nil {
			return fmt.Errorf("%s: from: put credentials in username and password, not in the URL", where)
		} else if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s: from = %q: want a registry URL (https://host[:port]) or a proxy repository's name", where, rc.From)
		}
		if rc.Password != "" && rc.PasswordFile != "" {
			return fmt.Errorf("%s: password and password_file are exclusive", where)
		}
		if rc.NotifyToken != "" && len(os.ExpandEnv(rc.NotifyToken)) < 16 {
			return fmt.Errorf("%s: notify_token: want at least 16 characters (it is the only thing between the internet and a run)", where)
		}
		if rc.Every != 0 && rc.Every < Duration(5*time.Second) {
			return fmt.Errorf("%s: every must be at least 5s", where)
		}
	}
	return nil
}

// repository is the [[repository]] named name (nil: none).
func (c *Config) repository(name string) *RepositoryConfig {
	for i := range c.Repositories {
		if c.Repositories[i].Name == name {
			return &c.Repositories[i]
		}
	}
	return nil
}

// replication makes the configured rules' sources: a proxy's own
// upstream client, or a client of the rule's URL with its caps.
func replication(cfg *Config, repos []server.Repository, log *slog.Logger, m upstreamMetrics) (*server.Replication, error) {
	repl := &server.Replication{}
	for _, rc := range cfg.Replicate {
		var src replicate.Source
		for _, r := range repos {
			if r.Name == rc.From && r.Upstream != nil {
				s, ok := r.Upstream.(replicate.Source)
				if !ok {
					return nil, fmt.Errorf("replicate %q: the upstream of %q cannot list a catalog", rc.Name, rc.From)
				}
				src = s
			}
		}
		if src == nil {
			pw, err := readPassword(fmt.Sprintf("replicate %q", rc.Name), rc.Password, rc.PasswordFile)
			if err != nil {
				return nil, err
			}
			tlsCfg, err := sourceTLS(rc.CAFile, rc.InsecureSkipVerify)
			if err != nil {
				return nil, fmt.Errorf("replicate %q: %w", rc.Name, err)
			}
			c, err := upstream.New(upstream.Options{URL: rc.From, Username: rc.Username, Password: pw, TLS: tlsCfg,
				UserAgent: "berth/" + versionString(), Logger: log, Observe: m.observe("replicate:" + rc.Name),
				Caps: upstream.NewCaps(rc.MaxUpstreamConnections, int64(rc.MaxUpstreamBandwidth))})
			if err != nil {
				return nil, fmt.Errorf("replicate %q: %w", rc.Name, err)
			}
			src = c
		}
		repl.Rules = append(repl.Rules, server.ReplicationRule{Rule: rc.rule(), Source: src, Every: time.Duration(rc.Every),
			NotifyToken: os.ExpandEnv(rc.NotifyToken), Wake: make(chan struct{}, 1)})
	}
	// berth replicate --from: a source named on the command line, through
	// the admin listener (root's): no caps but the tool's own.
	repl.NewSource = func(spec server.SourceSpec) (replicate.Source, error) {
		u, err := url.Parse(spec.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, errors.New("want a registry URL, https://host[:port]")
		}
		tlsCfg, err := sourceTLS("", spec.Insecure)
		if err != nil {
			return nil, err
		}
		return upstream.New(upstream.Options{URL: u.Scheme + "://" + u.Host, Username: spec.Username, Password: spec.Password, TLS: tlsCfg,
			UserAgent: "berth/" + versionString(), Logger: log, Observe: m.observe("replicate")})
	}
	return repl, nil
}

// sourceTLS is the TLS configuration of a source with a private CA or
// none checked (nil: the system's roots).
func sourceTLS(caFile string, insecure bool) (*tls.Config, error) {
	if caFile == "" && !insecure {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure} //nolint:gosec // the operator's explicit choice
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", caFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// printReplication lists the [[replicate]] rules for check-config.
func printReplication(w io.Writer, cfg *Config) {
	if len(cfg.Replicate) == 0 {
		return
	}
	fmt.Fprintln(w, "\nREPLICATION")
	for _, rc := range cfg.Replicate {
		when := "at start; berth replicate " + rc.Name + " runs it again"
		if rc.Every != 0 {
			when = "at start and every " + time.Duration(rc.Every).String()
		}
		what := "the whole catalog"
		if len(rc.Repositories) > 0 {
			what = strings.Join(rc.Repositories, " ")
		}
		cred := ""
		if rc.Username != "" {
			cred = " as " + rc.Username
		}
		fmt.Fprintf(w, "  %s: %s of %s%s → %s, %s", rc.Name, what, rc.From, cred, rc.To, when)
		if rc.Delete {
			fmt.Fprint(w, "; deletions mirrored")
		}
		fmt.Fprintln(w)
	}
}
