package upstream

import (
	"net/http"
	"testing"
	"time"
)

func TestParseRateLimit(t *testing.T) {
	for _, tc := range []struct {
		limit, remaining, source string
		ok                       bool
		want                     RateLimit
	}{
		{"100;w=21600", "76;w=21600", "203.0.113.7", true, RateLimit{Limit: 100, Remaining: 76, Window: 6 * time.Hour, Source: "203.0.113.7"}},
		{"100", "0", "", true, RateLimit{Limit: 100, Remaining: 0}},
		{"100;w=21600, 200;w=3600", "99;w=21600", "", true, RateLimit{Limit: 100, Remaining: 99, Window: 6 * time.Hour}},
		{" 40 ; w=3600", "40", "", true, RateLimit{Limit: 40, Remaining: 40, Window: time.Hour}},
		{"", "", "", false, RateLimit{}},
		{"100;w=21600", "", "", false, RateLimit{}},
		{"abc", "1", "", false, RateLimit{}},
		{"10", "11", "", false, RateLimit{}},         // more left than allowed
		{"-1", "-1", "", false, RateLimit{}},         // negative
		{"10;w=0", "1", "", false, RateLimit{}},      // no window
		{"10;w=-5", "1", "", false, RateLimit{}},     // negative window
		{"99999999999", "1", "", false, RateLimit{}}, // absurd
		{"10;w=99999999999", "1", "", false, RateLimit{}},
	} {
		h := http.Header{}
		h.Set("Ratelimit-Limit", tc.limit)
		h.Set("Ratelimit-Remaining", tc.remaining)
		h.Set("Docker-Ratelimit-Source", tc.source)
		got, ok := ParseRateLimit(h)
		if ok != tc.ok || got != tc.want {
			t.Errorf("limit %q remaining %q: %+v %v, want %+v %v", tc.limit, tc.remaining, got, ok, tc.want, tc.ok)
		}
	}
}

// FuzzParseRateLimit: upstream headers are input; whatever they say, the
// parser neither panics nor returns numbers that make no sense.
func FuzzParseRateLimit(f *testing.F) {
	f.Add("100;w=21600", "76;w=21600")
	f.Add("100", "0")
	f.Add("1;w=1;w=2", "1,2")
	f.Fuzz(func(t *testing.T, limit, remaining string) {
		h := http.Header{"Ratelimit-Limit": {limit}, "Ratelimit-Remaining": {remaining}}
		rl, ok := ParseRateLimit(h)
		if !ok {
			return
		}
		if rl.Limit < 0 || rl.Remaining < 0 || rl.Remaining > rl.Limit || rl.Window < 0 || rl.Limit > maxRateLimit {
			t.Fatalf("%q %q parsed to %+v", limit, remaining, rl)
		}
	})
}

// TestBudgetSpentAndRenewed: remaining 0 spends the budget until the
// window ends; a 429's Retry-After wins over the window; the end is
// reported once.
func TestBudgetSpentAndRenewed(t *testing.T) {
	var events []bool
	b := budget{onChange: func(spent bool, _ time.Time) { events = append(events, spent) }}
	now := time.Unix(1_000_000, 0)
	b.observe(200, http.Header{"Ratelimit-Limit": {"10;w=60"}, "Ratelimit-Remaining": {"1;w=60"}}, now)
	if spent, _ := b.spent(now); spent {
		t.Fatal("spent with 1 left")
	}
	b.observe(200, http.Header{"Ratelimit-Limit": {"10;w=60"}, "Ratelimit-Remaining": {"0;w=60"}}, now)
	if spent, until := b.spent(now.Add(59 * time.Second)); !spent || !until.Equal(now.Add(time.Minute)) {
		t.Fatalf("remaining 0: spent %v until %v, want the window's end", spent, until)
	}
	if spent, _ := b.spent(now.Add(61 * time.Second)); spent {
		t.Fatal("still spent after the window")
	}
	b.observe(429, http.Header{"Retry-After": {"5"}}, now.Add(2*time.Minute))
	if spent, until := b.spent(now.Add(2 * time.Minute)); !spent || !until.Equal(now.Add(2*time.Minute+5*time.Second)) {
		t.Fatalf("429: spent %v until %v, want Retry-After's", spent, until)
	}
	b.spent(now.Add(3 * time.Minute))
	b.spent(now.Add(4 * time.Minute))
	if want := []bool{true, false, true, false}; len(events) != len(want) || events[0] != true || events[1] != false || events[2] != true || events[3] != false {
		t.Fatalf("start/end events %v, want %v", events, want)
	}
}
