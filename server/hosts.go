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

// hostProxies makes the per-host proxies of allowlist (and forward_ns)
// repositories and keeps them in a bounded table.
type hostProxies struct {
	s     *Server
	mu    sync.Mutex                // one maker at a time
	repos *lru.Cache[string, *repo] // hostKey → its proxy
}

// hostKey is the table key of host's proxy made by repository g.
func hostKey(g *repo, host string) string { return g.Name + "\x00" + host }

// closer is an upstream whose idle connections can be let go (a dropped
// host proxy's).
type closer interface{ CloseIdleConnections() }

func newHostProxies(s *Server) *hostProxies {
	h := &hostProxies{s: s}
	h.repos = lru.New[string, *repo](maxHostProxies, 0).WithEvict(func(_ string, rp *repo) { h.dropHost(rp) })
	return h
}

// dropHost lets an evicted or silent host proxy go: its connections and
// its metrics series.
func (h *hostProxies) dropHost(rp *repo) {
	s := h.s
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
		if rp.asProxy() == nil || rp.Upstream == nil || rp.hostKey != "" {
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
func (h *hostProxies) checkHost(ctx context.Context, g *repo, host reghost.Host) error {
	s := h.s
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
func (h *hostProxies) hostProxy(ctx context.Context, g *repo, host reghost.Host) (*repo, error) {
	s := h.s
	key := hostKey(g, host.String())
	if rp, ok := h.repos.Get(key); ok {
		return rp, nil
	}
	if err := s.hosts.checkHost(ctx, g, host); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if rp, ok := h.repos.Get(key); ok {
		return rp, nil
	}
	up, err := g.NewUpstream(host, host.MatchAny(g.HTTPHosts))
	if err != nil {
		return nil, fmt.Errorf("upstream for %s: %w", host, err)
	}
	r := g.Repository
	r.Name, r.Upstream, r.UpstreamHost, r.Hosts, r.NSAliases, r.ForwardNS = g.Name+"/"+host.String(), up, host.String(), nil, nil, false
	rp := s.newRepo(r)
	// Its rights are g's, over "<host>/<image>".
	rp.access, rp.grantPrefix, rp.hostKey = g, host.String()+"/", key
	// The host proxies of g share g's caches: their keys hold the path,
	// which holds the host, and the caches are bounded once, not per host.
	rp.neg, rp.referrers = g.neg, g.referrers
	h.repos.Add(key, rp)
	s.m.initRepository(rp.Name, true)
	s.log.Info("serving a new registry host", "repository", g.Name, "host", host.String())
	return rp, nil
}

// forgetSilentHost drops rp, a host proxy, when its upstream has not
// once answered a request with success: a bogus host a client named is
// not kept (nor its metrics), a real one is made again on its next use.
func (h *hostProxies) forgetSilentHost(rp *repo) {
	s := h.s
	if rp.hostKey == "" || rp.health.answered() {
		return
	}
	key := rp.hostKey
	h.mu.Lock()
	cur, ok := h.repos.Get(key)
	if ok && cur == rp {
		h.repos.Remove(key)
	}
	h.mu.Unlock()
	if ok && cur == rp {
		s.hosts.dropHost(rp)
	}
}

// hostRepos returns the per-host proxies of g, sorted by host.
func (h *hostProxies) hostRepos(g *repo) []*repo {
	var out []*repo
	for _, rp := range h.repos.Values() {
		if rp.access == g && rp != g {
			out = append(out, rp)
		}
	}
	slices.SortFunc(out, func(a, b *repo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// withHosts is s.order with each allowlist repository's host proxies
// after it: the status page's rows.
func (h *hostProxies) withHosts() []*repo {
	s := h.s
	var out []*repo
	for _, rp := range s.order {
		out = append(out, rp)
		if len(rp.Hosts) > 0 || rp.ForwardNS {
			out = append(out, s.hosts.hostRepos(rp)...)
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
