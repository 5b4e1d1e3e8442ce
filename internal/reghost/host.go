// Package reghost turns a registry host that a client names (a ?ns=
// value, a first path segment, a forwarded namespace) into one canonical
// value, and holds the one table of addresses berth never dials for a
// client's choice.
//
// Everything after the edge works on a Host: matching against allowlist
// globs, the store path, the metrics label, the credentials lookup and
// the upstream URL all use Host.String(), so what matched is what is
// dialled. A string that is not exactly a host (userinfo, a path, a
// query, a fragment, percent-escapes, white space, non-ASCII, a port that
// is not 1-65535) is refused by Parse: nothing is matched as the raw
// string a client sent.
package reghost

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
)

// Host is a registry host: a DNS name (lower case, no trailing dot) or
// an IP literal, and a port (0: none given). The zero Host is invalid.
type Host struct {
	name string     // DNS name; "" for an IP literal
	addr netip.Addr // IP literal; invalid for a name
	port uint16
}

// ErrInvalid is wrapped by every error Parse returns.
var ErrInvalid = errors.New("invalid registry host")

// maxLen bounds the text of a host: a 253-byte name, a colon and a
// five-digit port (an IPv6 literal in brackets is shorter).
const maxLen = 253 + 1 + 5

// Parse reads s as "name", "name:port", "ipv4[:port]" or "[ipv6][:port]".
// Names follow RFC 1123 (labels of letters, digits and inner hyphens, at
// most 63 bytes, 253 in all) and may end in one dot; the last label may
// not be all digits or a hex number (resolvers read such names as
// addresses). IPv6 literals need brackets and carry no zone.
func Parse(s string) (Host, error) {
	if s == "" {
		return Host{}, fmt.Errorf("%w: empty", ErrInvalid)
	}
	if len(s) > maxLen {
		return Host{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalid, maxLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-.:[]", c) >= 0) {
			return Host{}, fmt.Errorf("%w: %q has the character %q", ErrInvalid, s, c)
		}
	}
	var h Host
	hostPart, portPart, hasPort := s, "", false
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return Host{}, fmt.Errorf("%w: %q: unclosed bracket", ErrInvalid, s)
		}
		hostPart = s[1:end]
		switch rest := s[end+1:]; {
		case rest == "":
		case rest[0] == ':':
			portPart, hasPort = rest[1:], true
		default:
			return Host{}, fmt.Errorf("%w: %q: text after the address", ErrInvalid, s)
		}
		a, err := netip.ParseAddr(hostPart)
		if err != nil || !a.Is6() || a.Zone() != "" {
			return Host{}, fmt.Errorf("%w: %q: not an IPv6 address", ErrInvalid, s)
		}
		h.addr = a
	} else {
		if strings.ContainsAny(s, "[]") {
			return Host{}, fmt.Errorf("%w: %q: stray bracket", ErrInvalid, s)
		}
		switch strings.Count(s, ":") {
		case 0:
		case 1:
			hostPart, portPart, _ = strings.Cut(s, ":")
			hasPort = true
		default:
			return Host{}, fmt.Errorf("%w: %q: an IPv6 address needs brackets", ErrInvalid, s)
		}
		if a, err := netip.ParseAddr(hostPart); err == nil && a.Is4() {
			h.addr = a
		} else {
			name, err := parseName(hostPart)
			if err != nil {
				return Host{}, fmt.Errorf("%w: %q: %v", ErrInvalid, s, err)
			}
			h.name = name
		}
	}
	if hasPort {
		p, err := strconv.ParseUint(portPart, 10, 16)
		if err != nil || p == 0 || strconv.FormatUint(p, 10) != portPart {
			return Host{}, fmt.Errorf("%w: %q: the port must be a number from 1 to 65535", ErrInvalid, s)
		}
		h.port = uint16(p)
	}
	return h, nil
}

// parseName checks an RFC 1123 host name and returns it in lower case
// without a trailing dot.
func parseName(s string) (string, error) {
	s = strings.TrimSuffix(strings.ToLower(s), ".")
	if s == "" {
		return "", errors.New("empty name")
	}
	if len(s) > 253 {
		return "", errors.New("name longer than 253 bytes")
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return "", errors.New("a label is empty or longer than 63 bytes")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "", errors.New("a label starts or ends with a hyphen")
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", fmt.Errorf("the character %q", c)
			}
		}
	}
	last := labels[len(labels)-1]
	if strings.Trim(last, "0123456789") == "" {
		return "", errors.New("an address that is not a dotted quad")
	}
	if hex, ok := strings.CutPrefix(last, "0x"); ok && strings.Trim(hex, "0123456789abcdef") == "" {
		return "", errors.New("a hex number, which resolvers read as an address")
	}
	return s, nil
}

// MustParse is Parse for constants in tests and tables; it panics on
// error.
func MustParse(s string) Host {
	h, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return h
}

// IsZero reports whether h is the zero Host (no host).
func (h Host) IsZero() bool { return h.name == "" && !h.addr.IsValid() }

// Name is the host without its port: a DNS name, or an IP literal (IPv6
// without brackets).
func (h Host) Name() string {
	if h.addr.IsValid() {
		return h.addr.String()
	}
	return h.name
}

// Port is the port given, 0 for none.
func (h Host) Port() uint16 { return h.port }

// Addr is the address of an IP literal; ok is false for a name.
func (h Host) Addr() (a netip.Addr, ok bool) { return h.addr, h.addr.IsValid() }

// String is the canonical text: name[:port], [ipv6][:port]. It is the
// one form matched, stored, labelled and dialled.
func (h Host) String() string {
	s := h.name
	if h.addr.Is6() {
		s = "[" + h.addr.String() + "]"
	} else if h.addr.IsValid() {
		s = h.addr.String()
	}
	if h.port != 0 {
		s += ":" + strconv.Itoa(int(h.port))
	}
	return s
}

// Match reports whether h matches glob ("ghcr.io", "*.gcr.io",
// "localhost:*"), compared case-insensitively with path.Match against
// String(): a glob without a port matches only hosts given without one.
func (h Host) Match(glob string) bool {
	ok, _ := path.Match(strings.ToLower(glob), h.String())
	return ok
}

// MatchAny reports whether h matches one of globs.
func (h Host) MatchAny(globs []string) bool {
	for _, g := range globs {
		if h.Match(g) {
			return true
		}
	}
	return false
}

// URL is the registry's base URL for scheme ("https" or "http"), built
// as a url.URL, never by concatenation.
func (h Host) URL(scheme string) *url.URL {
	return &url.URL{Scheme: scheme, Host: h.String()}
}

// IsRegistryHost reports whether a first path segment names a registry
// host as Docker reads one: it has a dot or a port, or is localhost.
// It says nothing of validity: Parse decides that.
func IsRegistryHost(s string) bool {
	return strings.ContainsAny(s, ".:[") || strings.EqualFold(s, "localhost")
}
