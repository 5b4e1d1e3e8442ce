package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/internal/clientcfg"
	"github.com/berth-registry/berth/internal/fetch"
	"github.com/berth-registry/berth/internal/lru"
	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/internal/reghost"
	"github.com/berth-registry/berth/store"
	"github.com/prometheus/client_golang/prometheus"
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
	// BlobRange GETs bytes start to end of a blob (a Range request when
	// start > 0; end < 0 means to the end).
	BlobRange(ctx context.Context, image, dgst string, start, end int64) (*http.Response, error)
	Tags(ctx context.Context, image string, query url.Values) (*http.Response, error)
	// Referrers GETs the referrers index of manifest dgst (artifactType
	// filters when not "").
	Referrers(ctx context.Context, image, dgst, artifactType string) (*http.Response, error)
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

	// Allowlist proxies: instead of one Upstream, any registry whose host
	// matches Hosts (globs), through a proxy made by NewUpstream on first
	// use (plainHTTP for hosts matching HTTPHosts). Hosts that resolve to
	// private addresses are refused unless AllowPrivateNetworks (hosts.go).
	Hosts                []string
	HTTPHosts            []string
	AllowPrivateNetworks bool
	NewUpstream          func(host reghost.Host, plainHTTP bool) (Upstream, error)
	// ForwardNS: the upstream is a mirror of many registries (a berth a
	// tier up). A ?ns= no other proxy answers is passed on to it, through
	// a proxy NewUpstream makes per namespace (kept apart in the store).
	ForwardNS bool
	// EagerLayers starts the downloads of an image manifest's config and
	// layers as soon as the manifest is served (eager.go).
	EagerLayers bool
	// RangeFetch fetches big blobs from upstream as parallel byte ranges
	// (internal/fetch); Parallel < 2 fetches one stream per blob.
	RangeFetch RangeFetch

	AnonymousPull bool
	// AnonymousPush lets anyone push to a hosted repository (labs, CI
	// scratch registries); off by default.
	AnonymousPush bool

	// Group settings: members in the order pulls try them, and the hosted
	// member that receives pushes ("" refuses pushes).
	Members []string
	PushTo  string

	// Policy decides what the repository serves, by manifest digest (nil:
	// everything).
	Policy *policy.Policy

	// ImmutableTags are globs of a hosted repository's tags that cannot
	// be moved or deleted once pushed.
	ImmutableTags []string
	// Retention removes a hosted repository's old tags and untagged
	// manifests (retention.go; nil: none).
	Retention *Retention
}

// RangeFetch is how a proxy fetches a blob longer than Min: in ranges of
// at most Chunk bytes (the first Min), Parallel streams at first and up
// to MaxParallel while the aggregate rate still rises with them. With
// SlowRate set the others start only when the first range brought less
// than SlowRate bytes a second in two Ramps in a row: a faster stream
// (loopback, a LAN) fetches the rest alone, as one more range. SlowRate
// or Ramp 0: Parallel at once from the first answer. StallAfter: see
// fetch.RangePlan (0: its default).
type RangeFetch struct {
	Min, Chunk            int64
	Parallel, MaxParallel int
	Ramp                  time.Duration
	SlowRate              float64
	StallAfter            time.Duration
}

// The pace a proxy judges its first range by: one stream that brings
// 50 MB/s or more is not held back by its path, and several would share
// the CPU and the disk with it instead (on the loopback bench the big
// blob by 20 clients took 8.9 s in 4 ranges, 6.1 s as one stream).
const (
	DefaultRangeRamp     = 50 * time.Millisecond
	DefaultRangeSlowRate = 50e6
)

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
	// Uploads caps what unfinished upload sessions hold.
	Uploads UploadLimits
	// MaxBlobSize bounds an upstream blob whose size no manifest declared
	// (zero: DefaultMaxBlobSize).
	MaxBlobSize int64
	// MaxDownloads and MaxDownloadsPerClient bound the upstream blob
	// downloads under way, in all and started by one client address
	// (zero: 256 and 32); past them the client gets 429.
	MaxDownloads, MaxDownloadsPerClient int
	// AbandonGrace is how long a download that no client reads any more
	// (and no eager pull wants) goes on before it is cancelled (zero:
	// 10s).
	AbandonGrace time.Duration
	// Audit receives an event for each push, deletion, tag moved, failed
	// login, refusal, policy decision, retention deletion, replication
	// and operator action (nil: none).
	Audit audit.Sink
	// Clients is what the status page's client configuration page says of
	// this berth (its URL: the one the browser came by when empty).
	Clients *clientcfg.Options
	// Replication runs the [[replicate]] rules asked for on the admin
	// listener and shows them on the status page (nil: none).
	Replication *Replication
	// Resolver looks up the hosts of allowlist proxies before they are
	// served (nil: net.DefaultResolver).
	Resolver interface {
		LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	}
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
	pulls       pullCounter
	verdicts    verdictStore // what policies learned of digests (policy.go)
	ops         opsStore
	log         *slog.Logger
	m           *metrics
	fetches     *fetch.Group
	flight      singleflight.Group
	commits     pendingCommits // manifest commits under way (proxy_manifest.go)
	auth        *auth
	uploadLimit *uploadLimiter

	status   statusPages  // the status page (ui.go)
	refused  refusalLog   // what policies held or refused lately (ui_policy.go)
	hosts    *hostProxies // per-host proxies of allowlist repositories (hosts.go)
	eager    *eager       // eager layer downloads (eager.go)
	resolver interface {
		LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	}

	bodyGrace    time.Duration                // a request body's first read deadline (conns.go)
	declared     *declaredSizes               // the sizes manifests gave blobs (blob_limit.go)
	diskFullAt   atomic.Int64                 // unix nanos of the last request refused for a full disk
	loggedCauses *lru.Cache[string, struct{}] // upstream failures logged in the last minute
}

