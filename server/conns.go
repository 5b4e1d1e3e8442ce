package server

import (
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// A listener's connections are bounded in all (below the process's
// file descriptor limit, so that blob files, upstream connections and
// the index always have descriptors left for serving cache hits) and per
// client address; a connection past a bound is answered 429 at once and
// closed, and the clients inside the bounds are served as before.
// Addresses in auth.trusted_proxies (a balancer in front) count only
// toward the total.
//
// Request bodies must keep coming: a body's read deadline starts at
// bodyGrace and stretches by one second for each minBodyRate bytes that
// arrive, never to more than bodyGrace past the last read, so a client
// that trickles a body (or stops sending one) loses its connection
// instead of holding it.

// ConnLimits bound the connections of a listener; zero fields take the
// defaults.
type ConnLimits struct {
	Max       int // in all; DefaultMaxConnections
	PerClient int // from one address; 512
}

// Defaults of ConnLimits.
const (
	DefaultMaxConnections      = 8192
	DefaultMaxConnsPerClient   = 512
	bodyGrace                  = 30 * time.Second
	minBodyRate                = 16 << 10 // bytes a second
	connRefusalWriteDeadline   = time.Second
	refusalLinger              = 200 * time.Millisecond
	maxLingering               = 64
	tooManyConnectionsResponse = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 42\r\nConnection: close\r\n\r\ntoo many connections from you or in all\r\n\r\n"
)

// LimitListener returns ln with the connection bounds of l. Refused
// connections get a plain-HTTP 429 (plainHTTP), or are only closed
// (TLS listeners: the bytes would not be TLS).
func (s *Server) LimitListener(ln net.Listener, l ConnLimits, plainHTTP bool) net.Listener {
	if l.Max <= 0 {
		l.Max = DefaultMaxConnections
	}
	if l.PerClient <= 0 {
		l.PerClient = DefaultMaxConnsPerClient
	}
	return &limitListener{Listener: ln, s: s, limits: l, plain: plainHTTP, per: map[string]int{}, lingering: make(chan struct{}, maxLingering)}
}

type limitListener struct {
	net.Listener
	s      *Server
	limits ConnLimits
	plain  bool

	mu        sync.Mutex
	total     int
	per       map[string]int
	lingering chan struct{} // refused connections being drained
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := remoteIP(c.RemoteAddr())
		trusted := l.s.trustedAddr(addr)
		l.mu.Lock()
		ok := l.total < l.limits.Max && (trusted || l.per[addr] < l.limits.PerClient)
		if ok {
			l.total++
			if !trusted {
				l.per[addr]++
			}
		}
		l.mu.Unlock()
		if ok {
			return &limitedConn{Conn: c, l: l, addr: addr, counted: !trusted}, nil
		}
		l.s.m.refused.WithLabelValues("connections").Inc()
		l.refuse(c)
	}
}

// refuse answers a connection past a bound and closes it; it never
// blocks Accept for long. Closing with the client's request unread would
// reset the connection, and the client could lose the 429 before reading
// it: so the write side is shut first and what the client sends is read
// and dropped for a moment, by at most maxLingering goroutines at once
// (past that, the connection is closed at once).
func (l *limitListener) refuse(c net.Conn) {
	if !l.plain {
		c.Close()
		return
	}
	c.SetWriteDeadline(time.Now().Add(connRefusalWriteDeadline))
	io.WriteString(c, tooManyConnectionsResponse)
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		c.Close()
		return
	}
	select {
	case l.lingering <- struct{}{}:
	default:
		c.Close()
		return
	}
	cw.CloseWrite()
	l.s.goSafe("refused connection", func() {
		defer func() { <-l.lingering }()
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(refusalLinger))
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	})
}

func (l *limitListener) release(addr string, counted bool) {
	l.mu.Lock()
	l.total--
	if counted {
		if l.per[addr]--; l.per[addr] <= 0 {
			delete(l.per, addr)
		}
	}
	l.mu.Unlock()
}

type limitedConn struct {
	net.Conn
	l       *limitListener
	addr    string
	counted bool
	once    sync.Once
}

// ReadFrom passes a response's body to the TCP connection's own
// ReadFrom, which sends a file with sendfile(2). Without it the embedded
// net.Conn hides that method and net/http copies every blob through a
// user-space buffer.
func (c *limitedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{c.Conn}, r)
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.addr, c.counted) })
	return err
}

func remoteIP(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// trustedAddr reports whether addr is one of auth.trusted_proxies.
func (s *Server) trustedAddr(addr string) bool {
	ip := net.ParseIP(addr)
	if ip == nil {
		return false
	}
	for _, n := range s.auth.opts.TrustedProxies {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// withBodyDeadline gives a request body the stretching read deadline
// described above, and clears it once the body has been read to its end
// (the work after it, an fsync or a commit, is not cut).
func (s *Server) withBodyDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		start := time.Now()
		if rc.SetReadDeadline(start.Add(s.bodyGrace)) != nil {
			next.ServeHTTP(w, r) // the connection cannot (a test recorder)
			return
		}
		// An unread rest of the body keeps the deadline it has: the server
		// may read it after the handler (to reuse the connection) only
		// while it keeps coming; the next request sets its own.
		r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc, start: start, grace: s.bodyGrace}
		next.ServeHTTP(w, r)
	})
}

type deadlineBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	start time.Time
	grace time.Duration
	n     int64
	done  bool // read to its end: the deadline is off
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	switch {
	case err == io.EOF && !b.done:
		// The body is over: the handler's work after it (an fsync, a
		// commit) must not be cut by a deadline.
		b.done = true
		b.rc.SetReadDeadline(time.Time{})
	case n > 0 && err == nil:
		// The average rate must hold (bytes sent fast early do not buy
		// an hour of silence later): never more than grace from now.
		d := b.start.Add(b.grace + time.Duration(b.n/minBodyRate)*time.Second)
		if late := time.Now().Add(b.grace); d.After(late) {
			d = late
		}
		b.rc.SetReadDeadline(d)
	}
	return n, err
}
