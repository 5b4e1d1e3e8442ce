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
	rangeStreams    *prometheus.HistogramVec // repository
	rangeMoves      *prometheus.CounterVec   // repository, how
	inflight        prometheus.Gauge
	digestMismatch  *prometheus.CounterVec // repository
	passThrough     *prometheus.CounterVec // repository, reason
	panics          *panicCounter          // where
	diskFull        prometheus.Counter
	authFailures    *prometheus.CounterVec // reason
	groupResults    *prometheus.CounterVec // group, member, kind, result
	groupBytes      *prometheus.CounterVec // group, member, source
	refused         *prometheus.CounterVec // what: a budget that answered 429 (logins aside)
	policyDecisions *prometheus.CounterVec // repository, policy, decision, reason

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

// counterVec and friends make collectors of a name, help text and labels.
func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

func gaugeFunc(name, help string, f func() float64) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
}

func newMetrics(reg prometheus.Registerer, st opsStore) *metrics {
	m := &metrics{
		requests: counterVec("berth_http_requests_total", "Registry API requests by repository, endpoint kind, method and status code.",
			"repository", "kind", "method", "code"),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "berth_http_request_duration_seconds", Help: "Time to answer registry API requests.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"kind", "method"}),
		cache: counterVec("berth_cache_results_total", "Cache lookups by repository, kind (manifest, blob) and result (hit, miss, stale, revalidated, coalesced, negative).",
			"repository", "kind", "result"),
		servedBytes: counterVec("berth_served_bytes_total", "Bytes of manifests and blobs sent to clients, by where they came from (cache, upstream).",
			"repository", "source"),
		eager: counterVec("berth_eager_downloads_total", "Blob downloads started when their image manifest was served, before a client asked (eager_layers).",
			"repository"),
		rangeStreams: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "berth_range_fetch_streams",
			Help: "Streams a ranged upstream download ran at most at once (it adapts them to what the path carries).", Buckets: []float64{1, 2, 4, 8, 16, 32}},
			[]string{"repository"}),
		rangeMoves: counterVec("berth_range_fetch_moves_total", "Work moved between the streams of ranged downloads: steal (half of a lagging stream's rest), takeover (a stalled stream's rest), throttled (a stream ended by a 429 or 503).",
			"repository", "how"),
		resumed:        counterVec("berth_upstream_resumed_total", "Upstream blob downloads that broke and continued from the last byte on disk.", "repository"),
		upstreamBytes:  counterVec("berth_upstream_bytes_total", "Bytes of manifests and blobs read from upstream registries.", "repository"),
		upstreamErrors: counterVec("berth_upstream_errors_total", "Failed upstream operations by reason (unavailable, denied, digest, size, timeout, budget, other).", "repository", "reason"),
		inflight:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_inflight_downloads", Help: "Upstream blob downloads under way."}),
		digestMismatch: counterVec("berth_digest_mismatches_total", "Upstream content that did not match its digest or size; never cached.", "repository"),
		passThrough:    counterVec("berth_pass_through_total", "Responses served from upstream without caching, by reason (store_error).", "repository", "reason"),
		diskFull:       prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_disk_full_total", Help: "Requests refused (507) because the data directory's disk was full."}),
		authFailures:   counterVec("berth_auth_failures_total", "Failed sign-ins by reason (unknown_user, bad_password, malformed, bad_token, throttled, busy).", "reason"),
		refused: counterVec("berth_budget_refusals_total", "Requests answered 429 because a bound on what clients may hold was reached, by bound (connections, downloads, uploads, upload_bytes).",
			"bound"),
		groupResults: counterVec("berth_group_cache_results_total", "Requests through a group by the member that answered, kind and result (as berth_cache_results_total, which counts them under the member).",
			"group", "member", "kind", "result"),
		policyDecisions: counterVec("berth_policy_decisions_total", "Manifests decided by a repository's policy, by decision (allow, deny, hold) and the rule that decided (digest, tag, image, default, index, min_age, approved).",
			"repository", "policy", "decision", "reason"),
		groupBytes: counterVec("berth_group_served_bytes_total", "Bytes sent to clients through a group, by the member that answered and source (as berth_served_bytes_total, which counts them under the member).",
			"group", "member", "source"),
	}
	var storePanics func() int64
	if st != nil {
		storePanics = func() int64 { return st.Counters().Panics }
	}
	m.panics = newPanicCounter(storePanics)
	for _, r := range []string{failUnknownUser, failBadPassword, failMalformed, failBadToken, failThrottled, failBusy} {
		m.authFailures.WithLabelValues(r)
	}
	reg.MustRegister(m.authFailures, m.refused, m.groupResults, m.groupBytes, m.policyDecisions)
	reg.MustRegister(m.panics, m.diskFull, m.requests, m.requestDuration, m.cache, m.servedBytes,
		m.upstreamBytes, m.upstreamErrors, m.resumed, m.eager, m.inflight, m.digestMismatch, m.passThrough, m.rangeStreams, m.rangeMoves)
	if st != nil {
		reg.MustRegister(m.storeCollectors(st)...)
	}
	return m
}

