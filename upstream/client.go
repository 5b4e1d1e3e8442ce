package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-registry/berth/internal/reghost"
	"github.com/berth-registry/berth/internal/shared"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/singleflight"
)

// ManifestAccept is the Accept header sent for manifests: the one list of
// the manifest types berth asks for, stores and serves (the server's
// manifest parser accepts exactly these, and Docker's schema 1).
const ManifestAccept = string(types.OCIImageIndex) + ", " + string(types.OCIManifestSchema1) + ", " +
	string(types.DockerManifestList) + ", " + string(types.DockerManifestSchema2)

// Options configure a Client. Only URL is required.
type Options struct {
	// URL of the registry, "https://host[:port]" or "http://host:port".
	URL string
	// Username and Password for the registry; empty means anonymous.
	Username, Password string
	// ConnectTimeout bounds a TCP connect (and the TLS handshake). Zero
	// means 10s.
	ConnectTimeout time.Duration
	// HeaderTimeout bounds the wait for response headers of each HTTP
	// exchange. Zero means 30s.
	HeaderTimeout time.Duration
	// IdleTimeout fails a response body that sends no byte for this long.
	// Zero means 60s.
	IdleTimeout time.Duration
	// Attempts is the number of tries for idempotent requests. Zero means 3.
	Attempts int
	// UserAgent is sent with every request. Empty means "berth".
	UserAgent string
	// Observe, if set, is called once per HTTP exchange.
	Observe func(method string, status int, d time.Duration, err error)
	// Logger receives debug lines. Nil discards them.
	Logger *slog.Logger
	// Transport is the base transport. Nil means a pooled http.Transport.
	Transport http.RoundTripper
	// Namespace, when set, is sent as ?ns=<namespace> with every registry
	// request: the upstream is a mirror (another berth, a tier up) that
	// serves many registries and picks one by ns, as containerd asks.
	Namespace string
	// RefuseSpecialAddresses refuses connections to the special-purpose
	// addresses of reghost.Refused (loopback, private, link-local and
	// cloud metadata, CGNAT, NAT64 and 6to4 of those, ...), checked at
	// connect time, after DNS, for every connection (redirect targets and
	// token realms too): for upstreams whose host a client chose (an
	// allowlist proxy's). AllowPrivateNetworks opens the private-use,
	// loopback, CGNAT and unique-local ranges.
	RefuseSpecialAddresses bool
	AllowPrivateNetworks   bool
	// Caps limits the connections and bandwidth toward the upstream; the
	// Clients of one proxy's URLs share it. Nil means no caps.
	Caps *Caps
	// TLS configures the connection to an https registry (a private CA,
	// or skipping verification); nil means the system's roots.
	TLS *tls.Config
}

// Client talks to one upstream registry. It is safe for concurrent use.
type Client struct {
	url  *url.URL
	reg  name.Registry
	auth authn.Authenticator
	base http.RoundTripper
	opts Options
	log  *slog.Logger

	flight singleflight.Group

	mu        sync.Mutex
	challenge *transport.Challenge
	images    map[string]*imageTransport

	budget budget // the pull budget the upstream reports (ratelimit.go)

	caps *Caps // caps.go; nil: none

	idle interface{ CloseIdleConnections() } // the pooled transport New made; nil for Options.Transport
}

// CloseIdleConnections closes the connections the client keeps open for
// reuse (a host proxy that is dropped lets them go).
func (c *Client) CloseIdleConnections() {
	if c.idle != nil {
		c.idle.CloseIdleConnections()
	}
}

type imageTransport struct {
	rt       http.RoundTripper
	lastUsed time.Time
}

// maxImageTransports bounds the per-image token cache.
const maxImageTransports = 4096

