package main

import (
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/server"
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

// events is where audit events go: the audit log, the webhooks.
type events struct {
	log   *audit.Log
	sinks audit.Sinks
}

// openEvents opens the audit log cfg names.
func openEvents(cfg *Config, log *slog.Logger) (*events, error) {
	ev := &events{}
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

func (e *events) close() {
	if e != nil && e.log != nil {
		e.log.Close()
	}
}

// joinWords is s as a list in a sentence.
func joinWords(s []string) string { return strings.Join(s, "; ") }
