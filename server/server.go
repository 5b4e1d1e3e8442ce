package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/berth-registry/berth/internal/lru"
	"github.com/berth-registry/berth/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/singleflight"
)

// Repository kinds.
const (
	KindProxy  = "proxy"
	KindHosted = "hosted"
	KindGroup  = "group"
)

// Upstream is what a proxy repository needs of its remote registry
// (upstream.Client). Successful calls return a 2xx response whose body the
// caller closes; failures are upstream errors.
type Upstream interface {
	Manifest(ctx context.Context, method, image, ref string) (*http.Response, error)
	Blob(ctx context.Context, method, image, dgst string) (*http.Response, error)
	// BlobFrom GETs a blob from byte offset on (a Range request when
	// offset > 0).
	BlobFrom(ctx context.Context, image, dgst string, offset int64) (*http.Response, error)
	Tags(ctx context.Context, image string, query url.Values) (*http.Response, error)
	Ping(ctx context.Context) error
}

// Repository is one configured repository.
type Repository struct {
	Name string
	Kind string // KindProxy, KindHosted or KindGroup

	// Proxy settings.
	Upstream     Upstream
	UpstreamHost string   // host[:port] of the upstream, for ?ns= and path routing
	NSAliases    []string // more hosts this proxy answers ?ns= for
	DockerHub    bool     // one-segment names get "library/"
	TagTTL       time.Duration
	NotFoundTTL  time.Duration
	ServeStale   bool

	AnonymousPull bool
	// AnonymousPush lets anyone push to a hosted repository (labs, CI
	// scratch registries); off by default.
	AnonymousPush bool

	// Group settings: members in the order pulls try them, and the hosted
	// member that receives pushes ("" refuses pushes).
	Members []string
	PushTo  string
}

// Options configure a Server.
type Options struct {
	Repositories []Repository
	// DefaultRepository answers requests no other rule routes.
	DefaultRepository string
	Store             Store
	Logger            *slog.Logger
	// Registry receives berth's metrics and is served on /metrics.
	Registry *prometheus.Registry
	// FetchTimeout bounds one upstream blob download. Zero means 1h.
	FetchTimeout time.Duration
	// GCGrace is the grace period of a collection asked for on /admin/gc.
	GCGrace time.Duration
	// Auth configures users, tokens and the realm.
	Auth AuthOptions
	// MaxSize is the store's cap, shown on the status page (0: none).
	MaxSize int64
}

// Server answers the registry API for a set of repositories.
type Server struct {
	opts        Options
	repos       map[string]*repo
	order       []*repo
	blobs       blobStore
	manifests   manifestStore
	pushes      uploadStore
	index       ListStore // reads for the status page and berth ls
	ops         opsStore
	log         *slog.Logger
	m           *metrics
	fetches     *fetchGroup
	flight      singleflight.Group
	auth        *auth
	uploadLimit *uploadLimiter

	diskFullAt   atomic.Int64                 // unix nanos of the last request refused for a full disk
	loggedCauses *lru.Cache[string, struct{}] // upstream failures logged in the last minute
}

type repo struct {
	Repository
	health  *upstreamHealth                // proxy: what real requests said of the upstream
	neg     *lru.Cache[string, struct{}]   // upstream 404s, for not_found_ttl
	pending *lru.Cache[string, pendingTag] // "<path>@<digest>" → tags an upstream HEAD named
	leaves  []*repo                        // group: proxy and hosted members, nested groups flattened, in order
	served  *lru.Cache[string, *repo]      // group: which member served an image's manifest
}

// maxManifestSize is the largest manifest berth accepts or caches.
const maxManifestSize = 4 << 20

