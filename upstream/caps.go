package upstream

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Caps are the limits toward one upstream, shared by the Clients of its
// URLs: concurrent registry requests (each held until its body is closed)
// and bytes per second read, all bodies together. They slow what berth
// asks of the upstream, never what it serves from disk: a cache hit never
// passes through a Client.
type Caps struct {
	slots chan struct{} // nil: no cap
	bw    *rate.Limiter // nil: no cap
}

// NewCaps returns caps of maxConnections concurrent requests and
// maxBandwidth bytes per second; zero means no cap of that kind.
func NewCaps(maxConnections int, maxBandwidth int64) *Caps {
	c := &Caps{}
	if maxConnections > 0 {
		c.slots = make(chan struct{}, maxConnections)
	}
	if maxBandwidth > 0 {
		c.bw = newBandwidthLimiter(maxBandwidth)
	}
	return c
}

// acquire takes a connection slot, waiting while all are taken, as long
// as ctx allows. release gives it back (once).
func (c *Client) acquire(ctx context.Context) (release func(), err error) {
	slots := c.caps.slots
	if slots == nil {
		return func() {}, nil
	}
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() { once.Do(func() { <-slots }) }, nil
}

// heldBody keeps a connection slot until the body is closed: an upstream
// request is in flight until its body has been read.
type heldBody struct {
	io.ReadCloser
	release func()
}

func (b *heldBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}

// throttledBody paces reads to the upstream's shared bandwidth limiter.
type throttledBody struct {
	io.ReadCloser
	ctx context.Context
	lim *rate.Limiter
}

func (b *throttledBody) Read(p []byte) (int, error) {
	if burst := b.lim.Burst(); len(p) > burst {
		p = p[:burst]
	}
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		if werr := b.lim.WaitN(b.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// newBandwidthLimiter returns a limiter of bytesPerSec shared by all the
// bodies of one upstream, with a burst small enough to hold the rate
// within a few percent over seconds.
func newBandwidthLimiter(bytesPerSec int64) *rate.Limiter {
	burst := int(min(max(bytesPerSec/20, 32<<10), 1<<20))
	return rate.NewLimiter(rate.Limit(bytesPerSec), burst)
}

// idleBody fails a body that sends no byte for idle: its request's
// context is cancelled, and Read says why.
type idleBody struct {
	io.ReadCloser
	idle   time.Duration
	timer  *time.Timer
	cancel context.CancelFunc
	fired  atomic.Bool
}

func newIdleBody(body io.ReadCloser, idle time.Duration, cancel context.CancelFunc) *idleBody {
	b := &idleBody{ReadCloser: body, idle: idle, cancel: cancel}
	b.timer = time.AfterFunc(idle, func() { b.fired.Store(true); cancel() })
	return b
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.fired.Load() {
		return n, &transportError{fmt.Errorf("no byte from the upstream for %s (upstream_idle_timeout)", b.idle)}
	}
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
