package main

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/berth-registry/berth/internal/audit"
)

// needsRestart names what differs between the running config and the one
// SIGHUP read that a reload does not apply: repositories (added, removed,
// changed), listeners, storage, limits, prefetch schedules, the data dir,
// addresses and the auth settings other than users. The users and their
// passwords, the log level and the TLS certificate's content are applied.
func needsRestart(running, next *Config) []string {
	var out []string
	byName := func(rs []RepositoryConfig) map[string]RepositoryConfig {
		m := map[string]RepositoryConfig{}
		for _, r := range rs {
			m[r.Name] = r
		}
		return m
	}
	old, nu := byName(running.Repositories), byName(next.Repositories)
	var names []string
	for n := range old {
		names = append(names, n)
	}
	for n := range nu {
		if _, ok := old[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		o, inOld := old[n]
		x, inNew := nu[n]
		switch {
		case !inOld:
			out = append(out, fmt.Sprintf("repository %q added", n))
		case !inNew:
			out = append(out, fmt.Sprintf("repository %q removed", n))
		case !reflect.DeepEqual(withoutPolicy(o), withoutPolicy(x)):
			out = append(out, fmt.Sprintf("repository %q changed", n))
		}
	}
	for _, f := range []struct {
		what     string
		old, new any
	}{
		{"[[listener]]", running.Listeners, next.Listeners},
		{"default_repository", running.DefaultRepository, next.DefaultRepository},
		{"admin_listen", running.AdminListen, next.AdminListen},
		{"tls_cert and tls_key paths", [2]string{running.TLSCert, running.TLSKey}, [2]string{next.TLSCert, next.TLSKey}},
		{"log_format", running.LogFormat, next.LogFormat},
		{"[storage]", running.Storage, next.Storage},
		{"[limits]", running.Limits, next.Limits},
		{"[[prefetch]]", running.Prefetch, next.Prefetch},
		{"[[replicate]]", running.Replicate, next.Replicate},
		{"[audit]", running.Audit, next.Audit},
		{"[[webhook]]", running.Webhooks, next.Webhooks},
		{"[auth] token_ttl, token_key_file, external_url, trusted_proxies or max_uploads_per_client",
			[]any{running.Auth.TokenTTL, running.Auth.TokenKeyFile, running.Auth.ExternalURL, running.Auth.TrustedProxies, running.Auth.MaxUploadsPerClient},
			[]any{next.Auth.TokenTTL, next.Auth.TokenKeyFile, next.Auth.ExternalURL, next.Auth.TrustedProxies, next.Auth.MaxUploadsPerClient}},
	} {
		if !reflect.DeepEqual(f.old, f.new) {
			out = append(out, f.what+" changed")
		}
	}
	return out
}

// reload reads the config file again and applies what can change while
// serving: the log level, the users (and htpasswd), the TLS certificate.
// It logs what it did; a broken config or certificate changes nothing.
func (m *Main) reload() {
	cfg := m.cfg
	if m.cfgPath != "" {
		c, err := loadConfigFile(m.cfgPath)
		if err == nil {
			c.Listen, c.DataDir = m.cfg.Listen, m.cfg.DataDir // as the flags set them
			err = c.setDefaults()
		}
		if err != nil {
			m.log.Error("SIGHUP: config not reloaded; the running one stays", "file", m.cfgPath, "err", err)
			return
		}
		cfg = c
	}
	opts, err := authOptions(cfg)
	if err == nil {
		err = m.srv.SetUsers(opts.Users)
	}
	if err != nil {
		m.log.Error("SIGHUP: users not reloaded; nothing changed", "err", err)
		return
	}
	byRepo, err := cfg.repositoryPolicies()
	for name := range byRepo {
		if !m.cfg.hasRepository(name) {
			delete(byRepo, name) // a new repository waits for the restart
		}
	}
	if err == nil {
		err = m.srv.SetPolicies(byRepo)
	}
	if err != nil {
		m.log.Error("SIGHUP: policies not reloaded; the old ones stay", "err", err)
	}
	done := []string{fmt.Sprintf("%d users", len(opts.Users)), fmt.Sprintf("%d policies", len(cfg.Policies))}
	if m.level != nil {
		m.level.Set(logLevel(cfg))
		done = append(done, "log level "+m.level.Level().String())
	}
	if m.cfg.TLSCert != "" {
		if err := m.loadCert(); err != nil {
			m.log.Error("SIGHUP: keeping the old certificate", "err", err)
		} else {
			done = append(done, "TLS certificate")
		}
	}
	if err := m.events.reopen(); err != nil {
		m.log.Error("SIGHUP: audit log not reopened; lines go to the old file", "err", err)
	} else if m.cfg.Audit.File != "" {
		done = append(done, "audit log reopened")
	}
	m.log.Info("SIGHUP: reloaded", "what", strings.Join(done, ", "), "config", m.cfgPath)
	later := needsRestart(m.cfg, cfg)
	if len(later) > 0 {
		m.log.Warn("SIGHUP: these changes need a restart to take effect (systemctl restart berth)", "not_applied", strings.Join(later, "; "))
	}
	m.events.Record(audit.Event{Action: audit.Reload, User: "operator (SIGHUP)", Detail: "reloaded: " + strings.Join(done, ", ") + needRestartNote(later)})
}

func needRestartNote(later []string) string {
	if len(later) == 0 {
		return ""
	}
	return "; need a restart: " + joinWords(later)
}

// withoutPolicy is r but its policy, which a reload applies.
func withoutPolicy(r RepositoryConfig) RepositoryConfig {
	r.Policy = ""
	return r
}
