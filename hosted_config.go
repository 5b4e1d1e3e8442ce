package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/internal/webhook"
	"github.com/berth-registry/berth/server"
	"github.com/prometheus/client_golang/prometheus"
)

// RetentionConfig is a hosted repository's [repository.retention]: what
// stays (see server.Retention).
type RetentionConfig struct {
	KeepNewest    int      `toml:"keep_newest"`    // the N newest tags of each image, by push time
	Keep          []string `toml:"keep"`           // globs of tags that always stay
	OlderThan     Duration `toml:"older_than"`     // tags pushed longer ago go (unless kept)
	UntaggedAfter Duration `toml:"untagged_after"` // untagged manifests go this long after their push
	Every         Duration `toml:"every"`          // how often it runs (none: berth retention runs it)
}

// AuditConfig is [audit]: where the audit log goes.
type AuditConfig struct {
	// File receives one JSON line per event ("-": stdout; none: no audit
	// log). Reopened on SIGHUP, for log rotation.
	File string `toml:"file"`
}

// checkHostedRules: immutable_tags and retention, on hosted repositories
// only.
func (c *Config) checkHostedRules() error {
	for _, r := range c.Repositories {
		where := fmt.Sprintf("repository %q", r.Name)
		if r.Kind != server.KindHosted && (len(r.ImmutableTags) > 0 || r.Retention != nil) {
			return fmt.Errorf("config: %s: immutable_tags and retention are for hosted repositories", where)
		}
		for _, g := range r.ImmutableTags {
			if _, err := path.Match(g, ""); err != nil || g == "" {
				return fmt.Errorf("config: %s: immutable_tags: bad glob %q", where, g)
			}
		}
		rt := r.Retention
		if rt == nil {
			continue
		}
		for _, g := range rt.Keep {
			if _, err := path.Match(g, ""); err != nil || g == "" {
				return fmt.Errorf("config: %s: retention.keep: bad glob %q", where, g)
			}
		}
		switch {
		case rt.KeepNewest < 0:
			return fmt.Errorf("config: %s: retention.keep_newest must not be negative", where)
		case rt.KeepNewest == 0 && rt.OlderThan == 0 && rt.UntaggedAfter == 0:
			return fmt.Errorf("config: %s: retention removes nothing: set keep_newest, older_than or untagged_after", where)
		case rt.Every != 0 && rt.Every < Duration(time.Minute):
			return fmt.Errorf("config: %s: retention.every must be at least 1m", where)
		}
	}
	return nil
}

// retention is the server's Retention of rc (nil: none).
func (rc *RepositoryConfig) retention() *server.Retention {
	if rc.Retention == nil {
		return nil
	}
	rt := rc.Retention
	return &server.Retention{KeepNewest: rt.KeepNewest, Keep: rt.Keep, OlderThan: time.Duration(rt.OlderThan),
		UntaggedAfter: time.Duration(rt.UntaggedAfter), Every: time.Duration(rt.Every)}
}

// WebhookConfig is one [[webhook]]: a receiver of events in
// distribution's notification format.
type WebhookConfig struct {
	Name         string            `toml:"name"`
	URL          string            `toml:"url"`
	Actions      []string          `toml:"actions"`      // default push, delete
	Repositories []string          `toml:"repositories"` // globs of REPOSITORY/IMAGE; default all
	Headers      map[string]string `toml:"headers"`      // ${ENV} is expanded
	Timeout      Duration          `toml:"timeout"`      // default 5s
	MaxQueued    int               `toml:"max_queued"`   // default 10000
}

// webhookActions are the actions an endpoint may ask for.
var webhookActions = []string{audit.Push, audit.Delete, audit.TagMoved, audit.LoginFailed, audit.Denied, audit.Policy,
	audit.Retention, audit.Replicate, audit.Admin, audit.Reload}

// checkWebhooks: the [[webhook]] tables.
func (c *Config) checkWebhooks() error {
	seen := map[string]bool{}
	for i, w := range c.Webhooks {
		where := fmt.Sprintf("config: webhook[%d] %q", i, w.Name)
		switch u, err := url.Parse(w.URL); {
		case w.Name == "" || seen[w.Name] || strings.ContainsAny(w.Name, " /\x00"):
			return fmt.Errorf("%s: want a name of its own, without spaces or slashes", where)
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			return fmt.Errorf("%s: url: want http(s)://host[:port]/path", where)
		case w.MaxQueued < 0:
			return fmt.Errorf("%s: max_queued must not be negative", where)
		}
		seen[w.Name] = true
		for _, a := range w.Actions {
			if !slices.Contains(webhookActions, a) {
				return fmt.Errorf("%s: action %q: want one of %s", where, a, strings.Join(webhookActions, ", "))
			}
		}
		for _, g := range w.Repositories {
			if _, err := path.Match(g, ""); err != nil || g == "" {
				return fmt.Errorf("%s: repositories: bad glob %q", where, g)
			}
		}
	}
	return nil
}

// events is where audit events go: the audit log, the webhooks.
type events struct {
	log   *audit.Log
	hooks *webhook.Dispatcher
	sinks audit.Sinks
}

// openEvents opens the audit log and the webhook queue cfg names.
func openEvents(cfg *Config, log *slog.Logger, reg prometheus.Registerer) (*events, error) {
	ev := &events{}
	if len(cfg.Webhooks) > 0 {
		var eps []webhook.Endpoint
		for _, w := range cfg.Webhooks {
			hdr := map[string]string{}
			for k, v := range w.Headers {
				hdr[k] = os.ExpandEnv(v)
			}
			eps = append(eps, webhook.Endpoint{Name: w.Name, URL: w.URL, Actions: w.Actions, Repositories: w.Repositories,
				Headers: hdr, Timeout: time.Duration(w.Timeout), MaxQueued: w.MaxQueued})
		}
		source := cfg.Listen
		if u, err := url.Parse(cfg.Auth.ExternalURL); err == nil && u.Host != "" {
			source = u.Host
		}
		d, err := webhook.Open(webhook.Options{Path: filepath.Join(cfg.DataDir, "webhooks.db"), Endpoints: eps, Source: source, Registerer: reg, Logger: log})
		if err != nil {
			return nil, err
		}
		ev.hooks = d
		ev.sinks = append(ev.sinks, d)
	}
	if cfg.Audit.File != "" {
		l, err := audit.Open(cfg.Audit.File)
		if err != nil {
			return nil, err
		}
		l.OnError = func(err error) { log.Error("audit log: a line was lost", "file", cfg.Audit.File, "err", err) }
		ev.log = l
		ev.sinks = append(ev.sinks, l)
	}
	return ev, nil
}

func (e *events) Record(ev audit.Event) {
	if e != nil {
		e.sinks.Record(ev)
	}
}

// reopen opens the audit log again (SIGHUP, after log rotation).
func (e *events) reopen() error {
	if e == nil || e.log == nil {
		return nil
	}
	return e.log.Reopen()
}

// run delivers the webhooks until ctx ends.
func (e *events) run(ctx context.Context) {
	if e != nil && e.hooks != nil {
		e.hooks.Run(ctx)
	}
}

func (e *events) close() {
	if e == nil {
		return
	}
	if e.log != nil {
		e.log.Close()
	}
	if e.hooks != nil {
		e.hooks.Close()
	}
}

// joinWords is s as a list in a sentence.
func joinWords(s []string) string { return strings.Join(s, "; ") }
