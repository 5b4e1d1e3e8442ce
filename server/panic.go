package server

import (
	"net/http"

	"github.com/berth-registry/berth/internal/guard"
	"github.com/prometheus/client_golang/prometheus"
)

// goSafe runs f in a goroutine whose panic is logged with its stack and
// counted in berth_panics_total instead of ending the process. Every
// goroutine the server starts goes through it.
func (s *Server) goSafe(where string, f func()) {
	guard.Go(s.log, where, s.m.panics.WithLabelValues("goroutine").Inc, f)
}

// Go is goSafe for the goroutines package main starts (housekeeping,
// scheduled prefetch), so they are counted in the same metric.
func (s *Server) Go(where string, f func()) { s.goSafe(where, f) }

// recoverPanics answers 500 to a request whose handler panicked (once
// nothing was written yet), logs the panic once with its stack and counts
// it. http.ErrAbortHandler, the way to abort a response on purpose, passes
// through.
func (s *Server) recoverPanics(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			func() {
				defer guard.Recover(s.log, "handler "+r.Method+" "+r.URL.Path, s.m.panics.WithLabelValues("handler").Inc)
				panic(v)
			}()
			if sw.status == 0 {
				s.writeError(sw, r, errf(codeUnknown, "internal error"), route{}, formatRegistry)
			}
		}()
		h.ServeHTTP(sw, r)
	})
}

// panicCounter is berth_panics_total: panics recovered in handlers and
// goroutines of the server, and in the store's background loops.
type panicCounter struct {
	vec   *prometheus.CounterVec
	store func() int64
	desc  *prometheus.Desc
}

func newPanicCounter(store func() int64) *panicCounter {
	const name, help = "berth_panics_total", "Panics recovered (logged with their stack) instead of ending the process, by where: handler, goroutine, store."
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"where"})
	vec.WithLabelValues("handler")
	vec.WithLabelValues("goroutine")
	return &panicCounter{vec: vec, store: store, desc: prometheus.NewDesc(name, help, []string{"where"}, nil)}
}

func (p *panicCounter) WithLabelValues(where string) prometheus.Counter {
	return p.vec.WithLabelValues(where)
}

func (p *panicCounter) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }

func (p *panicCounter) Collect(ch chan<- prometheus.Metric) {
	p.vec.Collect(ch)
	if p.store != nil {
		ch <- prometheus.MustNewConstMetric(p.desc, prometheus.CounterValue, float64(p.store()), "store")
	}
}
