package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/reghost"
	"github.com/berth-registry/berth/store"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// listenerScope is what a listener may reach: repo answers what no other
// rule routes; a bound listener (a [[listener]] entry) reaches only repo
// and, for a group, its members, whatever ?ns= or the path names; the
// admin socket's requests are trusted (berth's own principal).
type listenerScope struct {
	repo    string
	bound   bool
	trusted bool // the admin socket: every request has every right
}

// Handler returns the HTTP handler of the main listener: requests go to
// the repository ?ns= or the path names, and to listenerRepo when no
// other rule routes them.
func (s *Server) Handler(listenerRepo string) http.Handler {
	return s.handler(listenerScope{repo: listenerRepo})
}

// BoundHandler returns the HTTP handler of a listener bound to
// repository repo: its requests reach only repo (and, for a group, its
// members); ?ns= and host prefixes are resolved among those.
func (s *Server) BoundHandler(repo string) http.Handler {
	return s.handler(listenerScope{repo: repo, bound: true})
}

func (s *Server) handler(l listenerScope) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v2/", s.v2Handler(l))
	mux.Handle("/v2", s.v2Handler(l))
	mux.Handle("GET /metrics", s.metricsHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("/token", s.serveToken(l))
	mux.HandleFunc("POST /replicate/notify/{rule}", replicateNotify(s))
	s.status.uiHandlers(mux, l.repo)
	return s.recoverPanics(s.withBodyDeadline(mux))
}

// AdminHandler serves the operator endpoints (/admin/gc, /admin/prefetch,
// /admin/ls, /admin/approve, /admin/policy-test) and the registry API with full rights, for the berth
// commands. It belongs on its own listener that only the operator can
// reach (a mode-0600 Unix socket by default), never on a public one:
// behind a reverse proxy on the same box every client is "loopback".
func (s *Server) AdminHandler(listenerRepo string) http.Handler {
	mux := http.NewServeMux()
	serveOps(mux, runningOps{s}, s.log, s.handle)
	mux.HandleFunc("POST /admin/prefetch", s.handle(formatRegistry, s.adminPrefetch(listenerRepo)))
	mux.HandleFunc("POST /admin/replicate", s.handle(formatRegistry, adminReplicate(s)))
	mux.HandleFunc("POST /admin/retention", s.handle(formatRegistry, adminRetention(s)))
	mux.HandleFunc("POST /admin/policy-test", s.handle(formatRegistry, adminPolicyTest(s, listenerRepo)))
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.opts.Registry, promhttp.HandlerOpts{}))
	trusted := s.v2Handler(listenerScope{repo: listenerRepo, trusted: true})
	mux.Handle("/v2/", trusted)
	mux.Handle("/v2", trusted)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	return s.recoverPanics(mux)
}

// reqInfo is what a handler learned, for the request's log line and
// metrics.
type reqInfo struct {
	listener         listenerScope
	principal        principal
	repo, image, ref string
	kind             string
	route            route        // the parsed path, for error messages
	result           string       // cache result
	pulled           store.Digest // the manifest a GET sent whole (a pull)
	source           string       // "cache" or "upstream" for bytes served
	served           string       // the repository whose disk or upstream answered (a group's member)
	group            string       // the group the request went through, if any
	client           string       // the client's address (audit events)
}

type infoKey struct{}

func infoOf(ctx context.Context) *reqInfo {
	if i, ok := ctx.Value(infoKey{}).(*reqInfo); ok {
		return i
	}
	return &reqInfo{}
}

func (s *Server) v2Handler(listener listenerScope) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info := &reqInfo{repo: "-", kind: "other", listener: listener, client: clientAddr(r)}
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
			if !info.pulled.IsZero() && status == http.StatusOK && !aborted && !info.principal.internal {
				s.pulls.Pulled(r.Context(), info.pulled)
			}
			if info.source != "" && info.served != "" && sw.bytes > 0 && !info.principal.internal {
				s.m.servedBytes.WithLabelValues(info.served, info.source).Add(float64(sw.bytes))
				if info.group != "" {
					s.m.groupBytes.WithLabelValues(info.group, info.served, info.source).Add(float64(sw.bytes))
				}
			}
			s.log.Info("request", "method", r.Method, "path", r.URL.Path, "repository", info.repo,
				"name", info.image, "ref", info.ref, "result", info.result, "status", code,
				"bytes", sw.bytes, "duration", time.Since(start).Round(time.Microsecond), "remote", r.RemoteAddr)
		}()
		p, err := principal{internal: true}, error(nil)
		if !listener.trusted {
			p, err = s.auth.authenticate(r)
		}
		if err != nil {
			err = s.loginFailed(r, err, s.challenge(r, "", "", ""))
		} else {
			info.principal = p
			err = s.dispatch(sw, r, listener)
		}
		if err != nil && sw.status == 0 {
			s.writeError(sw, r, err, info.route, formatRegistry)
		} else if err != nil {
			s.log.Error("request failed after its response began", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		aborted = false
	})
}

