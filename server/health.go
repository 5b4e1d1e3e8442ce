package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/berth-registry/berth/upstream"
	"github.com/prometheus/client_golang/prometheus"
)

// probeInterval is the longest a proxy's health may go unconfirmed: when
// no real request reached its upstream for this long, the status page or
// /readyz starts one background probe (never more than one per interval).
const probeInterval = time.Minute

// upstreamHealth is what berth knows of one proxy's upstream: the outcome
// of the real upstream requests (any answer, even a 404, means
// reachable; a network error, 5xx or 429 means not), plus at most one
// background probe per probeInterval. Viewing it never sends a request
// and never waits for one.
type upstreamHealth struct {
	mu        sync.Mutex
	seen      time.Time // last outcome
	ok        bool      // of the last outcome
	since     time.Time // the current state (ok or not) began
	cause     string    // the last failure
	lastProbe time.Time
	succeeded bool // a request has had a 2xx answer
	rejected  bool // the last answer refused berth's credentials (401 after signing in)
}

// credentialsRejected reports whether err is the upstream refusing
// berth's credentials: a 401 that survived the auth exchange (the token
// endpoint's included). A 403 is a refusal of one image, not of the
// credentials.
func credentialsRejected(err error) bool {
	var ue *upstream.Error
	return errors.As(err, &ue) && ue.StatusCode == http.StatusUnauthorized
}

// answered reports whether the upstream has once answered a request
// with success.
func (h *upstreamHealth) answered() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.succeeded
}

// observe records the outcome of one upstream request. A cancelled request
// says nothing about the upstream.
func (h *upstreamHealth) observe(err error) {
	if errors.Is(err, context.Canceled) || errors.Is(err, upstream.ErrBudgetSpent) {
		return // nothing was asked, or the asker left
	}
	ok := err == nil || !(errors.Is(err, upstream.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded))
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen.IsZero() || ok != h.ok {
		h.since = now
	}
	h.seen, h.ok = now, ok
	h.succeeded = h.succeeded || err == nil
	if err == nil || credentialsRejected(err) {
		h.rejected = err != nil
	}
	if !ok || h.rejected {
		h.cause = err.Error()
	}
}

// healthState is a snapshot of upstreamHealth.
type healthState struct {
	known    bool
	ok       bool
	rejected bool      // credentials rejected
	since    time.Time // the state began
	seen     time.Time // last outcome
	cause    string
}

// state returns what is known, and whether a probe is due now (the
// caller starts it; due is true once per probeInterval).
func (h *upstreamHealth) state(now time.Time) (st healthState, due bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st = healthState{known: !h.seen.IsZero(), ok: h.ok, rejected: h.rejected, since: h.since, seen: h.seen, cause: h.cause}
	if now.Sub(h.seen) >= probeInterval && now.Sub(h.lastProbe) >= probeInterval {
		h.lastProbe, due = now, true
	}
	return st, due
}

// peek returns what is known without starting a probe: the status page
// causes no upstream traffic.
func (h *upstreamHealth) peek() healthState {
	h.mu.Lock()
	defer h.mu.Unlock()
	return healthState{known: !h.seen.IsZero(), ok: h.ok, rejected: h.rejected, since: h.since, seen: h.seen, cause: h.cause}
}

// String is the status page's wording: "reachable", "credentials
// rejected", "unreachable for 3m, serving cache" (or "nothing cached"
// when the repository holds no image), "not asked yet".
func (st healthState) String() string { return st.words(true) }

// words is String for a repository that holds cached images or not.
func (st healthState) words(cached bool) string {
	switch {
	case !st.known:
		return "not asked yet (checking)"
	case st.rejected:
		return "credentials rejected: check the repository's username and password"
	case st.ok:
		return fmt.Sprintf("reachable (last answer %s ago)", ago(time.Since(st.seen)))
	case !cached:
		return fmt.Sprintf("unreachable for %s; nothing cached to serve", ago(time.Since(st.since)))
	}
	return fmt.Sprintf("unreachable for %s, serving cache", ago(time.Since(st.since)))
}

// healthy is the status page's colour: green for reachable.
func (st healthState) healthy() bool { return st.known && st.ok && !st.rejected }

