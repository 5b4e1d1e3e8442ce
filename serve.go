package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berth-registry/berth/server"
	"github.com/berth-registry/berth/store"
)

// Main is a running berth: store, upstream clients, server and listeners.
type Main struct {
	cfg    *Config
	log    *slog.Logger
	store  *store.Store
	srv    *server.Server
	repl   *server.Replication // the [[replicate]] rules (replicate_config.go)
	events *events             // the audit log and webhooks (hosted_config.go)

	cert atomic.Pointer[tls.Certificate]

	// For SIGHUP: the config file to read again (none: the flags'
	// config) and the log level to set.
	cfgPath string
	level   *slog.LevelVar

	mu        sync.Mutex
	listeners []net.Listener // public
	adminLn   net.Listener
	servers   []*http.Server
	ready     chan struct{}
}

// NewMain opens the store and builds the server. It does not listen yet.
func NewMain(cfg *Config, log *slog.Logger) (*Main, error) {
	st, err := store.Open(cfg.DataDir, store.Options{Logger: log, MaxSize: int64(cfg.Storage.MaxSize),
		HighWater: cfg.Storage.HighWater, LowWater: cfg.Storage.LowWater, OpenTimeout: 2 * time.Second})
	if errors.Is(err, store.ErrLocked) {
		return nil, lockedError(cfg.DataDir, "stop it, or give this one another --data-dir")
	}
	if err != nil {
		return nil, err
	}
	// Who holds the data dir, for the commands that find it locked.
	if err := os.WriteFile(filepath.Join(cfg.DataDir, pidFile), []byte(fmt.Sprintln(os.Getpid())), 0o644); err != nil {
		log.Warn("cannot write the pid file", "err", err)
	}
	opts, err := serverOptions(cfg, st, log)
	var ev *events
	if err == nil {
		ev, err = openEvents(cfg, log, opts.Registry)
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	opts.Audit = ev
	srv, err := server.New(opts)
	if err != nil {
		st.Close()
		return nil, err
	}
	return &Main{cfg: cfg, log: log, store: st, srv: srv, repl: opts.Replication, events: ev, ready: make(chan struct{})}, nil
}

// Run listens on every configured address and serves until ctx ends, then
// drains in-flight requests (up to 30s) and returns.
func (m *Main) Run(ctx context.Context) error {
	binds := []ListenerConfig{{Listen: m.cfg.Listen, Repository: m.cfg.DefaultRepository}}
	binds = append(binds, m.cfg.Listeners...)
	var tlsCfg *tls.Config
	if m.cfg.TLSCert != "" {
		if err := m.loadCert(); err != nil {
			return err
		}
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return m.cert.Load(), nil
		}}
	}
	// SIGHUP reloads what can change without a restart; it never ends
	// the process (its default action would, with no drain).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	m.srv.Go("SIGHUP handler", func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				m.reload()
			}
		}
	})
	errc := make(chan error, len(binds)+1)
	m.mu.Lock()
	err := m.listen(binds, tlsCfg, errc)
	if err == nil {
		err = m.listenAdmin(errc)
	}
	m.mu.Unlock()
	if err != nil {
		m.shutdown()
		return err
	}
	close(m.ready)
	m.srv.Go("housekeeping", func() { m.housekeeping(ctx) })
	for _, p := range m.cfg.Prefetch {
		m.srv.Go("scheduled prefetch", func() { m.prefetchLoop(ctx, p) })
	}
	m.srv.Go("webhook delivery", func() { m.events.run(ctx) })
	for repo, every := range server.RetentionRepositories(m.srv) {
		if every > 0 {
			m.srv.Go("scheduled retention", func() { m.retentionLoop(ctx, repo, every) })
		}
	}
	if m.repl != nil {
		for _, r := range m.repl.Rules {
			m.srv.Go("scheduled replication", func() { m.replicateLoop(ctx, r) })
		}
	}
	select {
	case <-ctx.Done():
		m.log.Info("shutting down: draining requests")
		return m.shutdown()
	case err := <-errc:
		m.shutdown()
		return err
	}
}

