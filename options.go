package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/internal/reghost"
	"github.com/berth-registry/berth/internal/replicate"
	"github.com/berth-registry/berth/server"
	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// The one translation of the config file into what the server is made
// of: serverOptions (NewMain), the repositories (check-config validates
// the same translation, without upstream clients), proxies' upstream
// clients, access control and limits. A default is decided once, in the
// config's setDefaults; here values are only carried over.

// serverOptions is what server.New takes for cfg, over store st. Upstream
// clients report to metrics registered in the options' registry.
func serverOptions(cfg *Config, st *store.Store, log *slog.Logger) (server.Options, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	um := newUpstreamMetrics(reg)
	repos, err := cfg.repositories(func(r *server.Repository, rc RepositoryConfig) error { return proxyUpstream(r, rc, log, um) })
	if err != nil {
		return server.Options{}, err
	}
	auth, err := authOptions(cfg)
	if err != nil {
		return server.Options{}, err
	}
	repl, err := replication(cfg, repos, log, um)
	if err != nil {
		return server.Options{}, err
	}
	repl.Runner = replicate.NewRunner(reg)
	for _, r := range repl.Rules {
		repl.Runner.Known(r.Rule.Name)
	}
	clients := clientRegistries(cfg)
	clients.URL = cfg.Auth.ExternalURL
	return server.Options{
		Replication: repl, Clients: &clients,
		Repositories: repos, DefaultRepository: cfg.DefaultRepository, Store: st, Logger: log, Registry: reg,
		GCGrace: time.Duration(cfg.Storage.GCGrace), Auth: auth, MaxSize: int64(cfg.Storage.MaxSize),
		MaxBlobSize: int64(cfg.Limits.MaxBlobSize), MaxDownloads: cfg.Limits.MaxDownloads,
		MaxDownloadsPerClient: cfg.Limits.MaxDownloadsPerClient, Uploads: cfg.Limits.uploadLimits(),
	}, nil
}