// ago rounds a duration for people: 42s, 3m, 2h.
func ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// health returns a proxy's upstream health, starting a background probe
// when one is due. It never waits for the network.
func (s *Server) health(rp *repo) healthState {
	st, due := rp.health.state(time.Now())
	if due && rp.Upstream != nil { // an allowlist repository has no upstream of its own
		s.goSafe("upstream probe", func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// Ping's outcome is observed by the wrapper, like any request.
			rp.Upstream.Ping(ctx)
		})
	}
	return st
}

// observedUpstream records the outcome of every call in the proxy's
// upstreamHealth.
type observedUpstream struct {
	Upstream
	h *upstreamHealth
}

func (o observedUpstream) Manifest(ctx context.Context, method, image, ref string) (*http.Response, error) {
	resp, err := o.Upstream.Manifest(ctx, method, image, ref)
	o.h.observe(err)
	return resp, err
}

func (o observedUpstream) Blob(ctx context.Context, method, image, dgst string) (*http.Response, error) {
	resp, err := o.Upstream.Blob(ctx, method, image, dgst)
	o.h.observe(err)
	return resp, err
}

func (o observedUpstream) BlobRange(ctx context.Context, image, dgst string, start, end int64) (*http.Response, error) {
	resp, err := o.Upstream.BlobRange(ctx, image, dgst, start, end)
	o.h.observe(err)
	return resp, err
}

// BlobAt passes on ranges fetched from where the registry redirected,
// when the upstream can.
func (o observedUpstream) BlobAt(ctx context.Context, image, location string, start, end int64) (*http.Response, error) {
	l, ok := o.Upstream.(blobLocator)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return l.BlobAt(ctx, image, location, start, end)
}

func (o observedUpstream) Tags(ctx context.Context, image string, query url.Values) (*http.Response, error) {
	resp, err := o.Upstream.Tags(ctx, image, query)
	o.h.observe(err)
	return resp, err
}

func (o observedUpstream) Referrers(ctx context.Context, image, dgst, artifactType string) (*http.Response, error) {
	resp, err := o.Upstream.Referrers(ctx, image, dgst, artifactType)
	o.h.observe(err)
	return resp, err
}

// RateLimit passes on the pull budget of the upstream, when it reports one.
func (o observedUpstream) RateLimit() (upstream.RateLimit, bool, time.Time) {
	if r, ok := o.Upstream.(rateLimiter); ok {
		return r.RateLimit()
	}
	return upstream.RateLimit{}, false, time.Time{}
}

// Endpoints passes on the URLs of the upstream, when it has several.
func (o observedUpstream) Endpoints() []upstream.Endpoint {
	if e, ok := o.Upstream.(endpointer); ok {
		return e.Endpoints()
	}
	return nil
}

func (o observedUpstream) Ping(ctx context.Context) error {
	err := o.Upstream.Ping(ctx)
	o.h.observe(err)
	return err
}

// CloseIdleConnections passes on to the upstream, when it keeps
// connections (a dropped host proxy lets them go).
func (o observedUpstream) CloseIdleConnections() {
	if c, ok := o.Upstream.(closer); ok {
		c.CloseIdleConnections()
	}
}

// healthCollector exports berth_upstream_up{repository} (1 while the
// last answer was an answer, 0 while the upstream is unreachable) and
// berth_upstream_credentials_rejected{repository} (1 while the upstream
// refuses berth's credentials), from what real requests said: a scrape
// sends nothing upstream.
type healthCollector struct {
	s            *Server
	up, rejected *prometheus.Desc
}

func newHealthCollector(s *Server) *healthCollector {
	l := []string{"repository"}
	return &healthCollector{s: s,
		up:       prometheus.NewDesc("berth_upstream_up", "1 while a proxy's upstream answers, 0 while it is unreachable (from real requests; absent before the first).", l, nil),
		rejected: prometheus.NewDesc("berth_upstream_credentials_rejected", "1 while a proxy's upstream refuses berth's credentials (401 after signing in).", l, nil),
	}
}

func (c *healthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.rejected
}

func (c *healthCollector) Collect(ch chan<- prometheus.Metric) {
	for _, rp := range c.s.hosts.withHosts() {
		if rp.asProxy() == nil || rp.Upstream == nil {
			continue
		}
		st := rp.health.peek()
		if !st.known {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, boolf(st.ok), rp.Name)
		ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.GaugeValue, boolf(st.rejected), rp.Name)
	}
}
