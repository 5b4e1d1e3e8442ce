// Package fakehub is a Docker Hub stand-in for tests: a registry (any
// http.Handler, usually go-containerregistry's pkg/registry or a reverse
// proxy to distribution's) behind Hub's manners. It demands bearer tokens
// from a token endpoint on a separate host, sends ratelimit headers on
// manifest answers, counts the budget down on manifest GETs only (HEADs are
// free, as on Hub) and answers 429 with Retry-After once it is spent.
// Everything it is asked is counted.
package fakehub

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Hub is a fake Docker Hub. Set the fields before Start.
type Hub struct {
	// Backend is the registry behind the hub.
	Backend http.Handler
	// Limit is the pulls per Window; 0 sends no ratelimit headers.
	Limit  int
	Window time.Duration
	// RetryAfter is the Retry-After of a 429, in seconds.
	RetryAfter int
	// TokenTTL is the expires_in of tokens (0: 300s).
	TokenTTL time.Duration

	mu         sync.Mutex
	remaining  int
	tokenFail  int // status the token endpoint answers instead of a token
	tokens     map[string]time.Time
	scopes     map[string]int // token requests per scope
	requests   int            // requests to the registry host
	manifestGs int            // manifest GETs that counted
	inflight   int
	maxFlight  int

	reg, realm *httptest.Server
}

// Start serves the registry and the token realm on two loopback servers.
func (h *Hub) Start() {
	h.remaining = h.Limit
	h.tokens, h.scopes = map[string]time.Time{}, map[string]int{}
	if h.TokenTTL == 0 {
		h.TokenTTL = 300 * time.Second
	}
	h.realm = httptest.NewServer(http.HandlerFunc(h.token))
	h.reg = httptest.NewServer(http.HandlerFunc(h.serve))
}

// Close stops both servers.
func (h *Hub) Close() {
	h.reg.Close()
	h.realm.Close()
}

// URL is the registry's base URL (http://127.0.0.1:port).
func (h *Hub) URL() string { return h.reg.URL }

// Host is the registry's host:port.
func (h *Hub) Host() string { return strings.TrimPrefix(h.reg.URL, "http://") }

// SetRemaining sets the pulls left (to spend or renew the budget).
func (h *Hub) SetRemaining(n int) { h.mu.Lock(); h.remaining = n; h.mu.Unlock() }

// SetTokenFailure makes the token endpoint answer status (0: tokens again).
func (h *Hub) SetTokenFailure(status int) { h.mu.Lock(); h.tokenFail = status; h.mu.Unlock() }

// Stats is what the hub was asked.
type Stats struct {
	Requests      int            // to the registry host, any path
	ManifestGETs  int            // that counted against the budget
	Remaining     int            // pulls left
	TokenRequests map[string]int // per scope
	MaxInFlight   int            // most concurrent registry requests seen
}

// Stats returns a snapshot of the counters.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	sc := map[string]int{}
	for k, v := range h.scopes {
		sc[k] = v
	}
	return Stats{Requests: h.requests, ManifestGETs: h.manifestGs, Remaining: h.remaining, TokenRequests: sc, MaxInFlight: h.maxFlight}
}

func (h *Hub) token(w http.ResponseWriter, r *http.Request) {
	scope := strings.Join(r.URL.Query()["scope"], " ")
	h.mu.Lock()
	h.scopes[scope]++
	fail := h.tokenFail
	h.mu.Unlock()
	if fail != 0 {
		if fail == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", strconv.Itoa(max(h.RetryAfter, 1)))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(fail)
		fmt.Fprintf(w, `{"details":"token endpoint says %d"}`, fail)
		return
	}
	var b [12]byte
	rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	h.mu.Lock()
	h.tokens[tok] = time.Now().Add(h.TokenTTL)
	h.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": int(h.TokenTTL.Seconds())})
}

func (h *Hub) serve(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.requests++
	h.inflight++
	h.maxFlight = max(h.maxFlight, h.inflight)
	h.mu.Unlock()
	defer func() { h.mu.Lock(); h.inflight--; h.mu.Unlock() }()

	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	h.mu.Lock()
	exp, ok := h.tokens[tok]
	h.mu.Unlock()
	if !ok || time.Now().After(exp) {
		name := strings.TrimPrefix(r.URL.Path, "/v2/")
		for _, sep := range []string{"/manifests/", "/blobs/", "/tags/"} {
			if i := strings.Index(name, sep); i >= 0 {
				name = name[:i]
			}
		}
		// The realm is on another host, as auth.docker.io is: "localhost"
		// (a name; go-containerregistry refuses realms on private IP
		// literals other than the registry's own host).
		ch := fmt.Sprintf(`Bearer realm="%s/token",service="fakehub"`, strings.Replace(h.realm.URL, "127.0.0.1", "localhost", 1))
		if name != "" && name != r.URL.Path {
			ch += fmt.Sprintf(`,scope="repository:%s:pull"`, name)
		}
		w.Header().Set("Www-Authenticate", ch)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if h.Limit > 0 && strings.Contains(r.URL.Path, "/manifests/") {
		h.mu.Lock()
		spent := h.remaining <= 0
		if !spent && r.Method == http.MethodGet {
			h.remaining--
			h.manifestGs++
		}
		left := h.remaining
		h.mu.Unlock()
		w.Header().Set("Ratelimit-Limit", fmt.Sprintf("%d;w=%d", h.Limit, int(h.Window.Seconds())))
		w.Header().Set("Ratelimit-Remaining", fmt.Sprintf("%d;w=%d", left, int(h.Window.Seconds())))
		w.Header().Set("Docker-Ratelimit-Source", "127.0.0.1")
		if spent && r.Method == http.MethodGet {
			w.Header().Set("Retry-After", strconv.Itoa(h.RetryAfter))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprint(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}`)
			return
		}
	}
	h.Backend.ServeHTTP(w, r)
}