// New returns a client for the registry at opts.URL. It does no I/O.
func New(opts Options) (*Client, error) {
	u, err := url.Parse(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("upstream url %q: scheme must be http or https", opts.URL)
	}
	if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("upstream url %q: want scheme://host[:port] with no path, query or credentials", opts.URL)
	}
	var nopts []name.Option
	if u.Scheme == "http" {
		nopts = append(nopts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, nopts...)
	if err != nil {
		return nil, fmt.Errorf("upstream url %q: %w", opts.URL, err)
	}
	opts.setDefaults()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base := opts.Transport
	var idle interface{ CloseIdleConnections() }
	if base == nil {
		tr := newTransport(opts)
		base, idle = tr, tr
	}
	if opts.Observe != nil {
		base = &observeTransport{inner: base, observe: opts.Observe}
	}
	base = transport.NewUserAgent(base, opts.UserAgent)
	var auth authn.Authenticator = authn.Anonymous
	if opts.Username != "" || opts.Password != "" {
		auth = &authn.Basic{Username: opts.Username, Password: opts.Password}
	}
	c := &Client{
		url: u, reg: reg, auth: auth, base: base, opts: opts, log: log,
		images: map[string]*imageTransport{}, idle: idle,
	}
	if opts.Caps != nil {
		c.caps = opts.Caps
	} else {
		c.caps = &Caps{}
	}
	c.budget.onChange = func(spent bool, t time.Time) {
		if spent {
			log.Warn("upstream pull budget spent: manifest requests are answered 429 without asking; cached tags are served as they are",
				"upstream", c.URL(), "until", t.Format(time.RFC3339))
		} else {
			log.Info("upstream pull budget renewed: manifest requests go upstream again", "upstream", c.URL())
		}
	}
	return c, nil
}

// RateLimit returns the pull budget the upstream last reported (known is
// false when it never sent one) and, while it is spent, until when.
func (c *Client) RateLimit() (rl RateLimit, known bool, spentUntil time.Time) {
	return c.budget.state(time.Now())
}

// Host returns the upstream's host[:port].
func (c *Client) Host() string { return c.url.Host }

// URL returns the upstream's base URL.
func (c *Client) URL() string { return c.url.Scheme + "://" + c.url.Host }

// Ping asks GET /v2/ and remembers the auth challenge. A 200 or a 401 with
// a challenge is a healthy upstream.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.ping(ctx, true)
	return err
}

func (c *Client) ping(ctx context.Context, force bool) (*transport.Challenge, error) {
	c.mu.Lock()
	ch := c.challenge
	c.mu.Unlock()
	if ch != nil && !force {
		return ch, nil
	}
	v, err := shared.Do(ctx, &c.flight, "\x00ping", sharedTimeout, func(ctx context.Context) (any, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL()+"/v2/", nil)
		if err != nil {
			return nil, err
		}
		rt := &retryTransport{inner: c.base, attempts: c.opts.Attempts, base: 200 * time.Millisecond, maxWait: 5 * time.Second}
		resp, err := rt.RoundTrip(req)
		if err != nil {
			return nil, &transportError{err}
		}
		ch := &transport.Challenge{Insecure: c.url.Scheme == "http"}
		switch resp.StatusCode {
		case http.StatusOK:
			resp.Body.Close()
		case http.StatusUnauthorized:
			ch.Scheme, ch.Parameters = parseChallenge(resp.Header.Get("WWW-Authenticate"))
			resp.Body.Close()
		default:
			return nil, errorFrom(resp)
		}
		c.mu.Lock()
		c.challenge = ch
		c.mu.Unlock()
		return ch, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*transport.Challenge), nil
}

