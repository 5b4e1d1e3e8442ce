package server

import (
	"fmt"
	"time"

	"github.com/berth-registry/berth/upstream"
	"github.com/prometheus/client_golang/prometheus"
)

// rateLimiter is an Upstream that reports the pull budget its registry
// announces (upstream.Client does, from Docker Hub's ratelimit headers).
type rateLimiter interface {
	RateLimit() (rl upstream.RateLimit, known bool, spentUntil time.Time)
}

// rateLimit is what rp's upstream reported of its pull budget.
func (rp *repo) rateLimit() (rl upstream.RateLimit, known bool, spentUntil time.Time) {
	if r, ok := rp.Upstream.(rateLimiter); ok {
		return r.RateLimit()
	}
	return upstream.RateLimit{}, false, time.Time{}
}

// budgetLine is the status page's wording: "pulls left: 76 of 100 per
// 6 h", and while spent, until when.
func budgetLine(rl upstream.RateLimit, known bool, spentUntil time.Time) string {
	if !known && spentUntil.IsZero() {
		return ""
	}
	s := ""
	if known {
		s = fmt.Sprintf("pulls left: %d of %d", rl.Remaining, rl.Limit)
		if rl.Window > 0 {
			s += " per " + windowString(rl.Window)
		}
	}
	if !spentUntil.IsZero() {
		if s != "" {
			s += "; "
		}
		s += "spent: misses refused until " + spentUntil.Format("15:04:05")
	}
	return s
}

func windowString(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%d h", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%d min", d/time.Minute)
	}
	return d.String()
}

// budgetCollector exports the pull budget of every proxy whose upstream
// reports one: berth_upstream_ratelimit_{limit,remaining,window_seconds}
// and berth_upstream_ratelimit_spent (1 while misses are refused).
type budgetCollector struct {
	s                               *Server
	limit, remaining, window, spent *prometheus.Desc
}

func newBudgetCollector(s *Server) *budgetCollector {
	l := []string{"repository"}
	return &budgetCollector{s: s,
		limit:     prometheus.NewDesc("berth_upstream_ratelimit_limit", "Pulls per window the upstream allows (its ratelimit-limit header).", l, nil),
		remaining: prometheus.NewDesc("berth_upstream_ratelimit_remaining", "Pulls left in the window, as the upstream last said (ratelimit-remaining).", l, nil),
		window:    prometheus.NewDesc("berth_upstream_ratelimit_window_seconds", "The upstream's rate-limit window (the w= of its headers).", l, nil),
		spent:     prometheus.NewDesc("berth_upstream_ratelimit_spent", "1 while the upstream's pull budget is spent and manifest misses are answered 429 without asking.", l, nil),
	}
}

func (c *budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.limit
	ch <- c.remaining
	ch <- c.window
	ch <- c.spent
}

func (c *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	for _, rp := range c.s.hosts.withHosts() {
		if rp.asProxy() == nil {
			continue
		}
		rl, known, until := rp.rateLimit()
		if known {
			ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(rl.Limit), rp.Name)
			ch <- prometheus.MustNewConstMetric(c.remaining, prometheus.GaugeValue, float64(rl.Remaining), rp.Name)
			ch <- prometheus.MustNewConstMetric(c.window, prometheus.GaugeValue, rl.Window.Seconds(), rp.Name)
		}
		if known || !until.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.spent, prometheus.GaugeValue, boolf(!until.IsZero()), rp.Name)
		}
	}
}

// endpointer is an Upstream reached through several URLs
// (upstream.Failover), each with its circuit breaker.
type endpointer interface {
	Endpoints() []upstream.Endpoint
}

// endpoints is rp's upstream URLs and their state, nil for one URL.
func (rp *repo) endpoints() []upstream.Endpoint {
	if e, ok := rp.Upstream.(endpointer); ok {
		return e.Endpoints()
	}
	return nil
}

// endpointsLine is the status page's wording of a proxy's URLs:
// "https://mirror.gcr.io (offline until 14:05:10) → https://registry-1.docker.io".
func endpointsLine(eps []upstream.Endpoint) string {
	s := ""
	for i, e := range eps {
		if i > 0 {
			s += " → "
		}
		s += e.URL
		if !e.OfflineUntil.IsZero() {
			s += " (offline until " + e.OfflineUntil.Format("15:04:05") + ")"
		}
	}
	return s
}

// endpointCollector exports berth_upstream_url_offline{repository,url}: 1
// while a URL of a proxy is skipped after failing.
type endpointCollector struct {
	s    *Server
	desc *prometheus.Desc
}

func (c *endpointCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *endpointCollector) Collect(ch chan<- prometheus.Metric) {
	for _, rp := range c.s.hosts.withHosts() {
		if rp.asProxy() == nil {
			continue
		}
		for _, e := range rp.endpoints() {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, boolf(!e.OfflineUntil.IsZero()), rp.Name, e.URL)
		}
	}
}
