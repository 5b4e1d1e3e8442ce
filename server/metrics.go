package server

import (
	"context"
	"sync"
	"syscall"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are berth's Prometheus collectors, registered on a registry the
// caller makes (no globals).
type metrics struct {
	requests        *prometheus.CounterVec   // repository, kind, method, code
	requestDuration *prometheus.HistogramVec // kind, method
	cache           *prometheus.CounterVec   // repository, kind, result
	servedBytes     *prometheus.CounterVec   // repository, source
	upstreamBytes   *prometheus.CounterVec   // repository
	upstreamErrors  *prometheus.CounterVec   // repository, reason
	resumed         *prometheus.CounterVec   // repository
	eager           *prometheus.CounterVec   // repository
	inflight        prometheus.Gauge
	digestMismatch  *prometheus.CounterVec // repository
	passThrough     *prometheus.CounterVec // repository, reason
	panics          *panicCounter          // where
	diskFull        prometheus.Counter
	authFailures    *prometheus.CounterVec // reason
	groupResults    *prometheus.CounterVec // group, member, kind, result
	groupBytes      *prometheus.CounterVec // group, member, source
	refused         *prometheus.CounterVec // what: a budget that answered 429 (logins aside)

	damagedMu sync.Mutex
	damagedN  int
	damagedAt time.Time
}

// damaged is the number of damaged images, counted at most once a minute
// (it scans the index).
func (m *metrics) damaged(st opsStore) int {
	m.damagedMu.Lock()
	defer m.damagedMu.Unlock()
	if time.Since(m.damagedAt) >= time.Minute {
		if list, err := st.DamagedImages(context.Background()); err == nil {
			m.damagedN, m.damagedAt = len(list), time.Now()
		}
	}
	return m.damagedN
}

// Cache results.
const (
	resultHit         = "hit"         // served from what was on disk before the request (the cache, or hosted content)
	resultMiss        = "miss"        // fetched from upstream
	resultStale       = "stale"       // upstream failed, stale copy served
	resultRevalidated = "revalidated" // stale tag confirmed by upstream HEAD
	resultCoalesced   = "coalesced"   // joined a download already under way (not a hit: the bytes came from upstream for this pull)
	resultNegative    = "negative"    // remembered upstream 404
)

func newMetrics(reg prometheus.Registerer, st opsStore) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_http_requests_total", Help: "Registry API requests by repository, endpoint kind, method and status code.",
		}, []string{"repository", "kind", "method", "code"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "berth_http_request_duration_seconds", Help: "Time to answer registry API requests.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"kind", "method"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_cache_results_total", Help: "Cache lookups by repository, kind (manifest, blob) and result (hit, miss, stale, revalidated, coalesced, negative).",
		}, []string{"repository", "kind", "result"}),
		servedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_served_bytes_total", Help: "Bytes of manifests and blobs sent to clients, by where they came from (cache, upstream).",
		}, []string{"repository", "source"}),
		eager: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_eager_downloads_total", Help: "Blob downloads started when their image manifest was served, before a client asked (eager_layers).",
		}, []string{"repository"}),
		resumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_upstream_resumed_total", Help: "Upstream blob downloads that broke and continued from the last byte on disk.",
		}, []string{"repository"}),
		upstreamBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_upstream_bytes_total", Help: "Bytes of manifests and blobs read from upstream registries.",
		}, []string{"repository"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_upstream_errors_total", Help: "Failed upstream operations by reason (unavailable, denied, digest, size, timeout, budget, other).",
		}, []string{"repository", "reason"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_inflight_downloads", Help: "Upstream blob downloads under way.",
		}),
		digestMismatch: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_digest_mismatches_total", Help: "Upstream content that did not match its digest or size; never cached.",
		}, []string{"repository"}),
		passThrough: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_pass_through_total", Help: "Responses served from upstream without caching, by reason (store_error).",
		}, []string{"repository", "reason"}),
	}
	var storePanics func() int64
	if st != nil {
		storePanics = func() int64 { return st.Counters().Panics }
	}
	m.panics = newPanicCounter(storePanics)
	m.diskFull = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "berth_disk_full_total", Help: "Requests refused (507) because the data directory's disk was full.",
	})
	m.authFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_auth_failures_total", Help: "Failed sign-ins by reason (unknown_user, bad_password, malformed, bad_token, throttled, busy).",
	}, []string{"reason"})
	for _, r := range []string{failUnknownUser, failBadPassword, failMalformed, failBadToken, failThrottled, failBusy} {
		m.authFailures.WithLabelValues(r)
	}
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_budget_refusals_total", Help: "Requests answered 429 because a bound on what clients may hold was reached, by bound (connections, downloads, uploads, upload_bytes).",
	}, []string{"bound"})
	m.groupResults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_group_cache_results_total", Help: "Requests through a group by the member that answered, kind and result (as berth_cache_results_total, which counts them under the member).",
	}, []string{"group", "member", "kind", "result"})
	m.groupBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_group_served_bytes_total", Help: "Bytes sent to clients through a group, by the member that answered and source (as berth_served_bytes_total, which counts them under the member).",
	}, []string{"group", "member", "source"})
	reg.MustRegister(m.authFailures, m.refused, m.groupResults, m.groupBytes)
	reg.MustRegister(m.panics, m.diskFull, m.requests, m.requestDuration, m.cache, m.servedBytes,
		m.upstreamBytes, m.upstreamErrors, m.resumed, m.eager, m.inflight, m.digestMismatch, m.passThrough)
	if st != nil {
		counter := func(name, help string, f func(store.Counters) int64) prometheus.Collector {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f(st.Counters())) })
		}
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_store_bytes", Help: "Bytes of blobs and manifests in the store."},
				func() float64 { b, _ := st.Stats(); return float64(b) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_store_blobs", Help: "Blobs and manifests in the store."},
				func() float64 { _, n := st.Stats(); return float64(n) }),
			counter("berth_evictions_total", "Cached blobs and manifests evicted to stay under max_size.", func(c store.Counters) int64 { return c.Evictions }),
			counter("berth_evicted_bytes_total", "Bytes evicted to stay under max_size.", func(c store.Counters) int64 { return c.EvictedBytes }),
			counter("berth_gc_runs_total", "Garbage collections run.", func(c store.Counters) int64 { return c.GCRuns }),
			counter("berth_gc_freed_bytes_total", "Bytes freed by garbage collection.", func(c store.Counters) int64 { return c.GCFreedBytes }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_damaged_images", Help: "Pushed images naming content the store no longer holds (see berth verify); checked at most once a minute."},
				func() float64 { return float64(m.damaged(st)) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_disk_free_bytes", Help: "Free bytes on the data directory's filesystem."},
				func() float64 { return float64(diskFree(st.Dir())) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_verify_last_problems", Help: "Problems found by the last berth verify (-1: never run)."},
				func() float64 {
					if _, n, ok := st.LastVerify(); ok {
						return float64(n)
					}
					return -1
				}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_verify_last_timestamp_seconds", Help: "When berth verify last ran (0: never)."},
				func() float64 {
					if at, _, ok := st.LastVerify(); ok {
						return float64(at.Unix())
					}
					return 0
				}),
		)
	}
	return m
}