// listen serves each bind (the main listener first) on its address; a
// server's end goes to errc. Called with m.mu held.
func (m *Main) listen(binds []ListenerConfig, tlsCfg *tls.Config, errc chan<- error) error {
	for i, b := range binds {
		ln, err := net.Listen("tcp", b.Listen)
		if err != nil {
			return err
		}
		ln = m.srv.LimitListener(ln, m.cfg.Limits.connLimits(), tlsCfg == nil)
		// The main listener routes by ?ns= and path to any repository; a
		// [[listener]] reaches only its own repository (and members).
		handler := m.srv.Handler(b.Repository)
		if i > 0 {
			handler = m.srv.BoundHandler(b.Repository)
		}
		hs := &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: 30 * time.Second, // slow clients cannot hold connections open
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			TLSConfig:         tlsCfg,
			ErrorLog:          slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
		}
		m.listeners = append(m.listeners, ln)
		m.servers = append(m.servers, hs)
		m.log.Info("listening", "addr", ln.Addr().String(), "repository", b.Repository, "tls", tlsCfg != nil)
		if tlsCfg != nil {
			go func() { errc <- hs.ServeTLS(ln, "", "") }() // HTTP/2 and HTTP/1.1
		} else {
			go func() { errc <- hs.Serve(ln) }()
		}
	}
	return nil
}

// listenAdmin serves the admin handler on admin_listen (a mode-0600 Unix
// socket in the data dir by default). Called with m.mu held.
func (m *Main) listenAdmin(errc chan<- error) error {
	network, addr := adminAddr(m.cfg)
	if network == "unix" {
		os.Remove(addr) // a socket left by a berth that was killed
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	if network == "unix" {
		if err := os.Chmod(addr, 0o600); err != nil {
			ln.Close()
			return fmt.Errorf("admin listener: %w", err)
		}
	}
	hs := &http.Server{Handler: m.srv.AdminHandler(m.cfg.DefaultRepository), ReadHeaderTimeout: 30 * time.Second,
		ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelWarn)}
	m.adminLn = ln
	m.servers = append(m.servers, hs)
	m.log.Info("admin listening", "addr", network+":"+addr)
	m.srv.Go("admin listener", func() { errc <- hs.Serve(ln) })
	return nil
}

// adminAddr is the network and address of cfg's admin listener.
func adminAddr(cfg *Config) (network, addr string) {
	switch a := cfg.AdminListen; {
	case a == "":
		return "unix", filepath.Join(cfg.DataDir, "admin.sock")
	case strings.HasPrefix(a, "unix:"):
		return "unix", strings.TrimPrefix(a, "unix:")
	default:
		return "tcp", a
	}
}

// loadCert (re)reads tls_cert and tls_key; connections keep going.
func (m *Main) loadCert() error {
	cert, err := tls.LoadX509KeyPair(m.cfg.TLSCert, m.cfg.TLSKey)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	m.cert.Store(&cert)
	return nil
}

func (m *Main) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, hs := range m.servers {
		if err := hs.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// housekeeping expires abandoned uploads and collects garbage online,
// now and then.
func (m *Main) housekeeping(ctx context.Context) {
	uploadTTL := time.Duration(m.cfg.Storage.UploadTTL)
	every := min(uploadTTL/4, time.Duration(m.cfg.Storage.GCInterval))
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		if n, err := m.store.ExpireUploads(ctx, uploadTTL); err != nil {
			m.log.Error("expire uploads", "err", err)
		} else if n > 0 {
			m.log.Info("expired abandoned uploads", "count", n)
		}
		res, err := m.store.GC(store.GCOptions{Grace: time.Duration(m.cfg.Storage.GCGrace)})
		if err != nil {
			m.log.Error("garbage collection", "err", err)
		} else if res.Blobs > 0 {
			m.log.Info("garbage collected", "blobs", res.Blobs, "bytes", res.Bytes)
		}
	}
}

