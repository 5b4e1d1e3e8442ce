package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-registry/berth/internal/lru"
	"github.com/berth-registry/berth/internal/reghost"
	"github.com/berth-registry/berth/upstream"
)

// A proxy may serve any registry whose host matches its Hosts globs
// (catch-all mirror setups: containerd's _default hosts.toml and k3s send
// ?ns=<host>, registries.conf mirrors put the host first in the path). A
// proxy of https://<host> is made on first use with the repository's
// settings; its content lives under "<repository>/<host>/" in the store,
// so hosts never mix. The host a client names is parsed into a
// reghost.Host first (anything that is not exactly a host is 400), and
// that one value is matched, stored, labelled, looked up for credentials
// and dialled. A host that matches no pattern gets 404 without a dial;
// one that resolves to a special-purpose address (reghost.Refused) is
// refused, and the dialer checks every address again at connect time.
//
// The host table is bounded: least recently used hosts are dropped past
// maxHostProxies, and a host whose upstream never answered a request
// with success is not kept after the request that made it.

// maxHostProxies bounds the per-host proxies berth keeps, all allowlist
// and forward_ns repositories together.
const maxHostProxies = 1024

// hostProxies are the per-host proxies made by allowlist repositories.
type hostProxies struct {
	mu    sync.Mutex                // one maker at a time
	repos *lru.Cache[string, *repo] // "<repository>\x00<host>" → its proxy
}

// closer is an upstream whose idle connections can be let go (a dropped
// host proxy's).
type closer interface{ CloseIdleConnections() }

func (s *Server) newHostTable() {
	s.hosts.repos = lru.New[string, *repo](maxHostProxies, 0).WithEvict(func(_ string, rp *repo) { s.dropHost(rp) })
}

// dropHost lets an evicted or silent host proxy go: its connections and
// its metrics series.
func (s *Server) dropHost(rp *repo) {
	if c, ok := rp.Upstream.(closer); ok {
		c.CloseIdleConnections()
	}
	s.m.dropRepository(rp.Name)
}

// scope is the repositories a listener's requests may reach: every one
// for the main listener, else the listener's repository and, for a
// group, its members.
func (s *Server) scope(listener listenerScope) []*repo {
	if !listener.bound {
		return s.order
	}
	rp := s.repos[listener.repo]
	if rp == nil {
		return nil
	}
	return append([]*repo{rp}, rp.members()...)
}

// allowlistFor returns the first allowlist proxy in scope whose Hosts
// match host.
func allowlistFor(scope []*repo, host reghost.Host) *repo {
	for _, rp := range scope {
		if rp.asProxy() != nil && len(rp.Hosts) > 0 && host.MatchAny(rp.Hosts) {
			return rp
		}
	}
	return nil
}

// forwarder returns the first proxy in scope that passes ?ns= on to its
// upstream.
func forwarder(scope []*repo) *repo {
	for _, rp := range scope {
		if rp.asProxy() != nil && rp.ForwardNS {
			return rp
		}
	}
	return nil
}

// proxyForHost returns the first proxy in scope whose upstream is host
// (Docker Hub's names are one) or lists it in ns_aliases.
func proxyForHost(scope []*repo, host reghost.Host) *repo {
	h := host.String()
	for _, rp := range scope {
		if rp.asProxy() == nil || rp.Upstream == nil || rp.parent != nil {
			continue
		}
		up := strings.ToLower(rp.UpstreamHost)
		if up == h || (upstream.IsDockerHub(up) && upstream.IsDockerHub(h)) {
			return rp
		}
		for _, a := range rp.NSAliases {
			if strings.EqualFold(a, h) {
				return rp
			}
		}
	}
	return nil
}