// New checks opts and returns a Server.
func New(opts Options) (*Server, error) {
	if opts.Store == nil {
		return nil, errors.New("server: no store")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = time.Hour
	}
	s := &Server{opts: opts, repos: map[string]*repo{}, log: opts.Logger,
		loggedCauses: lru.New[string, struct{}](1000, time.Minute)}
	s.blobs, s.manifests, s.pushes, s.index, s.ops = opts.Store, opts.Store, opts.Store, opts.Store, opts.Store
	for _, r := range opts.Repositories {
		if _, dup := s.repos[r.Name]; dup {
			return nil, fmt.Errorf("server: duplicate repository %q", r.Name)
		}
		if r.Kind == KindProxy && r.Upstream == nil {
			return nil, fmt.Errorf("server: proxy repository %q has no upstream", r.Name)
		}
		rp := &repo{Repository: r, health: &upstreamHealth{}, neg: lru.New[string, struct{}](100_000, 0), pending: lru.New[string, pendingTag](10_000, pendingTagTTL)}
		if r.Kind == KindProxy {
			rp.Upstream = observedUpstream{Upstream: r.Upstream, h: rp.health}
		}
		s.repos[r.Name] = rp
		s.order = append(s.order, rp)
	}
	for _, rp := range s.order {
		if rp.Kind != KindGroup {
			continue
		}
		leaves, err := s.flatten(rp, nil)
		if err != nil {
			return nil, err
		}
		rp.leaves, rp.served = leaves, lru.New[string, *repo](100_000, 0)
		if rp.PushTo != "" {
			if p := s.repos[rp.PushTo]; p == nil || p.Kind != KindHosted || !slices.Contains(rp.Members, rp.PushTo) {
				return nil, fmt.Errorf("server: group %q: push_to %q must be one of its hosted members", rp.Name, rp.PushTo)
			}
		}
	}
	if _, ok := s.repos[opts.DefaultRepository]; !ok && opts.DefaultRepository != "" {
		return nil, fmt.Errorf("server: default repository %q is not configured", opts.DefaultRepository)
	}
	a, err := newAuth(opts.Auth)
	if err != nil {
		return nil, err
	}
	s.auth = a
	s.uploadLimit = &uploadLimiter{n: map[string]int{}, max: a.opts.MaxUploadsPerClient}
	s.m = newMetrics(opts.Registry, opts.Store)
	for _, rp := range s.order {
		s.m.initRepository(rp.Name, rp.Kind == KindProxy)
	}
	s.fetches = newFetchGroup(opts.FetchTimeout, func(ctx context.Context, alg string) (tempBlob, error) {
		return s.blobs.NewBlobWriter(ctx, alg)
	}, s.m.inflight.Inc, s.m.inflight.Dec)
	s.fetches.spawn = s.goSafe
	return s, nil
}

// Handler returns the HTTP handler of a listener whose requests, when no
// other rule routes them, go to repository listenerRepo.
func (s *Server) Handler(listenerRepo string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v2/", s.v2Handler(listenerRepo))
	mux.Handle("/v2", s.v2Handler(listenerRepo))
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.opts.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("/token", s.serveToken(listenerRepo))
	s.uiHandlers(mux, listenerRepo)
	return s.recoverPanics(mux)
}

// AdminHandler serves the operator endpoints (/admin/gc, /admin/prefetch,
// /admin/ls) and the registry API with full rights, for the berth
// commands. It belongs on its own listener that only the operator can
// reach (a mode-0600 Unix socket by default), never on a public one:
// behind a reverse proxy on the same box every client is "loopback".
func (s *Server) AdminHandler(listenerRepo string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /admin/gc", s.handle(formatRegistry, s.adminGC))
	mux.HandleFunc("POST /admin/prefetch", s.handle(formatRegistry, s.adminPrefetch(listenerRepo)))
	mux.HandleFunc("GET /admin/ls", s.handle(formatRegistry, s.adminList))
	mux.HandleFunc("GET /admin/backup", s.handle(formatRegistry, s.adminBackup))
	v2 := s.v2Handler(listenerRepo)
	trusted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v2.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), internalKey{}, true)))
	})
	mux.Handle("/v2/", trusted)
	mux.Handle("/v2", trusted)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	return s.recoverPanics(mux)
}

// reqInfo is what a handler learned, for the request's log line and
// metrics.
type reqInfo struct {
	listener         string // the listener's repository
	principal        principal
	repo, image, ref string
	kind             string
	route            route  // the parsed path, for error messages
	result           string // cache result
	source           string // "cache" or "upstream" for bytes served
}

type infoKey struct{}

func infoOf(ctx context.Context) *reqInfo {
	if i, ok := ctx.Value(infoKey{}).(*reqInfo); ok {
		return i
	}
	return &reqInfo{}
}

func (s *Server) v2Handler(listenerRepo string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info := &reqInfo{repo: "-", kind: "other", listener: listenerRepo}
		sw := &statusWriter{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), infoKey{}, info))
		sw.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		aborted := true
		defer func() {
			status := sw.status
			if status == 0 {
				status = http.StatusOK
			}
			code := fmt.Sprint(status)
			if aborted {
				code = "aborted"
			}
			s.m.requests.WithLabelValues(info.repo, info.kind, r.Method, code).Inc()
			s.m.requestDuration.WithLabelValues(info.kind, r.Method).Observe(time.Since(start).Seconds())
			if info.source != "" && sw.bytes > 0 {
				s.m.servedBytes.WithLabelValues(info.repo, info.source).Add(float64(sw.bytes))
			}
			s.log.Info("request", "method", r.Method, "path", r.URL.Path, "repository", info.repo,
				"name", info.image, "ref", info.ref, "result", info.result, "status", code,
				"bytes", sw.bytes, "duration", time.Since(start).Round(time.Microsecond), "remote", r.RemoteAddr)
		}()
		p, err := s.auth.authenticate(r)
		if internal, _ := r.Context().Value(internalKey{}).(bool); internal {
			p, err = principal{internal: true}, nil
		}
		if err != nil {
			err = s.challenge(r, "", "", "")
		} else {
			info.principal = p
			err = s.dispatch(sw, r, listenerRepo)
		}
		if err != nil && sw.status == 0 {
			s.writeError(sw, r, err, info.route, formatRegistry)
		} else if err != nil {
			s.log.Error("request failed after its response began", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		aborted = false
	})
}

