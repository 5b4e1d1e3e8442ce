package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Rate is bytes per second written as a size per second: "50MB/s".
type Rate int64

// UnmarshalText parses "<size>/s".
func (r *Rate) UnmarshalText(b []byte) error {
	v, ok := strings.CutSuffix(strings.TrimSpace(string(b)), "/s")
	if !ok {
		return fmt.Errorf("invalid rate %q (use e.g. 50MB/s)", b)
	}
	var sz Size
	if err := sz.UnmarshalText([]byte(v)); err != nil {
		return fmt.Errorf("invalid rate %q: %w", b, err)
	}
	*r = Rate(sz)
	return nil
}

func (r Rate) String() string { return humanSize(int64(r)) + "/s" }

// Duration is a time.Duration written as "90s", "1h", "7d".
type Duration time.Duration

// UnmarshalText parses Go durations plus a "d" (day) suffix.
func (d *Duration) UnmarshalText(b []byte) error {
	s := string(b)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseFloat(n, 64)
		if err != nil || days < 0 {
			return fmt.Errorf("invalid duration %q", s)
		}
		*d = Duration(time.Duration(days * float64(24*time.Hour)))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("invalid duration %q (use e.g. 30s, 5m, 1h, 7d)", s)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) String() string { return time.Duration(d).String() }

// Size is a byte count written with a unit: "100GiB", "500MB", "512B".
// A number without a unit is refused (is max_size = "100" 100 bytes or
// 100 GB?), but for 0.
type Size int64

// UnmarshalTOML takes a string with a unit, or the integer 0.
func (s *Size) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		return s.UnmarshalText([]byte(v))
	case int64:
		if v == 0 {
			*s = 0
			return nil
		}
		return fmt.Errorf("size %d has no unit: write it as a string with one (%q, %q)", v, fmt.Sprint(v)+"B", fmt.Sprint(v)+"MiB")
	}
	return fmt.Errorf("invalid size %v: write it as a string with a unit (\"100GiB\")", v)
}

var sizeRe = regexp.MustCompile(`^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?I?B?)\s*$`)

// UnmarshalText parses sizes with decimal (KB, MB, GB, TB) or binary (KiB,
// MiB, GiB, TiB) units.
func (s *Size) UnmarshalText(b []byte) error {
	m := sizeRe.FindStringSubmatch(strings.ToUpper(string(b)))
	if m == nil {
		return fmt.Errorf("invalid size %q (use e.g. 500GB, 100GiB)", b)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return fmt.Errorf("invalid size %q", b)
	}
	if m[2] == "" && v != 0 {
		return fmt.Errorf("size %q has no unit: write %q for bytes, or use KB, MB, GB, TB, KiB, MiB, GiB, TiB", b, string(b)+"B")
	}
	unit := strings.TrimSuffix(m[2], "B")
	mult := map[string]float64{"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
		"KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30, "TI": 1 << 40, "PI": 1 << 50}[unit]
	if mult == 0 {
		return fmt.Errorf("invalid size unit in %q", b)
	}
	*s = Size(v * mult)
	return nil
}

func (s Size) String() string {
	if s == 0 {
		return "unlimited" // as max_size
	}
	return humanSize(int64(s))
}

// humanSize is a byte count for people: 0B, 512B, 1.5MiB.
func humanSize(n int64) string {
	for _, u := range []struct {
		n string
		v int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.v {
			return fmt.Sprintf("%.1f%s", float64(n)/float64(u.v), u.n)
		}
	}
	return fmt.Sprintf("%dB", n)
}
