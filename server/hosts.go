package server

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path"
	"slices"
	"strings"
	"sync"
	"time"
)

// A proxy may serve any registry whose host matches its Hosts globs
// (catch-all mirror setups: containerd's _default hosts.toml and k3s send
// ?ns=<host>, registries.conf mirrors put the host first in the path). A
// proxy of https://<host> is made on first use with the repository's
// settings; its content lives under "<repository>/<host>/" in the store,
// so hosts never mix. ns is a key looked up in the allowlist, never a
// dial target the client chooses: a host that matches no pattern gets 404
// without a dial, and one that resolves to a private, loopback,
// link-local or metadata address is refused unless AllowPrivateNetworks.

// maxHostsPerRepository bounds the hosts one allowlist proxy keeps.
const maxHostsPerRepository = 1024

// hostProxies are the per-host proxies made by allowlist repositories.
type hostProxies struct {
	mu    sync.Mutex
	repos map[string]*repo // "<repository>\x00<host>" → its proxy
}

// registryHost reports whether s is a registry host as Docker defines
// one: it has a dot or a port, or is localhost.
func registryHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

// matchHosts reports whether host (host[:port], lower case) matches one
// of globs ("ghcr.io", "*.gcr.io", "localhost:*").
func matchHosts(globs []string, host string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(strings.ToLower(g), host); ok {
			return true
		}
	}
	return false
}

// allowlistFor returns the first allowlist proxy whose Hosts match host.
func (s *Server) allowlistFor(host string) *repo {
	for _, rp := range s.order {
		if rp.Kind == KindProxy && len(rp.Hosts) > 0 && matchHosts(rp.Hosts, host) {
			return rp
		}
	}
	return nil
}

// forwarder returns the first proxy that passes ?ns= on to its upstream.
func (s *Server) forwarder() *repo {
	for _, rp := range s.order {
		if rp.Kind == KindProxy && rp.ForwardNS {
			return rp
		}
	}
	return nil
}

// privateAddr reports addresses berth does not dial for a client's
// choice of host: loopback, private, link-local (the cloud metadata
// address 169.254.169.254 is one), unspecified, multicast.
func privateAddr(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsUnspecified() || a.IsMulticast() || a.IsInterfaceLocalMulticast()
}

// checkHost refuses host when it resolves to an address the allowlist
// proxy g may not reach. Nothing is dialled.
func (s *Server) checkHost(ctx context.Context, g *repo, host string) error {
	if g.AllowPrivateNetworks || g.ForwardNS {
		return nil // a forwarded namespace is never dialled: it goes to g's upstream
	}
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.Trim(name, "[]")
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(name); err == nil {
		addrs = []netip.Addr{a}
	} else {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if addrs, err = s.resolver.LookupNetIP(ctx, "ip", name); err != nil {
			return errf(codeNameUnknown, "registry host %q does not resolve: %v", host, err)
		}
	}
	for _, a := range addrs {
		if privateAddr(a) {
			return errf(codeDenied, "registry host %q is refused: it resolves to %s, a private, loopback or link-local address (repository %q has allow_private_networks = false)", host, a, g.Name)
		}
	}
	return nil
}

// hostProxy returns the proxy of host made by allowlist repository g,
// making it on first use.
func (s *Server) hostProxy(ctx context.Context, g *repo, host string) (*repo, error) {
	key := g.Name + "\x00" + host
	s.hosts.mu.Lock()
	rp := s.hosts.repos[key]
	s.hosts.mu.Unlock()
	if rp != nil {
		return rp, nil
	}
	if err := s.checkHost(ctx, g, host); err != nil {
		return nil, err
	}
	s.hosts.mu.Lock()
	defer s.hosts.mu.Unlock()
	if rp := s.hosts.repos[key]; rp != nil {
		return rp, nil
	}
	n := 0
	for k := range s.hosts.repos {
		if strings.HasPrefix(k, g.Name+"\x00") {
			n++
		}
	}
	if n >= maxHostsPerRepository {
		return nil, errf(codeTooManyRequests, "repository %q already serves %d registry hosts", g.Name, n)
	}
	up, err := g.NewUpstream(host, matchHosts(g.HTTPHosts, host))
	if err != nil {
		return nil, fmt.Errorf("upstream for %s: %w", host, err)
	}
	r := g.Repository
	r.Name, r.Upstream, r.UpstreamHost, r.Hosts, r.NSAliases, r.ForwardNS = g.Name+"/"+host, up, host, nil, nil, false
	rp = s.newRepo(r)
	rp.parent = g
	s.hosts.repos[key] = rp
	s.m.initRepository(rp.Name, true)
	s.log.Info("serving a new registry host", "repository", g.Name, "host", host)
	return rp, nil
}

// hostRepos returns the per-host proxies of g, sorted by host.
func (s *Server) hostRepos(g *repo) []*repo {
	s.hosts.mu.Lock()
	defer s.hosts.mu.Unlock()
	var out []*repo
	for _, rp := range s.hosts.repos {
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
