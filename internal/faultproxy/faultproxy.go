// Package faultproxy is a reverse proxy that breaks a registry on demand:
// it stands between berth and a real upstream (distribution's registry)
// in the end-to-end tests and the benchmark, and injects one fault at a
// time into the requests it matches. It never dials anything but the
// address it was given.
package faultproxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fault is what the proxy does to a matching request.
type Fault string

// The faults.
const (
	None         Fault = ""             // relay as is
	Reset        Fault = "reset"        // send half the body, then reset the connection
	Corrupt      Fault = "corrupt"      // flip one byte of the body
	Drip         Fault = "drip"         // send the body in small pieces, slowly
	Hang         Fault = "hang"         // answer nothing until the fault is cleared or the client leaves
	Unavailable  Fault = "503"          // 503 Service Unavailable
	RateLimited  Fault = "429"          // 429 with Retry-After and ratelimit-* headers
	IgnoreRange  Fault = "ignore-range" // drop the Range header: 200 with the whole body
	HeadNotFound Fault = "head-404"     // 404 to every HEAD
	LyingLength  Fault = "lying-length" // a Content-Length 100 bytes longer than the body
	ResetOnce    Fault = "reset-once"   // Reset for the first matching GET only, then relay as is
)

// All lists every fault but None, in a stable order.
var All = []Fault{Reset, Corrupt, Drip, Hang, Unavailable, RateLimited, IgnoreRange, HeadNotFound, LyingLength}

// Target picks which requests a fault applies to.
type Target string

const (
	Blobs     Target = "blobs"     // /v2/.../blobs/<digest>
	Manifests Target = "manifests" // /v2/.../manifests/<ref>
	Any       Target = "any"       // every request but /v2/ itself
)

// Proxy relays to one upstream address over plain HTTP.
type Proxy struct {
	upstream string
	ln       net.Listener
	srv      *http.Server
	rt       http.RoundTripper

	mu      sync.Mutex
	fault   Fault
	target  Target
	cleared chan struct{} // closed when the fault changes (ends hangs)
	counts  map[string]int
	onceHit bool    // ResetOnce has reset its request
	rate    float64 // bytes a second of each response body; 0: no cap
}

// Start listens on 127.0.0.1 (a free port) and relays to upstream
// ("host:port").
func Start(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{upstream: upstream, ln: ln, cleared: make(chan struct{}), counts: map[string]int{},
		rt: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64}}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go p.srv.Serve(ln)
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops the proxy and ends every hang.
func (p *Proxy) Close() error {
	p.Set(None, Any)
	return p.srv.Close()
}

// Set switches to fault f on target t (None clears).
func (p *Proxy) Set(f Fault, t Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault, p.target, p.onceHit = f, t, false
	close(p.cleared)
	p.cleared = make(chan struct{})
}

// SetStreamRate caps each response body at bps bytes a second (0: no
// cap), faults or not: a path on which one stream gets only part of the
// link, so that parallel ranges pay.
func (p *Proxy) SetStreamRate(bps float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate = bps
}

// pacedWriter holds each write back until its last byte is due at its
// rate.
type pacedWriter struct {
	w     io.Writer
	ctx   context.Context
	rate  float64
	start time.Time
	n     int64
}

func (pw *pacedWriter) Write(b []byte) (int, error) {
	due := pw.start.Add(time.Duration(float64(pw.n+int64(len(b))) / pw.rate * float64(time.Second)))
	if wait := time.Until(due); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-pw.ctx.Done():
			return 0, pw.ctx.Err()
		}
	}
	n, err := pw.w.Write(b)
	pw.n += int64(n)
	return n, err
}

// Count is how many requests of "METHOD kind" (kind: blob, manifest,
// ping, other) the proxy has seen.
func (p *Proxy) Count(methodKind string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[methodKind]
}

func kind(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "ping"
	case strings.Contains(path, "/blobs/uploads"):
		return "other"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	}
	return "other"
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k := kind(r.URL.Path)
	p.mu.Lock()
	p.counts[r.Method+" "+k]++
	f, t, cleared := p.fault, p.target, p.cleared
	p.mu.Unlock()
	if k == "ping" || !(t == Any || (t == Blobs && k == "blob") || (t == Manifests && k == "manifest")) {
		f = None
	}
	if f == ResetOnce {
		p.mu.Lock()
		f = None
		if !p.onceHit && r.Method == http.MethodGet {
			p.onceHit, f = true, Reset
		}
		p.mu.Unlock()
	}
	switch f {
	case Hang:
		select {
		case <-cleared:
		case <-r.Context().Done():
			return
		}
		f = None
	case Unavailable:
		http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"fault: service unavailable"}]}`, http.StatusServiceUnavailable)
		return
	case RateLimited:
		h := w.Header()
		h.Set("Retry-After", "2")
		h.Set("ratelimit-limit", "100;w=21600")
		h.Set("ratelimit-remaining", "0;w=21600")
		h.Set("docker-ratelimit-source", "127.0.0.1")
		h.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"fault: pull rate limit"}]}`)
		return
	case HeadNotFound:
		if r.Method == http.MethodHead {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		f = None
	case IgnoreRange:
		r.Header.Del("Range")
	}
	p.relay(w, r, f)
}

func (p *Proxy) relay(w http.ResponseWriter, r *http.Request, f Fault) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, "http://"+p.upstream+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	req.ContentLength = r.ContentLength
	resp, err := p.rt.RoundTrip(req)
	if err != nil {
		http.Error(w, "fault proxy: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	// Faults on the body apply to bodies worth breaking.
	if r.Method != http.MethodGet || resp.StatusCode/100 != 2 || resp.ContentLength < 2 {
		f = None
	}
	var out io.Writer = w
	p.mu.Lock()
	if p.rate > 0 {
		out = &pacedWriter{w: w, ctx: r.Context(), rate: p.rate, start: time.Now()}
	}
	p.mu.Unlock()
	buf := make([]byte, 32<<10)
	switch f {
	case Reset:
		w.WriteHeader(resp.StatusCode)
		io.CopyBuffer(out, io.LimitReader(resp.Body, resp.ContentLength/2), buf)
		resetConn(w)
	case Corrupt:
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			resetConn(w)
			return
		}
		body[len(body)/2] ^= 0xff
		w.WriteHeader(resp.StatusCode)
		w.Write(body)
	case Drip:
		w.WriteHeader(resp.StatusCode)
		rc := http.NewResponseController(w)
		buf := make([]byte, max(1, resp.ContentLength/20))
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				rc.Flush()
				select {
				case <-time.After(20 * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
			if err != nil {
				return
			}
		}
	case LyingLength:
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength+100, 10))
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
		// Returning with fewer bytes than announced: net/http closes the
		// connection, the client sees an unexpected EOF.
	default:
		w.WriteHeader(resp.StatusCode)
		io.CopyBuffer(out, resp.Body, buf)
	}
}

// resetConn ends the response's connection with a TCP reset.
func resetConn(w http.ResponseWriter) {
	http.NewResponseController(w).Flush()
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// String names the fault for tables.
func (f Fault) String() string {
	if f == None {
		return "none"
	}
	return string(f)
}

var _ http.Handler = (*Proxy)(nil)
