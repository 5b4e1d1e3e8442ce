package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	bolt "go.etcd.io/bbolt"
)

// event is one event of distribution's notification envelope.
type event struct {
	ID        string    `json:"id"`
	Timestamp time.Time `json:"timestamp"`
	Action    string    `json:"action"`
	Target    target    `json:"target"`
	Request   request   `json:"request"`
	Actor     actor     `json:"actor"`
	Source    source    `json:"source"`
	// Outcome and Detail are berth's: what distribution's format has no
	// field for (a refused push, the rule that removed a tag).
	Outcome string `json:"outcome,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

type target struct {
	MediaType  string `json:"mediaType,omitempty"`
	Digest     string `json:"digest,omitempty"`
	Size       int64  `json:"size,omitempty"`
	Repository string `json:"repository,omitempty"`
	Tag        string `json:"tag,omitempty"`
}

type request struct {
	Addr string `json:"addr,omitempty"`
}

type actor struct {
	Name string `json:"name,omitempty"`
}

type source struct {
	Addr string `json:"addr,omitempty"`
}

// envelopeEvent is ev as distribution's notifications have it: the
// repository is the name clients pull by path (REPOSITORY/IMAGE).
func envelopeEvent(ev audit.Event, src string) event {
	repo := ev.Repository
	if ev.Image != "" {
		repo += "/" + ev.Image
	}
	return event{ID: ev.ID, Timestamp: ev.Time, Action: ev.Action,
		Target:  target{MediaType: ev.MediaType, Digest: ev.Digest, Size: ev.Size, Repository: repo, Tag: ev.Tag},
		Request: request{Addr: ev.Client}, Actor: actor{Name: ev.User}, Source: source{Addr: src},
		Outcome: ev.Outcome, Detail: ev.Detail}
}

// maxBatch is how many events one delivery carries.
const maxBatch = 50

// Run delivers until ctx ends, one goroutine per endpoint.
func (d *Dispatcher) Run(ctx context.Context) {
	for _, ep := range d.eps {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			for ctx.Err() == nil {
				d.safeLoop(ctx, ep)
			}
		}()
	}
	d.wg.Wait()
}

// safeLoop runs the delivery loop; a panic is logged and the loop starts
// again after a pause, never the end of the process.
func (d *Dispatcher) safeLoop(ctx context.Context, ep *endpoint) {
	defer func() {
		if p := recover(); p != nil {
			d.log.Error("webhook: delivery loop panicked; restarting it", "endpoint", ep.Name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			select {
			case <-ctx.Done():
			case <-time.After(d.opts.Backoff):
			}
		}
	}()
	d.loop(ctx, ep)
}

// loop sends ep's queue, oldest first, in batches; waits when it is
// empty; backs off when the endpoint fails.
func (d *Dispatcher) loop(ctx context.Context, ep *endpoint) {
	wait := d.opts.Backoff
	for ctx.Err() == nil {
		keys, events, err := d.peek(ep)
		if err != nil {
			d.log.Error("webhook: reading the queue", "endpoint", ep.Name, "err", err)
		}
		if len(keys) == 0 {
			select {
			case <-ctx.Done():
			case <-ep.wake:
			case <-time.After(time.Minute):
			}
			continue
		}
		if err := d.post(ctx, ep, events); err != nil {
			d.m.failed.WithLabelValues(ep.Name).Inc()
			d.log.Warn("webhook: delivery failed; retrying", "endpoint", ep.Name, "events", len(keys), "retry_in", wait, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			wait = min(2*wait, d.opts.MaxBackoff)
			continue
		}
		wait = d.opts.Backoff
		d.ack(ep, keys)
	}
}

// peek reads up to maxBatch of ep's oldest events.
func (d *Dispatcher) peek(ep *endpoint) (keys [][]byte, events []json.RawMessage, err error) {
	err = d.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(ep.bucket).Cursor()
		for k, v := c.First(); k != nil && len(keys) < maxBatch; k, v = c.Next() {
			keys = append(keys, bytes.Clone(k))
			events = append(events, bytes.Clone(v))
		}
		return nil
	})
	return keys, events, err
}

// ack removes delivered events (a full queue may have dropped some of
// them already).
func (d *Dispatcher) ack(ep *endpoint, keys [][]byte) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	removed := 0
	err := d.db.Update(func(tx *bolt.Tx) error {
		removed = 0
		b := tx.Bucket(ep.bucket)
		for _, k := range keys {
			if b.Get(k) != nil {
				if err := b.Delete(k); err != nil {
					return err
				}
				removed++
			}
		}
		return nil
	})
	if err != nil {
		d.log.Error("webhook: removing delivered events; they will be sent again", "endpoint", ep.Name, "err", err)
		return
	}
	ep.queued -= removed
	d.m.queued.WithLabelValues(ep.Name).Set(float64(ep.queued))
	d.m.sent.WithLabelValues(ep.Name).Add(float64(len(keys)))
}

// post sends one envelope; a 2xx answer is success.
func (d *Dispatcher) post(ctx context.Context, ep *endpoint, events []json.RawMessage) error {
	body, _ := json.Marshal(map[string]any{"events": events})
	ctx, cancel := context.WithTimeout(ctx, ep.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	for k, v := range ep.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", MediaType)
	resp, err := d.opts.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the receiver answered %s", resp.Status)
	}
	return nil
}

// Close stops using the queue file (after Run returned).
func (d *Dispatcher) Close() error {
	var err error
	d.close.Do(func() { err = d.db.Close() })
	return err
}
