package replicate

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Runner runs rules one at a time each and keeps what the status page
// and /metrics show of them: the last run, the last success, the totals.
type Runner struct {
	mu    sync.Mutex
	state map[string]*ruleState
	m     *metrics
}

type ruleState struct {
	running     bool
	last        *Report
	lastErr     string
	lastSuccess time.Time
}

// Status is what the status page shows of a rule.
type Status struct {
	Rule        string
	Running     bool
	Last        *Report // nil before the first run
	LastError   string  // why the last run could not run (empty when it ran)
	LastSuccess time.Time
}

type metrics struct {
	images, bytes, errors *prometheus.CounterVec
	blobs                 *prometheus.CounterVec
	lastSuccess, running  *prometheus.GaugeVec
}

// NewRunner returns a Runner whose metrics (berth_replicate_*) are
// registered with reg.
func NewRunner(reg prometheus.Registerer) *Runner {
	m := &metrics{
		images: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_replicate_images_total",
			Help: "Tags a replication rule made or moved in its target (images copied)."}, []string{"rule"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_replicate_bytes_total",
			Help: "Blob bytes a replication rule fetched from its source."}, []string{"rule"}),
		blobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_replicate_blobs_total",
			Help: "Blobs a replication rule brought: fetched from the source, or linked from berth's store."}, []string{"rule", "how"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_replicate_errors_total",
			Help: "Repositories, tags and blobs a replication rule failed on (each run goes on past them)."}, []string{"rule"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_replicate_last_success_timestamp_seconds",
			Help: "When a replication rule last finished a run without an error (unix time)."}, []string{"rule"}),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_replicate_running",
			Help: "1 while a replication rule runs."}, []string{"rule"}),
	}
	if reg != nil {
		reg.MustRegister(m.images, m.bytes, m.blobs, m.errors, m.lastSuccess, m.running)
	}
	return &Runner{state: map[string]*ruleState{}, m: m}
}

// Known makes rule names show (with no run yet) on the status page and in
// the metrics.
func (rn *Runner) Known(names ...string) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	for _, n := range names {
		if rn.state[n] == nil {
			rn.state[n] = &ruleState{}
		}
		rn.m.images.WithLabelValues(n)
		rn.m.bytes.WithLabelValues(n)
		rn.m.errors.WithLabelValues(n)
		rn.m.blobs.WithLabelValues(n, "fetched")
		rn.m.blobs.WithLabelValues(n, "linked")
		rn.m.running.WithLabelValues(n)
	}
}

// ErrRunning is returned for a rule that is already running.
var ErrRunning = fmt.Errorf("replication: the rule is already running")

// Run runs rule (see Run), unless a run of the same name is under way.
func (rn *Runner) Run(ctx context.Context, rule Rule, src Source, dst Target, emit func(Event)) (Report, error) {
	rn.Known(rule.Name)
	rn.mu.Lock()
	st := rn.state[rule.Name]
	if st.running {
		rn.mu.Unlock()
		return Report{}, fmt.Errorf("%w: %s", ErrRunning, rule.Name)
	}
	st.running = true
	rn.mu.Unlock()
	rn.m.running.WithLabelValues(rule.Name).Set(1)
	rep, err := Run(ctx, rule, src, dst, emit)
	rn.m.running.WithLabelValues(rule.Name).Set(0)
	if !rule.DryRun {
		rn.m.images.WithLabelValues(rule.Name).Add(float64(rep.Tags))
		rn.m.bytes.WithLabelValues(rule.Name).Add(float64(rep.Bytes))
		rn.m.blobs.WithLabelValues(rule.Name, "fetched").Add(float64(rep.Blobs))
		rn.m.blobs.WithLabelValues(rule.Name, "linked").Add(float64(rep.Linked))
	}
	rn.m.errors.WithLabelValues(rule.Name).Add(float64(rep.Errors))
	rn.mu.Lock()
	defer rn.mu.Unlock()
	st.running = false
	if rule.DryRun {
		return rep, err
	}
	st.last, st.lastErr = &rep, ""
	if err != nil {
		st.lastErr = err.Error()
		if rep.Started.IsZero() {
			st.last = nil
		}
	} else if rep.Errors == 0 {
		st.lastSuccess = time.Now()
		rn.m.lastSuccess.WithLabelValues(rule.Name).Set(float64(st.lastSuccess.Unix()))
	}
	return rep, err
}

// Status lists the rules known, by name.
func (rn *Runner) Status() []Status {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	out := make([]Status, 0, len(rn.state))
	for name, st := range rn.state {
		out = append(out, Status{Rule: name, Running: st.running, Last: st.last, LastError: st.lastErr, LastSuccess: st.lastSuccess})
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Rule, b.Rule) })
	return out
}
