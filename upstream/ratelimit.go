package upstream

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RateLimit is what an upstream said of its pull budget, in the headers
// Docker Hub sends on manifest answers:
//
//	ratelimit-limit: 100;w=21600
//	ratelimit-remaining: 76;w=21600
//	docker-ratelimit-source: 203.0.113.7
type RateLimit struct {
	Limit     int           // pulls per window
	Remaining int           // pulls left in this window
	Window    time.Duration // the window (w=seconds); 0 when not given
	Source    string        // whom the upstream counts (an address or an account)
	At        time.Time     // when it was said
}

// maxRateLimit bounds the numbers accepted from headers (they are input).
const maxRateLimit = 1 << 30

// ParseRateLimit reads the ratelimit headers of h. ok is false when h has
// no usable limit. Values are "N" or "N;w=SECONDS"; of a list of policies
// ("100;w=21600, 200;w=3600") the first is taken.
func ParseRateLimit(h http.Header) (rl RateLimit, ok bool) {
	limit, lw, ok1 := parseRateLimitValue(h.Get("Ratelimit-Limit"))
	remaining, rw, ok2 := parseRateLimitValue(h.Get("Ratelimit-Remaining"))
	if !ok1 || !ok2 || remaining > limit {
		return RateLimit{}, false
	}
	rl = RateLimit{Limit: limit, Remaining: remaining, Window: lw, Source: h.Get("Docker-Ratelimit-Source")}
	if rl.Window == 0 {
		rl.Window = rw
	}
	if len(rl.Source) > 128 {
		rl.Source = rl.Source[:128]
	}
	return rl, true
}

func parseRateLimitValue(v string) (n int, window time.Duration, ok bool) {
	v, _, _ = strings.Cut(v, ",")
	num, params, _ := strings.Cut(v, ";")
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || n < 0 || n > maxRateLimit {
		return 0, 0, false
	}
	for _, p := range strings.Split(params, ";") {
		k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
		if strings.EqualFold(k, "w") {
			s, err := strconv.Atoi(val)
			if err != nil || s <= 0 || s > 366*24*3600 {
				return 0, 0, false
			}
			window = time.Duration(s) * time.Second
		}
	}
	return n, window, true
}

// retryAfterDuration reads a Retry-After value in seconds or as an HTTP
// date; ok is false when there is none that makes sense.
func retryAfterDuration(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		if s < 0 || s > 7*24*3600 {
			return 0, false
		}
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 || d > 7*24*time.Hour {
			return 0, false
		}
		return d, true
	}
	return 0, false
}

// budget keeps an upstream's last reported rate limit and whether it is
// spent. A spent budget (remaining 0, or a 429) refuses manifest requests
// until the upstream's Retry-After or the window ends, without asking.
type budget struct {
	mu        sync.Mutex
	last      RateLimit
	known     bool
	exhausted time.Time // refuse manifest requests until then
	onChange  func(exhausted bool, until time.Time)
}

// defaultExhaustion is how long a 429 without Retry-After or window keeps
// manifest requests off the upstream.
const defaultExhaustion = time.Minute

// observe records the answer to a manifest request.
func (b *budget) observe(status int, h http.Header, now time.Time) {
	rl, ok := ParseRateLimit(h)
	b.mu.Lock()
	defer b.mu.Unlock()
	if ok {
		rl.At = now
		b.last, b.known = rl, true
	}
	spent := status == http.StatusTooManyRequests || (ok && rl.Remaining == 0)
	if !spent {
		return
	}
	until := now.Add(defaultExhaustion)
	if d, ok := retryAfterDuration(h.Get("Retry-After"), now); ok {
		until = now.Add(d)
	} else if b.known && b.last.Window > 0 {
		until = now.Add(b.last.Window)
	}
	was := now.Before(b.exhausted)
	if until.After(b.exhausted) {
		b.exhausted = until
	}
	if !was && b.onChange != nil {
		b.onChange(true, b.exhausted)
	}
}

// spent reports whether the budget is spent at now, and until when. The
// first call after a spent budget's end reports the end to onChange.
func (b *budget) spent(now time.Time) (bool, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.exhausted.IsZero() {
		return false, time.Time{}
	}
	if now.Before(b.exhausted) {
		return true, b.exhausted
	}
	b.exhausted = time.Time{}
	if b.onChange != nil {
		b.onChange(false, now)
	}
	return false, time.Time{}
}

// state returns the last rate limit reported and the end of a spent
// budget (zero when not spent).
func (b *budget) state(now time.Time) (RateLimit, bool, time.Time) {
	spent, until := b.spent(now)
	b.mu.Lock()
	defer b.mu.Unlock()
	if !spent {
		until = time.Time{}
	}
	return b.last, b.known, until
}
