package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is berth's TOML configuration. Zero values mean the defaults
// noted on each field (applied by setDefaults).
type Config struct {
	DataDir           string `toml:"data_dir"`           // default "./berth-data"
	Listen            string `toml:"listen"`             // default ":5000"
	DefaultRepository string `toml:"default_repository"` // default: the first repository
	// AdminListen is where the operator endpoints (gc, ls, prefetch)
	// and the registry API with full rights are served for the berth
	// commands: "unix:PATH" or "HOST:PORT". Default: a mode-0600 Unix
	// socket, data_dir/admin.sock.
	AdminListen  string             `toml:"admin_listen"`
	TLSCert      string             `toml:"tls_cert"`
	TLSKey       string             `toml:"tls_key"`
	LogLevel     string             `toml:"log_level"`  // debug, info (default), warn, error
	LogFormat    string             `toml:"log_format"` // text (default) or json
	Storage      StorageConfig      `toml:"storage"`
	Limits       LimitsConfig       `toml:"limits"`
	Repositories []RepositoryConfig `toml:"repository"`
	Listeners    []ListenerConfig   `toml:"listener"`
	Auth         AuthConfig         `toml:"auth"`
	Users        []UserConfig       `toml:"user"`
	Prefetch     []PrefetchConfig   `toml:"prefetch"`
	Policies     []PolicyConfig     `toml:"policy"`
	Replicate    []ReplicateConfig  `toml:"replicate"`
	Audit        AuditConfig        `toml:"audit"`
	Webhooks     []WebhookConfig    `toml:"webhook"`
}

// PolicyConfig is one [[policy]]: what a repository that names it may
// serve, decided on manifest digests (internal/policy).
type PolicyConfig struct {
	Name         string   `toml:"name"`
	Default      string   `toml:"default"` // allow (default) or deny
	Allow        []string `toml:"allow"`
	Deny         []string `toml:"deny"`
	DenyTags     []string `toml:"deny_tags"`
	AllowDigests []string `toml:"allow_digests"`
	DenyDigests  []string `toml:"deny_digests"`
	// MinAge holds a digest berth has known for less than this (until
	// berth approve releases it).
	MinAge Duration `toml:"min_age"`
	// RequireSignature: only images with a valid cosign signature by one
	// of Keys or Keyless are served.
	RequireSignature bool            `toml:"require_signature"`
	Keys             []string        `toml:"keys"` // public key files (PEM: ECDSA, Ed25519, RSA)
	Keyless          []KeylessConfig `toml:"keyless"`
}

// KeylessConfig is one [[policy.keyless]]: a signer identity whose
// short-lived certificates the trusted root's authorities issued.
type KeylessConfig struct {
	TrustedRoot    string `toml:"trusted_root"` // a trusted_root.json file (Sigstore's format)
	Identity       string `toml:"identity"`     // the certificate's subject: an e-mail or URI
	IdentityRegexp string `toml:"identity_regexp"`
	Issuer         string `toml:"issuer"` // the OIDC issuer
	IssuerRegexp   string `toml:"issuer_regexp"`
}

// PrefetchConfig is one [[prefetch]]: images pulled into the cache at
// start and then every Every (zero: once).
type PrefetchConfig struct {
	Images       []string `toml:"images"`
	Platforms    []string `toml:"platforms"`
	AllPlatforms bool     `toml:"all_platforms"`
	// AllTags prefetches every tag of each image (names without a tag):
	// a read replica of a primary's hosted repository.
	AllTags bool     `toml:"all_tags"`
	Every   Duration `toml:"every"`
}

// AuthConfig is the [auth] table.
type AuthConfig struct {
	TokenTTL            Duration `toml:"token_ttl"`      // default 5m
	TokenKeyFile        string   `toml:"token_key_file"` // default data_dir/token.key, made at first start
	ExternalURL         string   `toml:"external_url"`   // base URL behind a reverse proxy
	TrustedProxies      []string `toml:"trusted_proxies"`
	Htpasswd            string   `toml:"htpasswd"` // bcrypt entries only
	MaxUploadsPerClient int      `toml:"max_uploads_per_client"`
}

// UserConfig is one [[user]]: grants, and a bcrypt hash unless the user
// is in the htpasswd file.
type UserConfig struct {
	Name         string   `toml:"name"`
	PasswordHash string   `toml:"password_hash"`
	Pull         []string `toml:"pull"`
	Push         []string `toml:"push"`
	Admin        bool     `toml:"admin"` // may approve held images from the status page
}