// cacheBytes bounds each per-repository cache keyed by client input
// (negative answers, group members), key bytes and overhead counted:
// with names up to 255 bytes the entry caps alone would allow ~40 MB.
const cacheBytes = 8 << 20

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
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	opts.Uploads.setDefaults()
	if opts.MaxBlobSize <= 0 {
		opts.MaxBlobSize = DefaultMaxBlobSize
	}
	s := &Server{opts: opts, repos: map[string]*repo{}, log: opts.Logger, eager: newEager(opts.Auth.ExternalURL),
		resolver:     opts.Resolver,
		loggedCauses: lru.New[string, struct{}](1000, time.Minute).WithCost(1<<20, lru.StringBytes[struct{}])}
	s.status = statusPages{s: s}
	s.hosts = newHostProxies(s)
	s.bodyGrace = bodyGrace
	s.declared = newDeclaredSizes(opts.MaxBlobSize)
	s.blobs, s.manifests, s.pushes, s.index, s.ops, s.pulls, s.verdicts = opts.Store, opts.Store, opts.Store, opts.Store, opts.Store, opts.Store, opts.Store
	if err := ValidateRepositories(opts.Repositories, opts.DefaultRepository); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	for _, r := range opts.Repositories {
		switch {
		case r.Kind != KindProxy:
		case len(r.Hosts) > 0 && (r.Upstream != nil || r.NewUpstream == nil):
			return nil, fmt.Errorf("server: proxy repository %q: hosts needs NewUpstream and no Upstream", r.Name)
		case r.ForwardNS && (r.Upstream == nil || r.NewUpstream == nil):
			return nil, fmt.Errorf("server: proxy repository %q: forward_ns needs Upstream and NewUpstream", r.Name)
		case len(r.Hosts) == 0 && r.Upstream == nil:
			return nil, fmt.Errorf("server: proxy repository %q has no upstream", r.Name)
		}
		rp := s.newRepo(r)
		s.repos[r.Name] = rp
		s.order = append(s.order, rp)
	}
	s.linkGroups()
	a, err := newAuth(opts.Auth)
	if err != nil {
		return nil, err
	}
	s.auth = a
	s.uploadLimit = &uploadLimiter{n: map[string]int{}, max: a.opts.MaxUploadsPerClient}
	s.m = newMetrics(opts.Registry, opts.Store)
	opts.Registry.MustRegister(newBudgetCollector(s), newHealthCollector(s), &endpointCollector{s: s, desc: prometheus.NewDesc("berth_upstream_url_offline",
		"1 while a URL of a proxy's urls is skipped after failing (offline_period).", []string{"repository", "url"}, nil)})
	for _, rp := range s.order {
		s.m.initRepository(rp.Name, rp.asProxy() != nil)
	}
	s.fetches = fetch.NewGroup(fetch.Config{Timeout: opts.FetchTimeout, Spawn: s.goSafe,
		NewTemp: func(ctx context.Context, alg string) (fetch.TempBlob, error) { return s.blobs.NewBlobWriter(ctx, alg) },
		OnStart: s.m.inflight.Inc, OnEnd: s.m.inflight.Dec,
		MaxActive: opts.MaxDownloads, PerClient: opts.MaxDownloadsPerClient, Grace: opts.AbandonGrace,
		Stored: func(ctx context.Context, d store.Digest) bool { _, err := s.blobs.StatBlob(ctx, d); return err == nil }})
	pruneVerdicts(s) // policies changed while berth was stopped
	return s, nil
}

// newRepo returns the runtime state of repository r; a proxy's upstream
// calls are observed for its health.
func (s *Server) newRepo(r Repository) *repo {
	rp := &repo{Repository: r, health: &upstreamHealth{},
		neg:       lru.New[string, time.Time](100_000, 0).WithCost(cacheBytes, lru.StringBytes[time.Time]),
		referrers: lru.New[string, referrersEntry](10_000, referrersKeep).WithCost(referrersBytes, referrersEntryBytes)}
	rp.kind, rp.access = s.newKind(rp), rp
	rp.impl = newGate(s, rp, rp.kind, r.Policy)
	if rp.asProxy() != nil && r.Upstream != nil {
		rp.Upstream = observedUpstream{Upstream: r.Upstream, h: rp.health}
	}
	return rp
}