// prefetchLoop pulls a [[prefetch]] list into the cache at start and then
// every p.Every.
func (m *Main) prefetchLoop(ctx context.Context, p PrefetchConfig) {
	wait := 2 * time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		for _, img := range p.Images {
			start := time.Now()
			var bytes int64
			err := m.srv.Prefetch(ctx, m.cfg.DefaultRepository, img, server.PrefetchOptions{Platforms: p.Platforms, AllPlatforms: p.AllPlatforms, AllTags: p.AllTags},
				func(ev server.PrefetchEvent) {
					if ev.Kind == "done" {
						bytes = ev.DoneBytes
					}
				})
			if err != nil {
				m.log.Error("prefetch", "image", img, "err", err)
			} else {
				m.log.Info("prefetched", "image", img, "bytes", bytes, "duration", time.Since(start).Round(time.Millisecond))
			}
		}
		if p.Every == 0 {
			return
		}
		wait = time.Duration(p.Every)
	}
}

// replicateLoop runs a [[replicate]] rule at start and then every
// r.Every (zero: at start only), and when its source notifies it. A run
// still going when the next is due delays it; a run asked for on the
// admin listener meanwhile is refused as already running.
func (m *Main) replicateLoop(ctx context.Context, r server.ReplicationRule) {
	wait := 2 * time.Second
	for {
		var due <-chan time.Time
		if wait > 0 {
			due = time.After(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-due:
		case <-r.Wake: // the source said something changed
		}
		dst, err := server.ReplicaTarget(m.srv, r.Rule.To)
		if err != nil {
			m.log.Error("replication", "rule", r.Rule.Name, "err", err)
			return
		}
		rep, err := m.repl.Runner.Run(ctx, r.Rule, r.Source, dst, nil)
		level := slog.LevelInfo
		if err != nil || rep.Errors > 0 {
			level = slog.LevelWarn
		}
		if rep.Tags > 0 || rep.Deleted > 0 || err != nil || rep.Errors > 0 {
			m.log.Log(ctx, level, "replicated", "rule", r.Rule.Name, "tags", rep.Tags, "unchanged", rep.Unchanged, "blobs", rep.Blobs,
				"bytes", rep.Bytes, "linked", rep.Linked, "deleted", rep.Deleted, "errors", rep.Errors, "first_errors", rep.FirstErrors, "took", rep.Took, "err", err)
		}
		if r.Every == 0 && r.NotifyToken == "" {
			return
		}
		wait = r.Every // 0: until the next notification
	}
}

// retentionLoop applies a hosted repository's retention every interval
// (the first a minute after start).
func (m *Main) retentionLoop(ctx context.Context, repo string, every time.Duration) {
	wait := time.Minute
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = every
		rep, err := server.RunRetention(ctx, m.srv, repo, false)
		if err != nil {
			m.log.Error("retention", "repository", repo, "err", err)
			continue
		}
		if len(rep.Tags)+len(rep.Manifests) > 0 {
			m.log.Info("retention", "repository", repo, "tags", len(rep.Tags), "manifests", len(rep.Manifests), "bytes", rep.Bytes, "kept", rep.Kept, "took", rep.Took)
		}
	}
}

// Addrs waits until Run listens and returns the listener addresses, the
// main one first.
func (m *Main) Addrs() []string {
	<-m.ready
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, ln := range m.listeners {
		out = append(out, ln.Addr().String())
	}
	return out
}

// AdminAddr is the admin listener's address (a socket path or host:port).
func (m *Main) AdminAddr() string {
	<-m.ready
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.adminLn.Addr().String()
}

// Close releases the store. Call it after Run returns.
func (m *Main) Close() error {
	os.Remove(filepath.Join(m.store.Dir(), pidFile))
	if m.srv != nil {
		m.srv.Close() // manifest commits under way
	}
	m.events.close()
	return m.store.Close()
}

// pidFile, in the data dir, holds the PID of the berth serving it.
const pidFile = "berth.pid"
