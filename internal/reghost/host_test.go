package reghost

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" means refused
	}{
		{"ghcr.io", "ghcr.io"},
		{"GHCR.IO.", "ghcr.io"},
		{"registry-1.docker.io:443", "registry-1.docker.io:443"},
		{"localhost:5000", "localhost:5000"},
		{"localhost", "localhost"},
		{"127.0.0.1:18004", "127.0.0.1:18004"},
		{"[::1]:5000", "[::1]:5000"},
		{"[0:0:0:0:0:0:0:1]", "[::1]"},
		{"[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.1]:80"},
		{"x.lab.internal", "x.lab.internal"},
		// The escape of the issue: a fragment, userinfo, a path, a query.
		{"127.0.0.1:18004#x.lab.internal", ""},
		{"127.0.0.1:18004%23x.lab.internal", ""},
		{"robot@x.lab.internal", ""},
		{"x.lab.internal/evil", ""},
		{"x.lab.internal?a=b", ""},
		{"x.lab.internal\\y", ""},
		{" x.lab.internal", ""},
		{"x.lab.internal\t", ""},
		{"x.läb.internal", ""},
		{"", ""},
		{":5000", ""},
		{"host:", ""},
		{"host:0", ""},
		{"host:65536", ""},
		{"host:080", ""},
		{"host:+80", ""},
		{"host:80:81", ""},
		{"::1", ""},
		{"[::1", ""},
		{"[::1]x", ""},
		{"[fe80::1%eth0]", ""},
		{"[127.0.0.1]", ""},
		{"-a.io", ""},
		{"a-.io", ""},
		{"a..io", ""},
		{"a_b.io", ""},
		{"127.1", ""},
		{"0x7f000001", ""},
		{"2130706433", ""},
		{"a." + strings.Repeat("b", 64) + ".io", ""},
		{strings.Repeat("a.", 130) + "io", ""},
	} {
		h, err := Parse(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("Parse(%q) = %q, want refused", tc.in, h)
			} else if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse(%q): error %v does not wrap ErrInvalid", tc.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if h.String() != tc.want {
			t.Errorf("Parse(%q) = %q, want %q", tc.in, h, tc.want)
		}
		if u := h.URL("https"); u.Host != tc.want || u.String() != "https://"+tc.want {
			t.Errorf("URL of %q = %q", tc.in, u)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		host, glob string
		want       bool
	}{
		{"x.lab.internal", "*.lab.internal", true},
		{"X.Lab.Internal", "*.LAB.internal", true},
		{"x.lab.internal:5000", "*.lab.internal", false},
		{"x.lab.internal:5000", "*.lab.internal:*", true},
		{"localhost:5000", "localhost:*", true},
		{"ghcr.io", "ghcr.io", true},
		{"evil.io", "*.lab.internal", false},
	} {
		if got := MustParse(tc.host).Match(tc.glob); got != tc.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tc.host, tc.glob, got, tc.want)
		}
	}
}

func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		addr             string
		refused, private bool // private: allowed with allowPrivate
	}{
		{"8.8.8.8", false, false},
		{"140.82.112.3", false, false},
		{"2606:4700::1111", false, false},
		{"127.0.0.1", true, true},
		{"127.8.9.10", true, true},
		{"10.1.2.3", true, true},
		{"172.16.0.1", true, true},
		{"192.168.1.1", true, true},
		{"100.64.0.1", true, true},
		{"100.100.100.200", true, false},
		{"169.254.169.254", true, false},
		{"0.0.0.0", true, false},
		{"0.1.2.3", true, false},
		{"192.0.0.170", true, false},
		{"192.0.2.1", true, false},
		{"198.18.0.1", true, false},
		{"198.19.255.255", true, false},
		{"224.0.0.1", true, false},
		{"240.0.0.1", true, false},
		{"255.255.255.255", true, false},
		{"::", true, false},
		{"::1", true, true},
		{"::ffff:127.0.0.1", true, true},
		{"::ffff:169.254.169.254", true, false},
		{"::ffff:8.8.8.8", false, false},
		{"64:ff9b::7f00:1", true, true},
		{"64:ff9b::a9fe:a9fe", true, false},
		{"64:ff9b::808:808", false, false},
		{"64:ff9b:1::1", true, false},
		{"2002:7f00:1::1", true, true},
		{"2002:a9fe:a9fe::", true, false},
		{"2002:808:808::1", false, false},
		{"::7f00:1", true, false},
		{"::808:808", true, false},
		{"2001::1", true, false},
		{"2001:db8::1", true, false},
		{"fc00::1", true, true},
		{"fd12:3456::1", true, true},
		{"fd00:ec2::254", true, false},
		{"fe80::1", true, false},
		{"fec0::1", true, false},
		{"ff02::1", true, false},
		{"100::1", true, false},
	} {
		a := netip.MustParseAddr(tc.addr)
		why, got := Refused(a, false)
		if got != tc.refused {
			t.Errorf("Refused(%s) = %v (%s), want %v", tc.addr, got, why, tc.refused)
		}
		if got && why == "" {
			t.Errorf("Refused(%s) gives no reason", tc.addr)
		}
		_, gotPriv := Refused(a, true)
		if wantPriv := tc.refused && !tc.private; gotPriv != wantPriv {
			t.Errorf("Refused(%s, allowPrivate) = %v, want %v", tc.addr, gotPriv, wantPriv)
		}
	}
}

func TestDialControl(t *testing.T) {
	ctl := DialControl(false)
	if err := ctl("tcp", "127.0.0.1:443", nil); !errors.Is(err, ErrRefusedAddress) {
		t.Errorf("loopback: %v", err)
	}
	if err := ctl("tcp", "[64:ff9b::7f00:1]:443", nil); !errors.Is(err, ErrRefusedAddress) {
		t.Errorf("NAT64 loopback: %v", err)
	}
	if err := ctl("tcp", "8.8.8.8:443", nil); err != nil {
		t.Errorf("public: %v", err)
	}
	if err := DialControl(true)("tcp", "127.0.0.1:443", nil); err != nil {
		t.Errorf("loopback with allow_private_networks: %v", err)
	}
}

// FuzzParse holds the invariant the allowlist rests on: whatever a client
// sends, a Host that Parse accepts prints as text that parses back to
// itself, has no character outside a host's alphabet, and is what its URL
// dials.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"ghcr.io", "127.0.0.1:18004#x.lab.internal", "[::1]:5000", "a@b", "x.lab.internal:443", "LOCALHOST.", "[::ffff:1.2.3.4]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := Parse(s)
		if err != nil {
			return
		}
		out := h.String()
		if strings.Trim(out, "abcdefghijklmnopqrstuvwxyz0123456789-.:[]") != "" {
			t.Fatalf("Parse(%q) = %q: a character outside a host", s, out)
		}
		h2, err := Parse(out)
		if err != nil || h2 != h {
			t.Fatalf("Parse(%q) = %q, which parses back as %q, %v", s, out, h2, err)
		}
		if u := h.URL("https"); u.Host != out || u.Hostname() != strings.Trim(h.Name(), "[]") {
			t.Fatalf("Parse(%q): URL host %q, hostname %q, want %q", s, u.Host, u.Hostname(), out)
		}
	})
}