// StorageConfig limits the store.
type StorageConfig struct {
	MaxSize   Size    `toml:"max_size"`   // 0: no limit
	HighWater float64 `toml:"high_water"` // fraction of max_size; default 0.9
	LowWater  float64 `toml:"low_water"`  // default 0.8
	// UploadTTL is how long an unfinished push may sit idle before its
	// session and bytes are removed. Default 24h.
	UploadTTL Duration `toml:"upload_ttl"`
	// GCInterval is how often unreferenced blobs are collected online.
	// Default 1h.
	GCInterval Duration `toml:"gc_interval"`
	// GCGrace spares blobs younger than this (a push whose manifest has
	// not arrived yet). Default 1h.
	GCGrace Duration `toml:"gc_grace"`
}

// RepositoryConfig is one [[repository]].
type RepositoryConfig struct {
	Name         string   `toml:"name"`
	Kind         string   `toml:"kind"` // proxy | hosted | group
	URL          string   `toml:"url"`
	Username     string   `toml:"username"`
	Password     string   `toml:"password"` // ${ENV} is expanded
	PasswordFile string   `toml:"password_file"`
	TagTTL       Duration `toml:"tag_ttl"`       // default 1h
	NotFoundTTL  Duration `toml:"not_found_ttl"` // default 1m
	// URLs are several URLs of one upstream, tried in order (mirrors
	// first, the origin last); url is the one-URL form.
	URLs []string `toml:"urls"`
	// Hosts makes an allowlist proxy (instead of url): any registry whose
	// host matches one of these globs ("ghcr.io", "*.gcr.io"), chosen by
	// ?ns=<host> or a first path segment. HTTPHosts are spoken to over
	// plain HTTP. Hosts resolving to private addresses are refused unless
	// AllowPrivateNetworks. Credentials are per host.
	Hosts                []string           `toml:"hosts"`
	HTTPHosts            []string           `toml:"http_hosts"`
	AllowPrivateNetworks bool               `toml:"allow_private_networks"`
	Credentials          []CredentialConfig `toml:"credentials"`
	// EagerLayers starts the downloads of an image's config and layers
	// when its manifest is served, before the client asks (default true).
	EagerLayers *bool `toml:"eager_layers"`
	// A blob of more than RangeFetchMin bytes is fetched from upstream as
	// byte ranges of at most RangeFetchChunk (the first range is
	// RangeFetchMin long): RangeFetchParallel streams at first, up to
	// RangeFetchMaxParallel while the aggregate rate still rises with them
	// (never more than max_upstream_connections). Defaults 16MiB, 16MiB,
	// 4, 16; range_fetch_parallel = 1 fetches one stream per blob.
	RangeFetchMin         Size `toml:"range_fetch_min"`
	RangeFetchChunk       Size `toml:"range_fetch_chunk"`
	RangeFetchParallel    int  `toml:"range_fetch_parallel"`
	RangeFetchMaxParallel int  `toml:"range_fetch_max_parallel"`
	// ForwardNS passes a ?ns= no other proxy answers on to this proxy's
	// upstream, a mirror of many registries (a berth a tier up).
	ForwardNS bool `toml:"forward_ns"`
	// OfflinePeriod is how long a URL that failed gets no request. Default 1m.
	OfflinePeriod Duration `toml:"offline_period"`
	// ConnectTimeout bounds a connect and TLS handshake to the upstream.
	// Default 10s.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// UpstreamTimeout bounds the wait for an upstream's response headers
	// (each of up to 3 tries). Default 30s.
	UpstreamTimeout Duration `toml:"upstream_timeout"`
	// UpstreamIdleTimeout fails an upstream body that sends no byte for
	// this long. Default 60s.
	UpstreamIdleTimeout Duration `toml:"upstream_idle_timeout"`
	// MaxUpstreamConnections caps concurrent requests to the upstream (0:
	// no cap); MaxUpstreamBandwidth caps the bytes per second read from it
	// ("50MB/s"; 0: no cap). Neither slows what is served from the cache.
	MaxUpstreamConnections int      `toml:"max_upstream_connections"`
	MaxUpstreamBandwidth   Rate     `toml:"max_upstream_bandwidth"`
	ServeStale             *bool    `toml:"serve_stale"`    // default true
	AnonymousPull          *bool    `toml:"anonymous_pull"` // default true, false for hosted
	AnonymousPush          bool     `toml:"anonymous_push"` // hosted only; default false
	NSAliases              []string `toml:"ns_aliases"`
	// LibraryPrefix adds "library/" to one-segment names, as Docker Hub
	// needs. Default: true when the upstream host is Docker Hub's.
	LibraryPrefix *bool    `toml:"library_prefix"`
	Members       []string `toml:"members"`
	PushTo        string   `toml:"push_to"`
	// Policy names the [[policy]] that decides what this repository
	// serves ("": everything).
	Policy string `toml:"policy"`
	// ImmutableTags are globs of a hosted repository's tags that cannot
	// be moved or deleted once pushed.
	ImmutableTags []string `toml:"immutable_tags"`
	// Retention removes a hosted repository's old tags and untagged
	// manifests.
	Retention *RetentionConfig `toml:"retention"`
}

