// Package webhook delivers berth's events to HTTP receivers in
// distribution's notification format (an envelope of events, media type
// application/vnd.docker.distribution.events.v2+json), so that receivers
// written for distribution's notifications work unchanged.
//
// Delivery is at least once: an event is queued on disk (a bbolt file of
// its own) for each endpoint whose filters it passes, before Record
// returns, and leaves the queue only when the endpoint answered 2xx. A
// receiver that is down, slow or failing gets the events again with
// backoff, across restarts of berth; a receiver drops duplicates by the
// event id. Each endpoint's queue is bounded: past MaxQueued the oldest
// events are dropped and counted.
package webhook

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
)

// MediaType is the envelope's media type.
const MediaType = "application/vnd.docker.distribution.events.v2+json"

// Endpoint is one receiver.
type Endpoint struct {
	Name string
	URL  string
	// Actions are the event actions sent (default push and delete; see
	// internal/audit for the others).
	Actions []string
	// Repositories are globs of "REPOSITORY/IMAGE" (default all).
	Repositories []string
	Headers      map[string]string // sent with every request (an Authorization, say)
	Timeout      time.Duration     // of one delivery (default 5s)
	MaxQueued    int               // events held for it (default 10,000)
}

// Options configure a Dispatcher.
type Options struct {
	Path      string // the queue file
	Endpoints []Endpoint
	// Source names this berth in the envelope ("host:port").
	Source string
	// Backoff is the first wait after a failed delivery; it doubles up to
	// MaxBackoff (defaults 1s and 5m).
	Backoff, MaxBackoff time.Duration
	Registerer          prometheus.Registerer
	Logger              *slog.Logger
	Client              *http.Client // default: one with no redirects followed
}

// Dispatcher queues and delivers events.
type Dispatcher struct {
	opts  Options
	db    *bolt.DB
	eps   []*endpoint
	log   *slog.Logger
	m     metrics
	wg    sync.WaitGroup
	close sync.Once
}

type endpoint struct {
	Endpoint
	bucket []byte
	wake   chan struct{}
	mu     sync.Mutex
	queued int
}

type metrics struct {
	queued                *prometheus.GaugeVec
	sent, failed, dropped *prometheus.CounterVec
}

// Open opens (or makes) the queue file and counts what it holds.
func Open(opts Options) (*Dispatcher, error) {
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Client == nil {
		opts.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	db, err := bolt.Open(opts.Path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("webhook queue %s: %w", opts.Path, err)
	}
	d := &Dispatcher{opts: opts, db: db, log: opts.Logger, m: newMetrics(opts.Registerer)}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, e := range opts.Endpoints {
			if e.Timeout <= 0 {
				e.Timeout = 5 * time.Second
			}
			if e.MaxQueued <= 0 {
				e.MaxQueued = 10_000
			}
			if len(e.Actions) == 0 {
				e.Actions = []string{audit.Push, audit.Delete}
			}
			ep := &endpoint{Endpoint: e, bucket: []byte(e.Name), wake: make(chan struct{}, 1)}
			b, err := tx.CreateBucketIfNotExists(ep.bucket)
			if err != nil {
				return err
			}
			ep.queued = b.Stats().KeyN
			d.m.queued.WithLabelValues(e.Name).Set(float64(ep.queued))
			d.m.sent.WithLabelValues(e.Name)
			d.m.failed.WithLabelValues(e.Name)
			d.m.dropped.WithLabelValues(e.Name)
			d.eps = append(d.eps, ep)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("webhook queue %s: %w", opts.Path, err)
	}
	return d, nil
}

func newMetrics(reg prometheus.Registerer) metrics {
	m := metrics{
		queued: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_webhook_events_queued",
			Help: "Events waiting for delivery to a webhook endpoint."}, []string{"endpoint"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_webhook_events_sent_total",
			Help: "Events a webhook endpoint acknowledged (2xx)."}, []string{"endpoint"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_webhook_deliveries_failed_total",
			Help: "Deliveries to a webhook endpoint that failed and will be retried."}, []string{"endpoint"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_webhook_events_dropped_total",
			Help: "Events dropped from a full webhook queue (max_queued), oldest first."}, []string{"endpoint"}),
	}
	if reg != nil {
		reg.MustRegister(m.queued, m.sent, m.failed, m.dropped)
	}
	return m
}

// wants reports whether ep sends ev.
func (ep *endpoint) wants(ev audit.Event) bool {
	if !slices.Contains(ep.Actions, ev.Action) {
		return false
	}
	if len(ep.Repositories) == 0 {
		return true
	}
	full := strings.Trim(ev.Repository+"/"+ev.Image, "/")
	return slices.ContainsFunc(ep.Repositories, func(g string) bool {
		ok, _ := path.Match(g, full)
		return ok || g == ev.Repository
	})
}

// Record queues ev for every endpoint that wants it (on disk before it
// returns). A queue that is full drops its oldest event.
func (d *Dispatcher) Record(ev audit.Event) {
	ev = audit.Stamp(ev)
	body, _ := json.Marshal(envelopeEvent(ev, d.opts.Source))
	for _, ep := range d.eps {
		if !ep.wants(ev) {
			continue
		}
		ep.mu.Lock()
		drop := max(0, ep.queued+1-ep.MaxQueued)
		err := d.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(ep.bucket)
			for range drop {
				k, _ := b.Cursor().First()
				if k == nil {
					break
				}
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			seq, _ := b.NextSequence()
			return b.Put(binary.BigEndian.AppendUint64(nil, seq), body)
		})
		if err == nil {
			ep.queued += 1 - drop
			d.m.queued.WithLabelValues(ep.Name).Set(float64(ep.queued))
		}
		ep.mu.Unlock()
		if err != nil {
			d.log.Error("webhook: an event could not be queued", "endpoint", ep.Name, "action", ev.Action, "err", err)
			d.m.dropped.WithLabelValues(ep.Name).Inc()
			continue
		}
		if drop > 0 {
			d.m.dropped.WithLabelValues(ep.Name).Add(float64(drop))
			d.log.Warn("webhook: queue full, oldest events dropped", "endpoint", ep.Name, "dropped", drop, "max_queued", ep.MaxQueued)
		}
		select {
		case ep.wake <- struct{}{}:
		default:
		}
	}
}