// dispatch routes one /v2 request: the base and the catalog answer for
// the listener; any other path goes to the repository resolve picks, is
// authorized there and ends in that repository's serve.
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request, listener listenerScope) error {
	info := infoOf(r.Context())
	rt, err := parsePath(r.URL.Path)
	if err != nil {
		return err
	}
	info.kind, info.route = rt.kind.String(), rt
	switch rt.kind {
	case routeBase:
		return s.serveBase(w, r, listener)
	case routeCatalog:
		return s.serveCatalog(w, r, listener)
	}
	rp, image, err := s.resolve(r.Context(), r.URL.Query().Get("ns"), listener, rt.name)
	if err != nil {
		return err
	}
	defer s.hosts.forgetSilentHost(rp)
	info.repo, info.image, info.ref = rp.Name, image, rt.ref
	if rp.asGroup() != nil {
		info.group = rp.Name
	}
	if err := s.authorizeRoute(r, rp, image, rt); err != nil {
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
	return rp.impl.serve(w, r, rp.image(image), rt)
}

// serveBase answers /v2/ (end-1): 200 when the credentials are good, or
// when anonymous access covers everything here (no users, anonymous
// pulls). Otherwise the challenge: clients learn the realm only from this
// answer (Docker never asks for a token after a 200 here), and anonymous
// ones get tokens for what anonymous access allows.
func (s *Server) serveBase(w http.ResponseWriter, r *http.Request, listener listenerScope) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errf(codeUnsupported, "method %s not allowed on /v2/", r.Method)
	}
	p := infoOf(r.Context()).principal
	if p.user == nil && p.token == nil && !p.internal {
		if rp := s.repos[listener.repo]; rp == nil || !rp.AnonymousPull || len(*s.auth.users.Load()) > 0 {
			return s.challenge(r, "", "", "")
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	if r.Method == http.MethodGet {
		io.WriteString(w, "{}")
	}
	return nil
}

// serveCatalog answers /v2/_catalog of the listener's repository.
func (s *Server) serveCatalog(w http.ResponseWriter, r *http.Request, listener listenerScope) error {
	info := infoOf(r.Context())
	rp := s.repos[listener.repo]
	if rp == nil {
		return errf(codeNameUnknown, "no repository on this listener")
	}
	info.repo = rp.Name
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errf(codeUnsupported, "method %s not allowed on /v2/_catalog", r.Method)
	}
	p := info.principal
	if !allowed(p, rp, "", actionPull) && rp.asGroup() == nil {
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

// authorizeRoute refuses writes rp's kind cannot take, whoever asks, and
// decides the request's right: a write through a group needs the right
// on the group or on the repository it goes to.
func (s *Server) authorizeRoute(r *http.Request, rp *repo, image string, rt route) error {
	p := infoOf(r.Context()).principal
	action := actionFor(r, rt)
	target := rp
	if action != actionPull {
		switch g := rp.asGroup(); {
		case rp.asProxy() != nil:
			return errf(codeUnsupported, "repository %q is a proxy repository (read-only); push to a hosted repository", rp.Name)
		case g != nil && g.pushTo == nil:
			return errf(codeUnsupported, "group %q has no push_to repository; push to a hosted repository", rp.Name)
		case g != nil && !allowed(p, rp, image, actionPush):
			target = g.pushTo
		}
	}
	return s.authorize(r, p, target, image, rt.name, action)
}

// resolve picks the repository for a request and the image name within
// it, among the repositories the listener may reach: (1) ?ns=<host>
// picks the proxy of that upstream host; (2) a first path segment naming
// a repository or an upstream host picks it and is stripped; (3) else the
// listener's repository. Hosts are parsed (reghost) before anything is
// matched: a malformed one is 400 and nothing is dialled.
func (s *Server) resolve(ctx context.Context, ns string, listener listenerScope, name string) (*repo, string, error) {
	scope := s.scope(listener)
	var rp *repo
	image := name
	if ns != "" {
		host, err := parseHost("ns", ns)
		if err != nil {
			return nil, "", err
		}
		rp = proxyForHost(scope, host)
		if rp == nil {
			g := allowlistFor(scope, host)
			if g == nil {
				g = forwarder(scope)
			}
			if g == nil {
				return nil, "", errf(codeNameUnknown, "no repository serves namespace %q", host)
			}
			if rp, err = s.hosts.hostProxy(ctx, g, host); err != nil {
				return nil, "", err
			}
		}
	} else if first, rest, ok := strings.Cut(name, "/"); ok {
		if p := s.repos[first]; p != nil && slices.Contains(scope, p) {
			rp, image = p, rest
		} else if reghost.IsRegistryHost(first) {
			host, err := parseHost("path", first)
			if err != nil {
				return nil, "", err
			}
			if p := proxyForHost(scope, host); p != nil && strings.Contains(first, ".") {
				rp, image = p, rest
			} else if g := allowlistFor(scope, host); g != nil {
				if rp, err = s.hosts.hostProxy(ctx, g, host); err != nil {
					return nil, "", err
				}
				image = rest
			}
		}
	}
	if rp == nil {
		rp = s.repos[listener.repo]
		if rp == nil {
			return nil, "", errf(codeNameUnknown, "no repository for %q", name)
		}
	}
	if rp.asProxy() != nil && rp.Upstream == nil {
		// An allowlist repository named itself: the host comes next
		// ("<repository>/<host>/<image>").
		first, rest, ok := strings.Cut(image, "/")
		if !ok || !reghost.IsRegistryHost(first) {
			return nil, "", errf(codeNameUnknown, "repository %q serves the registries %s; %q is not one", rp.Name, strings.Join(rp.Hosts, ", "), first)
		}
		host, err := parseHost("path", first)
		if err != nil {
			return nil, "", err
		}
		if !host.MatchAny(rp.Hosts) {
			return nil, "", errf(codeNameUnknown, "repository %q serves the registries %s; %q is not one", rp.Name, strings.Join(rp.Hosts, ", "), host)
		}
		if rp, err = s.hosts.hostProxy(ctx, rp, host); err != nil {
			return nil, "", err
		}
		image = rest
	}
	if rp.DockerHub && !strings.Contains(image, "/") {
		image = "library/" + image
	}
	return rp, image, nil
}