// dispatch routes one /v2 request (DESIGN: "Which repository answers").
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request, listenerRepo string) error {
	info := infoOf(r.Context())
	rt, err := parsePath(r.URL.Path)
	if err != nil {
		return err
	}
	info.kind, info.route = rt.kind.String(), rt
	switch rt.kind {
	case routeBase:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return errf(codeUnsupported, "method %s not allowed on /v2/", r.Method)
		}
		// end-1: 200 when the credentials are good, or when anonymous
		// access covers everything here (no users, anonymous pulls).
		// Otherwise the challenge: clients learn the realm only from this
		// answer (Docker never asks for a token after a 200 here), and
		// anonymous ones get tokens for what anonymous access allows.
		if info.principal.user == nil && info.principal.token == nil && !info.principal.internal {
			if rp := s.repos[listenerRepo]; rp == nil || !rp.AnonymousPull || len(*s.auth.users.Load()) > 0 {
				return s.challenge(r, "", "", "")
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		if r.Method == http.MethodGet {
			io.WriteString(w, "{}")
		}
		return nil
	case routeCatalog:
		rp := s.repos[listenerRepo]
		if rp == nil {
			return errf(codeNameUnknown, "no repository on this listener")
		}
		info.repo = rp.Name
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return errf(codeUnsupported, "method %s not allowed on /v2/_catalog", r.Method)
		}
		p := info.principal
		if !s.allowed(p, rp, "", actionPull) && rp.Kind != KindGroup {
			if p.user == nil {
				return s.challenge(r, "", "", "")
			}
			return errf(codeDenied, "%s may not list %s", p.name(), rp.Name)
		}
		if p.token != nil && !p.token.grants("registry", "catalog", "*") {
			return s.challenge(r, "", "", "insufficient_scope")
		}
		return s.catalog(w, r, rp)
	}
	rp, image, err := s.resolve(r, listenerRepo, rt.name)
	if err != nil {
		return err
	}
	info.repo, info.image, info.ref = rp.Name, image, rt.ref
	// Writes a repository kind cannot take are refused whoever asks.
	if actionFor(r, rt) != actionPull {
		switch {
		case rp.Kind == KindProxy:
			return errf(codeUnsupported, "repository %q is a %s repository (read-only); push to a hosted repository", rp.Name, rp.Kind)
		case rp.Kind == KindGroup && rp.PushTo == "":
			return errf(codeUnsupported, "group %q has no push_to repository; push to a hosted repository", rp.Name)
		}
	}
	target := rp
	if rp.Kind == KindGroup && actionFor(r, rt) != actionPull && rp.PushTo != "" {
		// A write through a group needs the right on the group or on
		// the repository it goes to.
		if s.allowed(info.principal, rp, image, actionPush) {
			target = rp
		} else {
			target = s.repos[rp.PushTo]
		}
	}
	if err := s.authorize(r, info.principal, target, image, rt.name, actionFor(r, rt)); err != nil {
		return err
	}
	if rt.kind == routeUploads || (rt.kind == routeUpload && r.Method != http.MethodGet) {
		release, ok := s.uploadLimit.acquire(r)
		if !ok {
			return &regError{Code: codeTooManyRequests, Message: "too many concurrent uploads from this client",
				Header: http.Header{"Retry-After": {"1"}}}
		}
		defer release()
	}
	switch rp.Kind {
	case KindProxy:
		return s.serveProxy(w, r, rp, image, rt)
	case KindHosted:
		return s.serveHosted(w, r, rp, image, rt)
	case KindGroup:
		return s.serveGroup(w, r, rp, image, rt)
	}
	return errf(codeUnsupported, "repository %q of kind %s cannot serve this yet", rp.Name, rp.Kind)
}

// resolve picks the repository for a request and the image name within it:
// (1) ?ns=<host> picks the proxy of that upstream host; (2) a first path
// segment naming a repository or an upstream host picks it and is
// stripped; (3) else the listener's repository.
func (s *Server) resolve(r *http.Request, listenerRepo, name string) (*repo, string, error) {
	var rp *repo
	image := name
	if ns := r.URL.Query().Get("ns"); ns != "" {
		rp = s.proxyForHost(ns)
		if rp == nil {
			return nil, "", errf(codeNameUnknown, "no repository serves namespace %q", ns)
		}
	} else if first, rest, ok := strings.Cut(name, "/"); ok {
		if p := s.repos[first]; p != nil {
			rp, image = p, rest
		} else if p := s.proxyForHost(first); p != nil && strings.Contains(first, ".") {
			rp, image = p, rest
		}
	}
	if rp == nil {
		rp = s.repos[listenerRepo]
		if rp == nil {
			return nil, "", errf(codeNameUnknown, "no repository for %q", name)
		}
	}
	if rp.DockerHub && !strings.Contains(image, "/") {
		image = "library/" + image
	}
	return rp, image, nil
}

