package upstream

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/berth-registry/berth/internal/lru"
)

// Failover is one upstream reached through several URLs, tried in order
// (mirrors first, the origin last), with a circuit breaker per URL: a URL
// that fails (network error, timeout, 5xx, 429) gets no request for
// offline, after which it is tried again. A 404 (or a refusal) from one
// URL falls through to the next; the answer is the last URL's. Blobs are
// asked first of the URL that served their image's manifest.
type Failover struct {
	clients []*Client
	offline time.Duration
	log     *slog.Logger

	mu        sync.Mutex
	downUntil []time.Time
	cause     []string
	served    *lru.Cache[string, int] // image → the client that served its manifest
}

// Endpoint is the state of one URL of a Failover.
type Endpoint struct {
	URL          string
	OfflineUntil time.Time // zero when the URL is in use
	Cause        string    // why it was taken offline
}

// NewFailover returns a Failover over clients, in order. offline <= 0
// means one minute.
func NewFailover(clients []*Client, offline time.Duration, log *slog.Logger) (*Failover, error) {
	if len(clients) == 0 {
		return nil, errors.New("upstream: failover without URLs")
	}
	if offline <= 0 {
		offline = time.Minute
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Failover{clients: clients, offline: offline, log: log,
		downUntil: make([]time.Time, len(clients)), cause: make([]string, len(clients)),
		served: lru.New[string, int](10_000, time.Hour)}, nil
}

// Endpoints returns the state of every URL, in order.
func (f *Failover) Endpoints() []Endpoint {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Endpoint, len(f.clients))
	for i, c := range f.clients {
		out[i] = Endpoint{URL: c.URL()}
		if now.Before(f.downUntil[i]) {
			out[i].OfflineUntil, out[i].Cause = f.downUntil[i], f.cause[i]
		}
	}
	return out
}

// Host is the last URL's host: the origin, whose namespace (?ns=) the
// proxy answers for.
func (f *Failover) Host() string { return f.clients[len(f.clients)-1].Host() }

// order lists the clients to try: those not offline, first the preferred
// one (>= 0); when every URL is offline, the last one anyway.
func (f *Failover) order(preferred int) []int {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	if preferred >= 0 && preferred < len(f.clients) && !now.Before(f.downUntil[preferred]) {
		out = append(out, preferred)
	}
	for i := range f.clients {
		if i != preferred && !now.Before(f.downUntil[i]) {
			out = append(out, i)
		}
	}
	if len(out) == 0 {
		out = []int{len(f.clients) - 1}
	}
	return out
}

// failed takes URL i offline when err says it cannot answer now.
func (f *Failover) failed(ctx context.Context, i int, err error) {
	if ctx.Err() != nil || errors.Is(err, ErrBudgetSpent) || !(errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)) {
		return
	}
	f.mu.Lock()
	was := time.Now().Before(f.downUntil[i])
	f.downUntil[i], f.cause[i] = time.Now().Add(f.offline), err.Error()
	f.mu.Unlock()
	if !was && len(f.clients) > 1 {
		f.log.Warn("upstream URL failing: skipped while offline", "url", f.clients[i].URL(), "for", f.offline, "err", err)
	}
}

// try asks the clients in order until one answers; the last error is
// returned when none does.
func (f *Failover) try(ctx context.Context, preferred int, call func(c *Client) (*http.Response, error)) (*http.Response, int, error) {
	var last error
	for _, i := range f.order(preferred) {
		resp, err := call(f.clients[i])
		if err == nil {
			return resp, i, nil
		}
		if ctx.Err() != nil {
			return nil, -1, err
		}
		f.failed(ctx, i, err)
		last = err
	}
	return nil, -1, last
}

// Manifest asks the URLs in order; the one that answers serves the
// image's blobs first.
func (f *Failover) Manifest(ctx context.Context, method, image, ref string) (*http.Response, error) {
	resp, i, err := f.try(ctx, -1, func(c *Client) (*http.Response, error) { return c.Manifest(ctx, method, image, ref) })
	if err == nil {
		f.served.Add(image, i)
	}
	return resp, err
}

func (f *Failover) preferred(image string) int {
	if i, ok := f.served.Get(image); ok {
		return i
	}
	return -1
}

// Blob asks first the URL that served image's manifest.
func (f *Failover) Blob(ctx context.Context, method, image, dgst string) (*http.Response, error) {
	resp, _, err := f.try(ctx, f.preferred(image), func(c *Client) (*http.Response, error) { return c.Blob(ctx, method, image, dgst) })
	return resp, err
}

// BlobRange asks first the URL that served image's manifest.
func (f *Failover) BlobRange(ctx context.Context, image, dgst string, start, end int64) (*http.Response, error) {
	resp, _, err := f.try(ctx, f.preferred(image), func(c *Client) (*http.Response, error) { return c.BlobRange(ctx, image, dgst, start, end) })
	return resp, err
}

// BlobAt GETs a range from where a registry redirected a blob request.
func (f *Failover) BlobAt(ctx context.Context, image, location string, start, end int64) (*http.Response, error) {
	i := max(f.preferred(image), 0) // -1: no URL served it; any client sends it alike
	return f.clients[i].BlobAt(ctx, image, location, start, end)
}

// Referrers asks first the URL that served image's manifest.
func (f *Failover) Referrers(ctx context.Context, image, dgst, artifactType string) (*http.Response, error) {
	resp, _, err := f.try(ctx, f.preferred(image), func(c *Client) (*http.Response, error) {
		return c.Referrers(ctx, image, dgst, artifactType)
	})
	return resp, err
}

// Catalog asks the URLs in order.
func (f *Failover) Catalog(ctx context.Context, query url.Values) (*http.Response, error) {
	resp, _, err := f.try(ctx, -1, func(c *Client) (*http.Response, error) { return c.Catalog(ctx, query) })
	return resp, err
}

// Tags asks the URLs in order.
func (f *Failover) Tags(ctx context.Context, image string, query url.Values) (*http.Response, error) {
	resp, _, err := f.try(ctx, -1, func(c *Client) (*http.Response, error) { return c.Tags(ctx, image, query) })
	return resp, err
}

// Ping succeeds when one URL answers.
func (f *Failover) Ping(ctx context.Context) error {
	_, _, err := f.try(ctx, -1, func(c *Client) (*http.Response, error) {
		if err := c.Ping(ctx); err != nil {
			return nil, err
		}
		return &http.Response{Body: http.NoBody}, nil
	})
	return err
}

// RateLimit is the budget of the last URL that reports one (the origin
// usually: Docker Hub counts, mirrors do not).
func (f *Failover) RateLimit() (RateLimit, bool, time.Time) {
	for i := len(f.clients) - 1; i >= 0; i-- {
		if rl, known, until := f.clients[i].RateLimit(); known || !until.IsZero() {
			return rl, known, until
		}
	}
	return RateLimit{}, false, time.Time{}
}

// CloseIdleConnections closes the idle connections of every URL's client.
func (f *Failover) CloseIdleConnections() {
	for _, c := range f.clients {
		c.CloseIdleConnections()
	}
}
