package main

import (
	"fmt"
	"reflect"
	"slices"
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
		case !reflect.DeepEqual(o, x):
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
