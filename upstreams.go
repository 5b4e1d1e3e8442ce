package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/berth-registry/berth/internal/reghost"
	"github.com/berth-registry/berth/server"
	"github.com/berth-registry/berth/upstream"
	"github.com/prometheus/client_golang/prometheus"
)

// setUpstream gives proxy repository r the upstream rc describes: one URL,
// several (a Failover), an allowlist of hosts (a proxy per host, made on
// first use) or a mirror of many registries (forward_ns, a proxy per
// namespace). Every client reports its exchanges to reqs and latency.
func setUpstream(r *server.Repository, rc RepositoryConfig, log *slog.Logger, reqs *prometheus.CounterVec, latency *prometheus.HistogramVec) error {
	r.EagerLayers = rc.EagerLayers == nil || *rc.EagerLayers
	r.RangeFetch = server.RangeFetch{Min: int64(rc.RangeFetchMin), Chunk: int64(rc.RangeFetchChunk), Parallel: rc.RangeFetchParallel,
		Ramp: server.DefaultRangeRamp, SlowRate: server.DefaultRangeSlowRate}
	observe := func(label string) func(method string, status int, d time.Duration, err error) {
		return func(method string, status int, d time.Duration, err error) {
			reqs.WithLabelValues(label, method, fmt.Sprint(status)).Inc()
			latency.WithLabelValues(label).Observe(d.Seconds())
		}
	}
	base := func(url string) upstream.Options {
		return upstream.Options{URL: url, UserAgent: "berth/" + versionString(), Logger: log,
			ConnectTimeout: time.Duration(rc.ConnectTimeout), HeaderTimeout: time.Duration(rc.UpstreamTimeout),
			IdleTimeout: time.Duration(rc.UpstreamIdleTimeout)}
	}
	if len(rc.Hosts) > 0 {
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
		caps := upstream.NewCaps(rc.MaxUpstreamConnections, int64(rc.MaxUpstreamBandwidth))
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
			o.RefuseSpecialAddresses, o.AllowPrivateNetworks = true, rc.AllowPrivateNetworks
			// One label and one set of caps for the repository: hosts
			// come and go, series and caps must not grow with them.
			o.Caps = caps
			o.Observe = observe(rc.Name)
			return upstream.New(o)
		}
		return nil
	}
	pw, err := rc.password()
	if err != nil {
		return err
	}
	caps := upstream.NewCaps(rc.MaxUpstreamConnections, int64(rc.MaxUpstreamBandwidth))
	// proxyOf makes the upstream of rc's URLs, asking for namespace ns
	// (forward_ns) when not "".
	proxyOf := func(ns string) (server.Upstream, string, error) {
		var clients []*upstream.Client
		for _, u := range rc.upstreamURLs() {
			o := base(u)
			o.Username, o.Password, o.Caps, o.Namespace, o.Observe = rc.Username, pw, caps, ns, observe(rc.Name)
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
