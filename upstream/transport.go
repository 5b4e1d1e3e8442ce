package upstream

import (
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/berth-registry/berth/internal/reghost"
)

// retryableStatus is the explicit list of answers worth another try.
var retryableStatus = map[int]bool{
	http.StatusRequestTimeout:      true,
	http.StatusTooManyRequests:     true,
	http.StatusInternalServerError: true,
	http.StatusBadGateway:          true,
	http.StatusServiceUnavailable:  true,
	http.StatusGatewayTimeout:      true,
}

var _ http.RoundTripper = (*retryTransport)(nil)

// retryTransport retries idempotent requests (GET, HEAD without a body) on
// network errors and retryable statuses, with a bounded exponential
// backoff. A Retry-After up to maxWait is honoured; a longer one ends the
// retries and the answer goes back to the caller.
type retryTransport struct {
	inner    http.RoundTripper
	attempts int           // total tries, at least 1
	base     time.Duration // first backoff
	maxWait  time.Duration // cap on any single wait
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	idempotent := (req.Method == http.MethodGet || req.Method == http.MethodHead) && req.Body == nil
	wait := t.base
	for attempt := 1; ; attempt++ {
		resp, err := t.inner.RoundTrip(req)
		last := !idempotent || attempt >= t.attempts
		if err == nil && !retryableStatus[resp.StatusCode] {
			return resp, nil
		}
		if err != nil && req.Context().Err() != nil {
			return nil, err
		}
		if last {
			return resp, err
		}
		d := wait + time.Duration(rand.Int64N(int64(wait)/4+1))
		if resp != nil {
			if ra, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
				if ra > t.maxWait {
					return resp, nil
				}
				d = ra
			}
			resp.Body.Close()
		}
		if d > t.maxWait {
			d = t.maxWait
		}
		select {
		case <-req.Context().Done():
			return nil, req.Context().Err()
		case <-time.After(d):
		}
		wait *= 3
	}
}

func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0), true
	}
	return 0, false
}

var _ http.RoundTripper = (*observeTransport)(nil)

// observeTransport reports every HTTP exchange, auth and redirects
// included, to a hook (metrics).
type observeTransport struct {
	inner   http.RoundTripper
	observe func(method string, status int, d time.Duration, err error)
}

func (t *observeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.inner.RoundTrip(req)
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	t.observe(req.Method, status, time.Since(start), err)
	return resp, err
}

// setDefaults fills in what opts leave zero.
func (opts *Options) setDefaults() {
	if opts.HeaderTimeout <= 0 {
		opts.HeaderTimeout = 30 * time.Second
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 60 * time.Second
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 3
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "berth"
	}
}

// newTransport is the HTTP transport of a client: its dialer refuses
// special-purpose addresses when opts ask.
func newTransport(opts Options) *http.Transport {
	dialer := &net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: 30 * time.Second}
	if opts.RefuseSpecialAddresses {
		dialer.Control = reghost.DialControl(opts.AllowPrivateNetworks)
	}
	return &http.Transport{
		Proxy:                  http.ProxyFromEnvironment,
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    opts.ConnectTimeout,
		ResponseHeaderTimeout:  opts.HeaderTimeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 1 << 20,
		TLSClientConfig:        opts.TLS,
	}
}