// checkHost refuses host when it is, or resolves to, an address the
// allowlist proxy g may not reach. Nothing is dialled.
func (s *Server) checkHost(ctx context.Context, g *repo, host reghost.Host) error {
	if g.ForwardNS {
		return nil // a forwarded namespace is never dialled: it goes to g's upstream
	}
	var addrs []netip.Addr
	if a, ok := host.Addr(); ok {
		addrs = []netip.Addr{a}
	} else {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var err error
		if addrs, err = s.resolver.LookupNetIP(ctx, "ip", host.Name()); err != nil {
			return errf(codeNameUnknown, "registry host %q does not resolve", host)
		}
	}
	for _, a := range addrs {
		if why, bad := reghost.Refused(a, g.AllowPrivateNetworks); bad {
			rule := "allow_private_networks = false"
			if g.AllowPrivateNetworks {
				rule = "never dialled for a client's choice, even with allow_private_networks"
			}
			return errf(codeDenied, "registry host %q is refused: it resolves to %s, a %s address (repository %q: %s)", host, a, why, g.Name, rule)
		}
	}
	return nil
}

// hostProxy returns the proxy of host made by allowlist repository g,
// making it on first use.
func (s *Server) hostProxy(ctx context.Context, g *repo, host reghost.Host) (*repo, error) {
	key := g.Name + "\x00" + host.String()
	if rp, ok := s.hosts.repos.Get(key); ok {
		return rp, nil
	}
	if err := s.checkHost(ctx, g, host); err != nil {
		return nil, err
	}
	s.hosts.mu.Lock()
	defer s.hosts.mu.Unlock()
	if rp, ok := s.hosts.repos.Get(key); ok {
		return rp, nil
	}
	up, err := g.NewUpstream(host, host.MatchAny(g.HTTPHosts))
	if err != nil {
		return nil, fmt.Errorf("upstream for %s: %w", host, err)
	}
	r := g.Repository
	r.Name, r.Upstream, r.UpstreamHost, r.Hosts, r.NSAliases, r.ForwardNS = g.Name+"/"+host.String(), up, host.String(), nil, nil, false
	rp := s.newRepo(r)
	rp.parent = g
	// The host proxies of g share g's caches: their keys hold the path,
	// which holds the host, and the caches are bounded once, not per host.
	rp.neg, rp.referrers = g.neg, g.referrers
	s.hosts.repos.Add(key, rp)
	s.m.initRepository(rp.Name, true)
	s.log.Info("serving a new registry host", "repository", g.Name, "host", host.String())
	return rp, nil
}

// forgetSilentHost drops rp, a host proxy, when its upstream has not
// once answered a request with success: a bogus host a client named is
// not kept (nor its metrics), a real one is made again on its next use.
func (s *Server) forgetSilentHost(rp *repo) {
	if rp.parent == nil || rp.health.answered() {
		return
	}
	key := rp.parent.Name + "\x00" + rp.UpstreamHost
	s.hosts.mu.Lock()
	cur, ok := s.hosts.repos.Get(key)
	if ok && cur == rp {
		s.hosts.repos.Remove(key)
	}
	s.hosts.mu.Unlock()
	if ok && cur == rp {
		s.dropHost(rp)
	}
}

// hostRepos returns the per-host proxies of g, sorted by host.
func (s *Server) hostRepos(g *repo) []*repo {
	var out []*repo
	for _, rp := range s.hosts.repos.Values() {
		if rp.parent == g {
			out = append(out, rp)
		}
	}
	slices.SortFunc(out, func(a, b *repo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// withHosts is s.order with each allowlist repository's host proxies
// after it: the status page's rows.
func (s *Server) withHosts() []*repo {
	var out []*repo
	for _, rp := range s.order {
		out = append(out, rp)
		if len(rp.Hosts) > 0 || rp.ForwardNS {
			out = append(out, s.hostRepos(rp)...)
		}
	}
	return out
}

// parseHost reads a host a client named (what says where: "ns",
// "path"): 400 NAME_INVALID when it is not exactly a host.
func parseHost(what, s string) (reghost.Host, error) {
	h, err := reghost.Parse(s)
	if err != nil {
		return reghost.Host{}, errf(codeNameInvalid, "%s: %v", what, unwrapInvalid(err))
	}
	return h, nil
}

func unwrapInvalid(err error) string {
	msg := err.Error()
	if errors.Is(err, reghost.ErrInvalid) {
		msg = strings.TrimPrefix(msg, reghost.ErrInvalid.Error()+": ")
	}
	return "not a registry host: " + msg
}