// transportFor returns an authenticated transport for pulls of image,
// exchanging a token on first use. Tokens refresh themselves on 401.
func (c *Client) transportFor(ctx context.Context, image string) (http.RoundTripper, error) {
	c.mu.Lock()
	if it, ok := c.images[image]; ok {
		it.lastUsed = time.Now()
		c.mu.Unlock()
		return it.rt, nil
	}
	c.mu.Unlock()
	v, err := shared.Do(ctx, &c.flight, image, sharedTimeout, func(ctx context.Context) (any, error) {
		ch, err := c.ping(ctx, false)
		if err != nil {
			return nil, err
		}
		var rt http.RoundTripper
		if strings.EqualFold(ch.Scheme, "bearer") {
			scope := c.reg.Repo(image).Scope(transport.PullScope)
			if image == catalogImage {
				scope = c.reg.Scope(transport.PullScope) // registry:catalog:*
			}
			tok, err := transport.Exchange(ctx, c.reg, c.auth, c.base, []string{scope}, ch)
			if err != nil {
				// A stale challenge (the upstream moved its realm) is
				// refreshed on the next call.
				c.mu.Lock()
				c.challenge = nil
				c.mu.Unlock()
				return nil, classify(fmt.Errorf("upstream token for %s: %w", image, err))
			}
			if rt, err = transport.FromToken(c.reg, c.auth, c.base, ch, tok); err != nil {
				return nil, err
			}
		} else {
			var err error
			if rt, err = transport.FromToken(c.reg, c.auth, c.base, ch, &transport.Token{}); err != nil {
				return nil, err
			}
		}
		rt = &retryTransport{inner: rt, attempts: c.opts.Attempts, base: 200 * time.Millisecond, maxWait: 5 * time.Second}
		c.mu.Lock()
		if len(c.images) >= maxImageTransports {
			c.evictOldestLocked()
		}
		c.images[image] = &imageTransport{rt: rt, lastUsed: time.Now()}
		c.mu.Unlock()
		return rt, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(http.RoundTripper), nil
}

// sharedTimeout bounds a ping or token exchange shared by many callers.
const sharedTimeout = time.Minute

func (c *Client) evictOldestLocked() {
	var oldest string
	var t time.Time
	for k, v := range c.images {
		if oldest == "" || v.lastUsed.Before(t) {
			oldest, t = k, v.lastUsed
		}
	}
	delete(c.images, oldest)
}

// classify marks token-exchange failures: transport errors from ggcr carry
// a status; anything else is a network failure.
func classify(err error) error {
	var te *transport.Error
	if ok := asTransportError(err, &te); ok {
		e := &Error{StatusCode: te.StatusCode, Method: http.MethodGet, URL: "token"}
		return fmt.Errorf("%w (%v)", e, err)
	}
	return &transportError{err}
}

// do sends one request for image to the registry's path and returns a
// 2xx response or an error.
func (c *Client) do(ctx context.Context, image, method, path string, hdr http.Header) (*http.Response, error) {
	if c.opts.Namespace != "" {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		path += sep + "ns=" + url.QueryEscape(c.opts.Namespace)
	}
	return c.send(ctx, image, method, c.URL()+path, hdr)
}

// send sends one request for image to target, an absolute URL.
func (c *Client) send(ctx context.Context, image, method, target string, hdr http.Header) (*http.Response, error) {
	rt, err := c.transportFor(ctx, image)
	if err != nil {
		return nil, err
	}
	release, err := c.acquire(ctx)
	if err != nil {
		return nil, err
	}
	// The request's own context, cancelled when its body has been idle for
	// IdleTimeout (or is closed).
	rctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(rctx, method, target, nil)
	if err != nil {
		cancel()
		release()
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	client := &http.Client{
		Transport: rt,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return fmt.Errorf("stopped after 10 redirects")
			}
			// The bearer transport adds Authorization only for the
			// registry host; drop anything else that could leak.
			if req.URL.Host != c.url.Host {
				req.Header.Del("Authorization")
			}
			return nil
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		release()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &transportError{err}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := errorFrom(resp)
		cancel()
		release()
		return nil, e
	}
	resp.Body = &heldBody{ReadCloser: newIdleBody(resp.Body, c.opts.IdleTimeout, cancel), release: release}
	if c.caps.bw != nil {
		resp.Body = &throttledBody{ReadCloser: resp.Body, ctx: ctx, lim: c.caps.bw}
	}
	return resp, nil
}

// Manifest asks for image's manifest ref (tag or digest) with GET or HEAD.
// On success the response carries Content-Type and usually
// Docker-Content-Digest; the caller closes its body.
//
// Every answer's rate-limit headers are recorded (RateLimit). While the
// budget is spent (remaining 0, or a 429) Manifest answers a 429 itself,
// with Retry-After, and sends nothing (ErrBudgetSpent).
func (c *Client) Manifest(ctx context.Context, method, image, ref string) (*http.Response, error) {
	path := "/v2/" + image + "/manifests/" + ref
	now := time.Now()
	if spent, until := c.budget.spent(now); spent {
		return nil, &Error{Method: method, URL: c.URL() + path, StatusCode: http.StatusTooManyRequests,
			Code: "TOOMANYREQUESTS", Message: "the upstream's pull budget is spent; berth did not ask",
			RetryAfter: strconv.Itoa(int(math.Ceil(until.Sub(now).Seconds()))), Refused: true}
	}
	resp, err := c.do(ctx, image, method, path, http.Header{"Accept": {ManifestAccept}})
	var ue *Error
	switch {
	case err == nil:
		c.budget.observe(resp.StatusCode, resp.Header, time.Now())
	case errors.As(err, &ue) && ue.Header != nil:
		c.budget.observe(ue.StatusCode, ue.Header, time.Now())
	}
	return resp, err
}

// Blob asks for image's blob dgst with GET or HEAD, following redirects.
func (c *Client) Blob(ctx context.Context, method, image, dgst string) (*http.Response, error) {
	return c.do(ctx, image, method, "/v2/"+image+"/blobs/"+dgst, nil)
}

// BlobRange GETs bytes start to end (inclusive) of image's blob dgst,
// following redirects: a Range request ("bytes=start-end", or
// "bytes=start-" when end < 0: some registries take closed ranges only)
// unless start is 0 and end < 0 (the whole blob). An upstream that
// honours it answers 206; resp.Request.Response is non-nil when the
// answer came from where the registry redirected (BlobAt).
func (c *Client) BlobRange(ctx context.Context, image, dgst string, start, end int64) (*http.Response, error) {
	return c.do(ctx, image, http.MethodGet, "/v2/"+image+"/blobs/"+dgst, rangeHeader(start, end))
}

// BlobAt GETs bytes start to end of a blob at location, the absolute URL
// a registry redirected a blob request to (a CDN or a bucket), sending no
// credentials there: later ranges of a blob go straight to it. A signed
// URL that expired answers 401 or 403; ask the registry again then.
func (c *Client) BlobAt(ctx context.Context, image, location string, start, end int64) (*http.Response, error) {
	return c.send(ctx, image, http.MethodGet, location, rangeHeader(start, end))
}

func rangeHeader(start, end int64) http.Header {
	switch {
	case end >= start && end >= 0:
		return http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", start, end)}}
	case start > 0:
		return http.Header{"Range": {fmt.Sprintf("bytes=%d-", start)}}
	}
	return nil
}

// Referrers asks for the referrers of image's manifest dgst (OCI
// end-12a/b), filtered by artifactType when not "". An upstream without
// the API answers 404 (ErrNotFound): clients then use the tag schema.
func (c *Client) Referrers(ctx context.Context, image, dgst, artifactType string) (*http.Response, error) {
	p := "/v2/" + image + "/referrers/" + dgst
	if artifactType != "" {
		p += "?" + url.Values{"artifactType": {artifactType}}.Encode()
	}
	return c.do(ctx, image, http.MethodGet, p, http.Header{"Accept": {string(types.OCIImageIndex)}})
}

// Tags asks for image's tag list; query carries n and last.
func (c *Client) Tags(ctx context.Context, image string, query url.Values) (*http.Response, error) {
	p := "/v2/" + image + "/tags/list"
	if len(query) > 0 {
		p += "?" + query.Encode()
	}
	return c.do(ctx, image, http.MethodGet, p, nil)
}

// catalogImage keys the transport of catalog requests: no image name
// can be empty.
const catalogImage = ""

// Catalog asks for the registry's repository list (GET /v2/_catalog);
// query carries n and last.
func (c *Client) Catalog(ctx context.Context, query url.Values) (*http.Response, error) {
	p := "/v2/_catalog"
	if len(query) > 0 {
		p += "?" + query.Encode()
	}
	return c.do(ctx, catalogImage, http.MethodGet, p, nil)
}

// dockerHubHosts are the names Docker Hub's registry goes by.
var dockerHubHosts = []string{"docker.io", "index.docker.io", "registry-1.docker.io"}

// DockerHubHosts returns the names Docker Hub's registry goes by.
func DockerHubHosts() []string { return slices.Clone(dockerHubHosts) }

// IsDockerHub reports whether host is one of Docker Hub's names.
func IsDockerHub(host string) bool { return slices.Contains(dockerHubHosts, strings.ToLower(host)) }

// ErrPrivateAddress is wrapped by the error of a connection refused by
// Options.RefuseSpecialAddresses.
var ErrPrivateAddress = reghost.ErrRefusedAddress