// repositories translates the [[repository]] tables. connect gives a
// proxy its upstream client; nil makes none (what
// server.ValidateRepositories checks needs none).
func (c *Config) repositories(connect func(*server.Repository, RepositoryConfig) error) ([]server.Repository, error) {
	policies, err := c.repositoryPolicies()
	if err != nil {
		return nil, err
	}
	out := make([]server.Repository, 0, len(c.Repositories))
	for _, rc := range c.Repositories {
		r := server.Repository{
			Name: rc.Name, Kind: rc.Kind, TagTTL: time.Duration(rc.TagTTL), NotFoundTTL: time.Duration(rc.NotFoundTTL),
			ServeStale: rc.ServeStale != nil && *rc.ServeStale, AnonymousPull: rc.AnonymousPull != nil && *rc.AnonymousPull,
			AnonymousPush: rc.AnonymousPush, NSAliases: rc.NSAliases, Members: rc.Members, PushTo: rc.PushTo,
			EagerLayers: rc.EagerLayers != nil && *rc.EagerLayers,
			Policy:      policies[rc.Name], ImmutableTags: rc.ImmutableTags, Retention: rc.retention(),
			RangeFetch: server.RangeFetch{Min: int64(rc.RangeFetchMin), Chunk: int64(rc.RangeFetchChunk), Parallel: rc.RangeFetchParallel,
				MaxParallel: rc.rangeCeiling(), Ramp: server.DefaultRangeRamp, SlowRate: server.DefaultRangeSlowRate},
		}
		if rc.Kind == server.KindProxy && connect != nil {
			if err := connect(&r, rc); err != nil {
				return nil, err
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// rangeCeiling is the most streams one ranged download may run: the
// configured ceiling, within max_upstream_connections when it is set.
func (r RepositoryConfig) rangeCeiling() int {
	if r.MaxUpstreamConnections > 0 {
		return max(1, min(r.RangeFetchMaxParallel, r.MaxUpstreamConnections))
	}
	return r.RangeFetchMaxParallel
}

// repositoryPolicies is the policy of each repository that names one
// (an error: a key or trusted root that cannot be read).
func (c *Config) repositoryPolicies() (map[string]*policy.Policy, error) {
	byName := map[string]*policy.Policy{}
	for _, pc := range c.Policies {
		p, err := pc.policy()
		if err != nil {
			return nil, fmt.Errorf("policy %q: %w", pc.Name, err)
		}
		byName[pc.Name] = p
	}
	out := map[string]*policy.Policy{}
	for _, r := range c.Repositories {
		if p := byName[r.Policy]; p != nil {
			out[r.Name] = p
		}
	}
	return out, nil
}

// upstreamMetrics are what every upstream client reports its exchanges
// to.
type upstreamMetrics struct {
	reqs    *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

func newUpstreamMetrics(reg *prometheus.Registry) upstreamMetrics {
	m := upstreamMetrics{
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_upstream_http_requests_total", Help: "HTTP exchanges with upstream registries by repository, method and status (0: no answer).",
		}, []string{"repository", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "berth_upstream_http_duration_seconds", Help: "Time to upstream response headers.", Buckets: prometheus.DefBuckets,
		}, []string{"repository"}),
	}
	reg.MustRegister(m.reqs, m.latency)
	return m
}

// observe is the Observe of repository label's clients.
func (m upstreamMetrics) observe(label string) func(method string, status int, d time.Duration, err error) {
	return func(method string, status int, d time.Duration, err error) {
		m.reqs.WithLabelValues(label, method, fmt.Sprint(status)).Inc()
		m.latency.WithLabelValues(label).Observe(d.Seconds())
	}
}

// proxyUpstream gives proxy repository r the upstream rc describes: one
// URL, several (a Failover), an allowlist of hosts (a proxy per host, made
// on first use) or a mirror of many registries (forward_ns, a proxy per
// namespace).
func proxyUpstream(r *server.Repository, rc RepositoryConfig, log *slog.Logger, m upstreamMetrics) error {
	base := func(url string) upstream.Options {
		return upstream.Options{URL: url, UserAgent: "berth/" + versionString(), Logger: log,
			ConnectTimeout: time.Duration(rc.ConnectTimeout), HeaderTimeout: time.Duration(rc.UpstreamTimeout),
			IdleTimeout: time.Duration(rc.UpstreamIdleTimeout), Observe: m.observe(rc.Name)}
	}
	// One label and one set of caps for the repository: hosts and
	// namespaces come and go, series and caps must not grow with them.
	caps := upstream.NewCaps(rc.MaxUpstreamConnections, int64(rc.MaxUpstreamBandwidth))
	if len(rc.Hosts) > 0 {
		return allowlistUpstream(r, rc, base, caps)
	}
	pw, err := rc.password()
	if err != nil {
		return err
	}
	// proxyOf makes the upstream of rc's URLs, asking for namespace ns
	// (forward_ns) when not "".
	proxyOf := func(ns string) (server.Upstream, string, error) {
		var clients []*upstream.Client
		for _, u := range rc.upstreamURLs() {
			o := base(u)
			o.Username, o.Password, o.Caps, o.Namespace = rc.Username, pw, caps, ns
			c, err := upstream.New(o)
			if err != nil {
				return nil, "", fmt.Errorf("repository %q: %w", rc.Name, err)
			}
			clients = append(clients, c)
		}
		if len(clients) == 1 {
			return clients[0], clients[0].Host(), nil
		}
		f, err := upstream.NewFailover(clients, time.Duration(rc.OfflinePeriod), log)
		if err != nil {
			return nil, "", fmt.Errorf("repository %q: %w", rc.Name, err)
		}
		return f, f.Host(), nil
	}
	up, host, err := proxyOf("")
	if err != nil {
		return err
	}
	r.Upstream, r.UpstreamHost = up, host
	if rc.ForwardNS {
		r.ForwardNS = true
		r.NewUpstream = func(ns reghost.Host, _ bool) (server.Upstream, error) {
			up, _, err := proxyOf(ns.String())
			return up, err
		}
	}
	r.DockerHub = upstream.IsDockerHub(r.UpstreamHost)
	if rc.LibraryPrefix != nil {
		r.DockerHub = *rc.LibraryPrefix
	}
	return nil
}

// allowlistUpstream makes r an allowlist proxy: any registry whose host
// matches rc's hosts, through a client made on first use with the
// credentials of the first [[repository.credentials]] entry whose glob
// matches that host.
func allowlistUpstream(r *server.Repository, rc RepositoryConfig, base func(string) upstream.Options, caps *upstream.Caps) error {
	type cred struct{ glob, user, password string }
	var creds []cred // in config order: the first whose glob matches
	for _, c := range rc.Credentials {
		pw, err := c.password(rc.Name)
		if err != nil {
			return err
		}
		creds = append(creds, cred{c.Host, c.Username, pw})
	}
	r.Hosts, r.HTTPHosts, r.AllowPrivateNetworks = rc.Hosts, rc.HTTPHosts, rc.AllowPrivateNetworks
	r.NewUpstream = func(host reghost.Host, plainHTTP bool) (server.Upstream, error) {
		scheme := "https"
		if plainHTTP {
			scheme = "http"
		}
		// The URL is built from the parsed host, and credentials go to
		// that exact host: the one their glob matched.
		o := base(host.URL(scheme).String())
		for _, c := range creds {
			if host.Match(c.glob) {
				o.Username, o.Password = c.user, c.password
				break
			}
		}
		o.RefuseSpecialAddresses, o.AllowPrivateNetworks, o.Caps = true, rc.AllowPrivateNetworks, caps
		return upstream.New(o)
	}
	return nil
}

// authOptions builds the server's access control from the config: users
// (inline hashes or the htpasswd file), the token key (made on first
// start, 0600), the realm settings.
func authOptions(cfg *Config) (server.AuthOptions, error) {
	o := server.AuthOptions{
		TokenTTL: time.Duration(cfg.Auth.TokenTTL), ExternalURL: cfg.Auth.ExternalURL,
		MaxUploadsPerClient: cfg.Auth.MaxUploadsPerClient,
	}
	for _, p := range cfg.Auth.TrustedProxies {
		if !strings.Contains(p, "/") {
			if strings.Contains(p, ":") {
				p += "/128"
			} else {
				p += "/32"
			}
		}
		_, n, err := net.ParseCIDR(p)
		if err != nil {
			return o, fmt.Errorf("auth.trusted_proxies: %w", err)
		}
		o.TrustedProxies = append(o.TrustedProxies, n)
	}
	var htp map[string]string
	if cfg.Auth.Htpasswd != "" {
		var err error
		if htp, err = loadHtpasswd(cfg.Auth.Htpasswd); err != nil {
			return o, err
		}
	}
	for _, u := range cfg.Users {
		hash := u.PasswordHash
		if hash == "" {
			if hash = htp[u.Name]; hash == "" {
				return o, fmt.Errorf("user %q has no password_hash and is not in %s", u.Name, cfg.Auth.Htpasswd)
			}
		}
		o.Users = append(o.Users, server.User{Name: u.Name, PasswordHash: []byte(hash), Pull: u.Pull, Push: u.Push, Admin: u.Admin})
	}
	keyFile := cfg.Auth.TokenKeyFile
	if keyFile == "" {
		keyFile = filepath.Join(cfg.DataDir, "token.key")
	}
	key, err := tokenKey(keyFile)
	if err != nil {
		return o, err
	}
	o.TokenKey = key
	return o, nil
}

// tokenKey reads the signing key, making a random one (0600) on first use.
func tokenKey(file string) ([]byte, error) {
	key, err := os.ReadFile(file)
	if err == nil {
		if len(key) < 32 {
			return nil, fmt.Errorf("token key %s: shorter than 32 bytes", file)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("token key: %w", err)
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o750); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("token key: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(key); err != nil {
		return nil, err
	}
	return key, f.Sync()
}

// connLimits is what the listeners take: max_connections defaults to
// three quarters of the soft open-file limit (at most 8192), and is cut
// to that when set above it.
func (l *LimitsConfig) connLimits() server.ConnLimits {
	room := server.DefaultMaxConnections
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur > 0 && rl.Cur < 1<<31 {
		room = int(rl.Cur) * 3 / 4
	}
	max := l.MaxConnections
	if max <= 0 {
		max = min(room, server.DefaultMaxConnections)
	}
	max = min(max, room)
	return server.ConnLimits{Max: max, PerClient: min(max, l.MaxConnectionsPerClient)}
}

// uploadLimits is what the server takes.
func (l *LimitsConfig) uploadLimits() server.UploadLimits {
	return server.UploadLimits{Sessions: l.MaxUploadSessions, SessionsPerOwner: l.MaxUploadSessionsPerUser,
		Bytes: int64(l.MaxUploadBytes), BytesPerOwner: int64(l.MaxUploadBytesPerUser)}
}