// storeCollectors read the store's figures when scraped.
func (m *metrics) storeCollectors(st opsStore) []prometheus.Collector {
	counter := func(name, help string, f func(store.Counters) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f(st.Counters())) })
	}
	return []prometheus.Collector{
		gaugeFunc("berth_store_bytes", "Bytes of blobs and manifests in the store.", func() float64 { b, _ := st.Stats(); return float64(b) }),
		gaugeFunc("berth_store_blobs", "Blobs and manifests in the store.", func() float64 { _, n := st.Stats(); return float64(n) }),
		counter("berth_evictions_total", "Cached blobs and manifests evicted to stay under max_size.", func(c store.Counters) int64 { return c.Evictions }),
		counter("berth_evicted_bytes_total", "Bytes evicted to stay under max_size.", func(c store.Counters) int64 { return c.EvictedBytes }),
		counter("berth_gc_runs_total", "Garbage collections run.", func(c store.Counters) int64 { return c.GCRuns }),
		counter("berth_gc_freed_bytes_total", "Bytes freed by garbage collection.", func(c store.Counters) int64 { return c.GCFreedBytes }),
		gaugeFunc("berth_damaged_images", "Pushed images naming content the store no longer holds (see berth verify); checked at most once a minute.",
			func() float64 { return float64(m.damaged(st)) }),
		gaugeFunc("berth_disk_free_bytes", "Free bytes on the data directory's filesystem.", func() float64 { return float64(diskFree(st.Dir())) }),
		gaugeFunc("berth_verify_last_problems", "Problems found by the last berth verify (-1: never run).", func() float64 {
			if _, n, ok := st.LastVerify(); ok {
				return float64(n)
			}
			return -1
		}),
		gaugeFunc("berth_verify_last_timestamp_seconds", "When berth verify last ran (0: never).", func() float64 {
			if at, _, ok := st.LastVerify(); ok {
				return float64(at.Unix())
			}
			return 0
		}),
	}
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
		for _, how := range []string{"steal", "takeover", "throttled"} {
			m.rangeMoves.WithLabelValues(name, how)
		}
		m.digestMismatch.WithLabelValues(name)
		m.passThrough.WithLabelValues(name, "store_error")
	}
}

// dropRepository deletes the series of a repository that is gone (a
// host proxy dropped from the host table).
func (m *metrics) dropRepository(name string) {
	l := prometheus.Labels{"repository": name}
	for _, v := range []*prometheus.CounterVec{m.requests, m.cache, m.servedBytes, m.upstreamBytes, m.upstreamErrors,
		m.resumed, m.eager, m.digestMismatch, m.passThrough, m.rangeMoves} {
		v.DeletePartialMatch(l)
	}
	m.rangeStreams.DeletePartialMatch(l)
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