// dockerHubHosts are the names Docker Hub's registry goes by.
var dockerHubHosts = map[string]bool{"docker.io": true, "registry-1.docker.io": true, "index.docker.io": true}

// proxyForHost returns the first proxy whose upstream is host (Docker
// Hub's names are one) or lists it in ns_aliases.
func (s *Server) proxyForHost(host string) *repo {
	host = strings.ToLower(host)
	for _, rp := range s.order {
		if rp.Kind != KindProxy {
			continue
		}
		up := strings.ToLower(rp.UpstreamHost)
		if up == host || (dockerHubHosts[up] && dockerHubHosts[host]) {
			return rp
		}
		for _, a := range rp.NSAliases {
			if strings.EqualFold(a, host) {
				return rp
			}
		}
	}
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	status := map[string]string{}
	ready := true
	if err := s.ops.Ping(ctx); err != nil {
		status["store"] = err.Error()
		ready = false
	} else {
		status["store"] = "ok"
	}
	_, cached := s.ops.Stats()
	for _, rp := range s.order {
		if rp.Kind != KindProxy {
			continue
		}
		// What real requests (and at most one probe a minute) said:
		// a load balancer polling here sends nothing upstream.
		st := s.health(rp)
		v := "ok"
		switch {
		case !st.known:
			v = "not asked yet"
		case !st.ok && cached == 0:
			v = "unreachable, nothing cached: " + st.cause
		case !st.ok:
			v = "unreachable for " + ago(time.Since(st.since)) + ", serving cache: " + st.cause
		}
		status["upstream "+rp.Name] = v
	}
	w.Header().Set("Content-Type", "application/json")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(status)
}

// adminGC runs a garbage collection now (berth gc asks a running server
// here, on the admin listener).
func (s *Server) adminGC(w http.ResponseWriter, r *http.Request) error {
	res, err := s.ops.GC(store.GCOptions{Grace: s.opts.GCGrace, DryRun: r.URL.Query().Get("dry_run") != ""})
	if err != nil {
		return fmt.Errorf("garbage collection: %w", err)
	}
	s.log.Info("garbage collection asked by admin", "blobs", res.Blobs, "bytes", res.Bytes, "dry_run", r.URL.Query().Get("dry_run") != "")
	return writeJSON(w, r, map[string]any{"blobs": res.Blobs, "bytes": res.Bytes, "digests": res.Digests})
}

// adminBackup streams a consistent copy of the index (berth backup).
func (s *Server) adminBackup(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/octet-stream")
	n, err := s.ops.Backup(w)
	if err != nil {
		s.log.Error("backup of the index", "err", err, "bytes", n)
		panic(http.ErrAbortHandler) // the client sees a cut body, never a short file as whole
	}
	s.log.Info("index backed up", "bytes", n)
	return nil
}

// pendingTag is what an upstream HEAD said a tag points at, kept for a
// short while. Docker asks HEAD manifests/<tag>, then GET
// manifests/<digest>; when that manifest is fetched the tag is recorded
// with it, so that the tag is cached (and can be served stale) too.
type pendingTag struct {
	tags    []string
	checked time.Time
}

const pendingTagTTL = 5 * time.Minute

// rememberNotFound keeps an upstream 404 for not_found_ttl.
func (rp *repo) rememberNotFound(key string) {
	if rp.NotFoundTTL > 0 {
		rp.neg.AddTTL(key, struct{}{}, rp.NotFoundTTL)
	}
}

// notFound reports a remembered upstream 404.
func (rp *repo) notFound(key string) bool {
	_, ok := rp.neg.Get(key)
	return ok
}

// addPending records that an upstream HEAD said tag of path points at
// digest.
func (rp *repo) addPending(path, tag, digest string) {
	rp.pending.Update(path+"@"+digest, func(pt pendingTag, _ bool) pendingTag {
		if !slices.Contains(pt.tags, tag) {
			pt.tags = append(slices.Clone(pt.tags), tag)
		}
		pt.checked = time.Now()
		return pt
	})
}

// takePending returns and forgets the tags last seen pointing at digest.
func (rp *repo) takePending(path, digest string) ([]string, time.Time) {
	pt, _ := rp.pending.Take(path + "@" + digest)
	return pt.tags, pt.checked
}