// CredentialConfig is an allowlist proxy's login for one registry host.
type CredentialConfig struct {
	Host         string `toml:"host"`
	Username     string `toml:"username"`
	Password     string `toml:"password"` // ${ENV} is expanded
	PasswordFile string `toml:"password_file"`
}

// upstreamURLs are the proxy's URLs: urls, or url.
func (r *RepositoryConfig) upstreamURLs() []string {
	if len(r.URLs) > 0 {
		return r.URLs
	}
	if r.URL != "" {
		return []string{r.URL}
	}
	return nil
}

// ListenerConfig binds another address to a repository.
type ListenerConfig struct {
	Listen     string `toml:"listen"`
	Repository string `toml:"repository"`
}

// defaultConfig is what `berth serve` runs with no config file: a Docker
// Hub proxy on :5000 with data in ./berth-data.
func defaultConfig() *Config {
	return &Config{
		Repositories: []RepositoryConfig{{Name: "dockerhub", Kind: "proxy", URL: "https://registry-1.docker.io"}},
	}
}

// loadConfig reads a TOML file. Unknown keys are errors naming the key.
func loadConfig(r io.Reader) (*Config, error) {
	text, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var c Config
	md, err := toml.Decode(string(text), &c)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		var raw map[string]any
		toml.Decode(string(text), &raw)
		return nil, unknownKeyError(und, raw)
	}
	return &c, nil
}

func loadConfigFile(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	c, err := loadConfig(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// setDefaults fills in defaults and validates, section by section;
// errors name the key.
func (c *Config) setDefaults() error {
	for _, check := range []func() error{
		c.setTopDefaults, c.Storage.setDefaults, c.Limits.check, c.setRepositoryDefaults, c.checkAuth,
		c.checkPrefetch, c.checkReplicate, c.checkHostedRules, c.checkWebhooks, c.checkListeners, c.checkFiles, c.checkGrants, c.checkPolicies,
	} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// setTopDefaults: data_dir, listen, TLS and logging.
func (c *Config) setTopDefaults() error {
	if c.DataDir == "" {
		c.DataDir = "./berth-data"
	}
	if c.Listen == "" {
		c.Listen = ":5000"
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("config: tls_cert and tls_key go together")
	}
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		return fmt.Errorf("config: log_format %q: want text or json", c.LogFormat)
	}
	return nil
}

// setDefaults: the [storage] table.
func (st *StorageConfig) setDefaults() error {
	if st.MaxSize < 0 {
		return errors.New("config: storage.max_size must not be negative")
	}
	if st.HighWater == 0 {
		st.HighWater = 0.9
	}
	if st.LowWater == 0 {
		st.LowWater = 0.8
	}
	if st.UploadTTL == 0 {
		st.UploadTTL = Duration(24 * time.Hour)
	}
	if st.GCInterval == 0 {
		st.GCInterval = Duration(time.Hour)
	}
	if st.GCGrace == 0 {
		st.GCGrace = Duration(time.Hour)
	}
	if st.HighWater <= 0 || st.HighWater > 1 || st.LowWater <= 0 || st.LowWater >= st.HighWater {
		return errors.New("config: storage: want 0 < low_water < high_water <= 1")
	}
	return nil
}

// hasRepository reports a [[repository]] named name.
func (c *Config) hasRepository(name string) bool {
	return slices.ContainsFunc(c.Repositories, func(r RepositoryConfig) bool { return r.Name == name })
}

// password returns the upstream password: password_file's first line, or
// password with ${ENV} references expanded.
func (r *RepositoryConfig) password() (string, error) {
	return readPassword(fmt.Sprintf("repository %q", r.Name), r.Password, r.PasswordFile)
}

// password returns the password of an allowlist proxy's host credentials.
func (c *CredentialConfig) password(repo string) (string, error) {
	return readPassword(fmt.Sprintf("repository %q: credentials for %s", repo, c.Host), c.Password, c.PasswordFile)
}

// readPassword returns file's first line, or password with ${ENV}
// references expanded; errors start with what.
func readPassword(what, password, file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s: password_file: %w", what, err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	var missing []string
	out := os.Expand(password, func(k string) string {
		v, ok := os.LookupEnv(k)
		if !ok {
			missing = append(missing, k)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("%s: password: environment variable(s) not set: %s", what, strings.Join(missing, ", "))
	}
	return out, nil
}

func ptr[T any](v T) *T { return &v }

// findCycle returns a path of group memberships that comes back to a group
// already on it, or nil.
