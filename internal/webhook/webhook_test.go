package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// receiver is a webhook endpoint that is down (hangs up), failing (500)
// or up, and keeps what it accepted.
type receiver struct {
	srv  *httptest.Server
	mode atomic.Int32 // 0 down, 1 failing, 2 up

	mu     sync.Mutex
	got    map[string]int // event id → times received while up
	events []event
	header http.Header
}

func newReceiver(t *testing.T) *receiver {
	rc := &receiver{got: map[string]int{}}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch rc.mode.Load() {
		case 0:
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		case 1:
			http.Error(w, "no", http.StatusInternalServerError)
			return
		}
		var env struct{ Events []event }
		if r.Header.Get("Content-Type") != MediaType || json.NewDecoder(r.Body).Decode(&env) != nil {
			http.Error(w, "bad envelope", http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		for _, ev := range env.Events {
			rc.got[ev.ID]++
			rc.events = append(rc.events, ev)
		}
		rc.header = r.Header.Clone()
		rc.mu.Unlock()
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) distinct() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.got)
}

// start opens the queue at path and runs delivery until stop.
func start(t *testing.T, path string, ep Endpoint, reg *prometheus.Registry) (d *Dispatcher, stop func()) {
	t.Helper()
	d, err := Open(Options{Path: path, Endpoints: []Endpoint{ep}, Source: "berth:5000", Backoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	return d, func() { cancel(); <-done; d.Close() }
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A receiver that is down, then fails, across a restart of berth, then
// recovers: every event arrives, in order, each duplicate with its id.
func TestDeliveryThroughFaultsAndRestart(t *testing.T) {
	rc := newReceiver(t)
	path := filepath.Join(t.TempDir(), "webhooks.db")
	ep := Endpoint{Name: "ci", URL: rc.srv.URL, Repositories: []string{"internal/team/*"}, Headers: map[string]string{"Authorization": "Bearer s3cret"}}
	reg := prometheus.NewRegistry()
	d, stop := start(t, path, ep, reg)
	for i := range 20 {
		d.Record(audit.Event{Action: audit.Push, Repository: "internal", Image: "team/app", Tag: fmt.Sprintf("v%d", i), Digest: "sha256:aa", User: "alice"})
	}
	d.Record(audit.Event{Action: audit.Push, Repository: "internal", Image: "other/app"})       // not under the filter
	d.Record(audit.Event{Action: audit.LoginFailed, Repository: "internal", Image: "team/app"}) // not an action it sends
	eventually(t, "a failed delivery", func() bool { return testutil.ToFloat64(d.m.failed.WithLabelValues("ci")) >= 2 })
	rc.mode.Store(1)
	eventually(t, "failing deliveries", func() bool { return testutil.ToFloat64(d.m.failed.WithLabelValues("ci")) >= 4 })
	if q := testutil.ToFloat64(d.m.queued.WithLabelValues("ci")); q != 20 {
		t.Fatalf("queued %v, want 20", q)
	}
	stop() // berth restarts: the queue is on disk

	reg2 := prometheus.NewRegistry()
	d2, stop2 := start(t, path, ep, reg2)
	defer stop2()
	if q := testutil.ToFloat64(d2.m.queued.WithLabelValues("ci")); q != 20 {
		t.Fatalf("after the restart %v queued, want 20", q)
	}
	rc.mode.Store(2)
	eventually(t, "every event delivered", func() bool { return rc.distinct() == 20 })
	eventually(t, "the queue empty", func() bool { return testutil.ToFloat64(d2.m.queued.WithLabelValues("ci")) == 0 })
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for i, ev := range rc.events[:20] {
		if ev.Target.Tag != fmt.Sprintf("v%d", i) || ev.Target.Repository != "internal/team/app" || ev.Action != "push" || ev.Actor.Name != "alice" || ev.Source.Addr != "berth:5000" || ev.ID == "" {
			t.Errorf("event %d: %+v", i, ev)
		}
	}
	if rc.header.Get("Authorization") != "Bearer s3cret" {
		t.Errorf("headers not sent: %v", rc.header)
	}
	dups := len(rc.events) - len(rc.got)
	t.Logf("delivered %d events, %d duplicates (same id), lost 0", len(rc.got), dups)
}

// A full queue drops its oldest events and counts them.
func TestQueueBound(t *testing.T) {
	rc := newReceiver(t) // down
	path := filepath.Join(t.TempDir(), "webhooks.db")
	d, stop := start(t, path, Endpoint{Name: "x", URL: rc.srv.URL, MaxQueued: 5}, prometheus.NewRegistry())
	defer stop()
	for i := range 8 {
		d.Record(audit.Event{Action: audit.Delete, Repository: "internal", Image: "a", Tag: fmt.Sprint(i)})
	}
	if q, dr := testutil.ToFloat64(d.m.queued.WithLabelValues("x")), testutil.ToFloat64(d.m.dropped.WithLabelValues("x")); q != 5 || dr != 3 {
		t.Fatalf("queued %v dropped %v, want 5 and 3", q, dr)
	}
	rc.mode.Store(2)
	eventually(t, "the newest 5 delivered", func() bool { return rc.distinct() == 5 })
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.events[0].Target.Tag != "3" || rc.events[4].Target.Tag != "7" {
		t.Errorf("delivered %v .. %v, want tags 3 .. 7", rc.events[0].Target, rc.events[4].Target)
	}
}
