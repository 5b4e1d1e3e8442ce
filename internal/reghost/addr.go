package reghost

import (
	"fmt"
	"net/netip"
	"syscall"
)

// The addresses berth never dials for a client's choice of host, from
// IANA's IPv4 and IPv6 special-purpose address registries: nothing that
// is not a globally reachable unicast address. Addresses that carry an
// IPv4 address inside (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are
// judged by that address.
//
// Private marks the ranges an operator may open with
// allow_private_networks (an internal registry on 10.x, loopback or a
// ULA); link-local, the cloud metadata addresses and the other ranges
// stay refused whatever the setting.
type special struct {
	prefix  netip.Prefix
	what    string
	private bool // opened by allow_private_networks
}

var specials = func() []special {
	t := []struct {
		p       string
		what    string
		private bool
	}{
		// IPv4
		{"0.0.0.0/8", "this network", false},
		{"10.0.0.0/8", "private-use", true},
		{"100.100.100.200/32", "cloud metadata", false},
		{"100.64.0.0/10", "shared address space (CGNAT; holds cloud metadata addresses)", true},
		{"127.0.0.0/8", "loopback", true},
		{"169.254.0.0/16", "link-local (cloud metadata)", false},
		{"172.16.0.0/12", "private-use", true},
		{"192.0.0.0/24", "IETF protocol assignments", false},
		{"192.0.2.0/24", "documentation", false},
		{"192.88.99.0/24", "6to4 relay anycast", false},
		{"192.168.0.0/16", "private-use", true},
		{"198.18.0.0/15", "benchmarking", false},
		{"198.51.100.0/24", "documentation", false},
		{"203.0.113.0/24", "documentation", false},
		{"224.0.0.0/4", "multicast", false},
		{"240.0.0.0/4", "reserved (and the broadcast address)", false},
		// IPv6
		{"::/128", "unspecified", false},
		{"::1/128", "loopback", true},
		{"64:ff9b:1::/48", "local-use NAT64", false},
		{"100::/64", "discard-only", false},
		{"2001::/32", "Teredo", false},
		{"2001::/23", "IETF protocol assignments", false},
		{"2001:db8::/32", "documentation", false},
		{"3fff::/20", "documentation", false},
		{"5f00::/16", "segment routing", false},
		{"fd00:ec2::254/128", "cloud metadata", false},
		{"fc00::/7", "unique local", true},
		{"fe80::/10", "link-local", false},
		{"fec0::/10", "site-local", false},
		{"ff00::/8", "multicast", false},
	}
	out := make([]special, len(t))
	for i, e := range t {
		out[i] = special{netip.MustParsePrefix(e.p), e.what, e.private}
	}
	return out
}()

// Embedding prefixes: an IPv6 address in these carries an IPv4 address,
// which is what would really be reached.
var (
	nat64  = netip.MustParsePrefix("64:ff9b::/96")
	sixTo4 = netip.MustParsePrefix("2002::/16")
	compat = netip.MustParsePrefix("::/96") // IPv4-compatible (deprecated)
)

// Refused reports whether berth must not dial a for a client's choice,
// and why ("loopback", "link-local (cloud metadata)"). With allowPrivate
// the private-use, loopback, CGNAT and unique-local ranges are allowed.
func Refused(a netip.Addr, allowPrivate bool) (why string, refused bool) {
	if !a.IsValid() {
		return "not an address", true
	}
	a = a.WithZone("")
	if a.Is4In6() {
		return Refused(a.Unmap(), allowPrivate)
	}
	if a.Is6() {
		b := a.As16()
		var v4 netip.Addr
		switch {
		case nat64.Contains(a):
			v4 = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
		case sixTo4.Contains(a):
			v4 = netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
		case compat.Contains(a) && a != netip.IPv6Unspecified() && a != netip.IPv6Loopback():
			v4 = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
		}
		if v4.IsValid() {
			if why, bad := Refused(v4, allowPrivate); bad {
				return fmt.Sprintf("%s inside %s", why, a), true
			}
			if compat.Contains(a) {
				return "IPv4-compatible (deprecated)", true
			}
			return "", false
		}
	}
	for _, s := range specials {
		if s.prefix.Contains(a) && !(allowPrivate && s.private) {
			return s.what, true
		}
	}
	return "", false
}

// ErrRefusedAddress is wrapped by the error DialControl returns.
var ErrRefusedAddress = fmt.Errorf("refusing to connect to a special-purpose address")

// DialControl returns a net.Dialer Control that refuses the addresses of
// Refused at connect time, after DNS (a name that resolved to a public
// address when it was checked and to loopback now is still refused), for
// every connection the dialer makes: redirect targets and token realms
// included.
func DialControl(allowPrivate bool) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrRefusedAddress, address, err)
		}
		if why, bad := Refused(ap.Addr(), allowPrivate); bad {
			return fmt.Errorf("%w: %s (%s)", ErrRefusedAddress, ap.Addr(), why)
		}
		return nil
	}
}