// initRepository creates the series of a repository at zero, so that
// dashboards and alerts see them before the first event.
func (m *metrics) initRepository(name string, proxy bool) {
	for _, kind := range []string{"manifest", "blob"} {
		for _, res := range []string{resultHit, resultMiss, resultStale, resultRevalidated, resultCoalesced, resultNegative} {
			m.cache.WithLabelValues(name, kind, res)
		}
	}
	m.servedBytes.WithLabelValues(name, "cache")
	m.servedBytes.WithLabelValues(name, "upstream")
	if proxy {
		for _, reason := range []string{"unavailable", "denied", "digest", "size", "timeout", "budget", "other"} {
			m.upstreamErrors.WithLabelValues(name, reason)
		}
		m.upstreamBytes.WithLabelValues(name)
		m.resumed.WithLabelValues(name)
		m.eager.WithLabelValues(name)
		m.digestMismatch.WithLabelValues(name)
		m.passThrough.WithLabelValues(name, "store_error")
	}
}

// dropRepository deletes the series of a repository that is gone (a
// host proxy dropped from the host table).
func (m *metrics) dropRepository(name string) {
	l := prometheus.Labels{"repository": name}
	for _, v := range []*prometheus.CounterVec{m.requests, m.cache, m.servedBytes, m.upstreamBytes, m.upstreamErrors,
		m.resumed, m.eager, m.digestMismatch, m.passThrough} {
		v.DeletePartialMatch(l)
	}
	m.groupResults.DeletePartialMatch(prometheus.Labels{"member": name})
	m.groupBytes.DeletePartialMatch(prometheus.Labels{"member": name})
}

// diskFree returns the bytes available to berth on dir's filesystem.
func diskFree(dir string) uint64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return uint64(st.Bavail) * uint64(st.Bsize)
}
