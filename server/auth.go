package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-registry/berth/internal/audit"

	"github.com/berth-registry/berth/internal/lru"
	"golang.org/x/crypto/bcrypt"
)

// User is an account with grants. Globs match "<repository>" (every image
// of it) or "<repository>/<image>", where a trailing "/*" matches every
// image below that prefix and path.Match wildcards work per segment. A
// push grant implies pull on the same names.
type User struct {
	Name         string
	PasswordHash []byte // bcrypt
	Pull, Push   []string
	Admin        bool // may approve held images from the status page
}

// AuthOptions configure access control.
type AuthOptions struct {
	Users []User
	// TokenKey signs tokens (HMAC-SHA256); at least 32 bytes.
	TokenKey []byte
	// TokenTTL is the lifetime of an issued token. Zero means 5m.
	TokenTTL time.Duration
	// Service is the token audience. Empty means "berth".
	Service string
	// ExternalURL is the base URL clients reach berth by (behind a
	// reverse proxy); the token realm is ExternalURL + "/token". Empty
	// means: from the request.
	ExternalURL string
	// TrustedProxies may set X-Forwarded-Proto and X-Forwarded-Host.
	TrustedProxies []*net.IPNet
	// MaxUploadsPerClient caps concurrent upload requests from one client
	// address. Zero means 32.
	MaxUploadsPerClient int
}

// Actions.
const (
	actionPull   = "pull"
	actionPush   = "push"
	actionDelete = "delete"
)

// principal is who makes a request: a user, or anonymous (user nil).
type principal struct {
	user     *User
	token    *tokenClaims // set when the request carried a bearer token
	internal bool         // berth itself (prefetch): every right
}

func (p principal) name() string {
	if p.user == nil {
		return ""
	}
	return p.user.Name
}

type auth struct {
	opts  AuthOptions
	users atomic.Pointer[map[string]*User] // swapped whole by SetUsers

	goodCreds *lru.Cache[[32]byte, struct{}] // sha256(user \x00 password) checked in the last minute; spares bcrypt on every request
	guard     *loginGuard                    // failed logins and bcrypt work (logins.go)
	dummies   atomic.Pointer[[][]byte]       // what unknown names are compared against
}

func newAuth(o AuthOptions) (*auth, error) {
	if o.TokenTTL <= 0 {
		o.TokenTTL = 5 * time.Minute
	}
	if o.Service == "" {
		o.Service = "berth"
	}
	if o.MaxUploadsPerClient <= 0 {
		o.MaxUploadsPerClient = 32
	}
	if len(o.TokenKey) < 32 {
		key := make([]byte, 32)
		rand.Read(key)
		o.TokenKey = key
	}
	a := &auth{opts: o, goodCreds: lru.New[[32]byte, struct{}](10_000, time.Minute), guard: newLoginGuard()}
	users, err := userMap(o.Users)
	if err != nil {
		return nil, err
	}
	a.setUsers(users)
	return a, nil
}

func (a *auth) setUsers(users map[string]*User) {
	d := dummyHashes(users)
	a.dummies.Store(&d)
	a.users.Store(&users)
}

// userMap indexes users by name, checking their hashes.
func userMap(list []User) (map[string]*User, error) {
	users := map[string]*User{}
	for i := range list {
		u := &list[i]
		if _, dup := users[u.Name]; dup {
			return nil, fmt.Errorf("server: duplicate user %q", u.Name)
		}
		if _, err := bcrypt.Cost(u.PasswordHash); err != nil {
			return nil, fmt.Errorf("server: user %q: password hash is not bcrypt", u.Name)
		}
		users[u.Name] = u
	}
	return users, nil
}

// user returns the user called name, or nil.
func (a *auth) user(name string) *User { return (*a.users.Load())[name] }

// SetUsers replaces the users and their grants (SIGHUP reload); checked
// passwords are forgotten, so a changed or removed password stops working
// at once. On error nothing changes.
func (s *Server) SetUsers(list []User) error {
	users, err := userMap(list)
	if err != nil {
		return err
	}
	s.auth.setUsers(users)
	s.auth.goodCreds.Purge()
	return nil
}

// checkPassword verifies user's password in constant time (bcrypt) and
// remembers a success for a minute. A failure is an *authError; a
// throttled client's (logins.go) carries when to come back, and no
// bcrypt ran for it.
func (a *auth) checkPassword(r *http.Request, name, password string) (*User, error) {
	u := a.user(name)
	key := sha256.Sum256([]byte(name + "\x00" + password))
	if _, cached := a.goodCreds.Get(key); cached && u != nil {
		return u, nil
	}
	addr := clientAddr(r)
	if wait := a.guard.locked(addr, name); wait > 0 {
		return nil, &authError{reason: failThrottled, user: name, retry: wait}
	}
	hash, reason := a.dummyFor(name), failUnknownUser
	if u != nil {
		hash, reason = u.PasswordHash, failBadPassword
	}
	ctx := context.Background()
	if r != nil {
		ctx = r.Context()
	}
	ok, err := a.guard.compare(ctx, hash, password)
	if err != nil {
		return nil, &authError{reason: failBusy, user: name, retry: time.Second}
	}
	if !ok || u == nil {
		a.guard.failed(addr, name)
		return nil, &authError{reason: reason, user: name}
	}
	a.goodCreds.Add(key, struct{}{})
	return u, nil
}

// dummyHash is compared against for unknown users; made on first use,
// so commands that never check a password do not pay for it.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("berth-dummy"), bcrypt.DefaultCost)
	return h
})

// errBadCredentials marks credentials that are malformed or wrong.
var errBadCredentials = errors.New("invalid credentials")

// errBadToken marks a bearer token that is malformed, forged or expired.
var errBadToken = fmt.Errorf("%w: bad token", errBadCredentials)

// authenticate reads the Authorization header: none (anonymous), Basic
// user:password, or Bearer <berth token>.
func (a *auth) authenticate(r *http.Request) (principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return principal{}, nil
	}
	scheme, cred, err := parseAuthorization(h)
	if err != nil {
		return principal{}, err
	}
	switch scheme {
	case "basic":
		name, pw, err := decodeBasic(cred)
		if err != nil {
			return principal{}, err
		}
		u, err := a.checkPassword(r, name, pw)
		if err != nil {
			return principal{}, err
		}
		return principal{user: u}, nil
	case "bearer":
		c, err := a.verifyToken(cred)
		if err != nil {
			return principal{}, fmt.Errorf("%w (%w)", errBadToken, err)
		}
		p := principal{token: c}
		if c.Subject != "" {
			if p.user = a.user(c.Subject); p.user == nil {
				return principal{}, fmt.Errorf("%w: token for an unknown user", errBadToken)
			}
		}
		return p, nil
	}
	return principal{}, fmt.Errorf("%w: unsupported scheme", errBadCredentials)
}

// parseAuthorization splits "Scheme credentials"; the scheme is returned
// lower case.
func parseAuthorization(h string) (scheme, cred string, err error) {
	if len(h) > 8192 {
		return "", "", fmt.Errorf("%w: header too long", errBadCredentials)
	}
	s, c, ok := strings.Cut(strings.TrimSpace(h), " ")
	c = strings.TrimSpace(c)
	if !ok || s == "" || c == "" {
		return "", "", fmt.Errorf("%w: malformed Authorization header", errBadCredentials)
	}
	return strings.ToLower(s), c, nil
}

func decodeBasic(cred string) (name, password string, err error) {
	raw, err := base64.StdEncoding.DecodeString(cred)
	if err != nil {
		return "", "", fmt.Errorf("%w: basic credentials are not base64", errBadCredentials)
	}
	name, password, ok := strings.Cut(string(raw), ":")
	if !ok || name == "" {
		return "", "", fmt.Errorf("%w: basic credentials need user:password", errBadCredentials)
	}
	return name, password, nil
}

// matchGlob reports whether grant glob g covers repository repo and image.
func matchGlob(g, repo, image string) bool {
	if g == "*" || g == "**" {
		return true
	}
	if !strings.Contains(g, "/") {
		ok, _ := path.Match(g, repo)
		return ok
	}
	target := repo + "/" + image
	if prefix, ok := strings.CutSuffix(g, "/*"); ok {
		if strings.HasPrefix(target, prefix+"/") {
			return true
		}
	}
	ok, _ := path.Match(g, target)
	return ok
}

func anyGlob(globs []string, repo, image string) bool {
	return slices.ContainsFunc(globs, func(g string) bool { return matchGlob(g, repo, image) })
}

// allowed reports whether p may do action on image of rp by the grants
// (tokens aside): anonymous by the repository's settings, users by their
// globs.
func allowed(p principal, rp *repo, image, action string) bool {
	if p.internal {
		return true
	}
	rp, image = rp.access, rp.grantPrefix+image
	if p.user == nil {
		switch action {
		case actionPull:
			return rp.AnonymousPull
		default:
			return rp.AnonymousPush
		}
	}
	// Signing in never takes a right away: what anyone may pull, a user
	// may pull too (a CI robot with push on "local" still pulls public
	// proxies through the same login, as on Docker Hub).
	return granted(p, rp, image, action) || (action == actionPull && rp.AnonymousPull)
}

// memberReadable reports whether p may read member m's content through
// group g: anonymous needs both to allow anonymous pulls; a user needs pull
// on the group or on the member.
func memberReadable(p principal, g, m *repo, image string) bool {
	if p.internal {
		return true
	}
	if g.AnonymousPull && m.AnonymousPull {
		return true // what anyone may read through g
	}
	if p.user == nil {
		return false
	}
	// A user's own grants on the group or the member; a group that is
	// public does not open its private members.
	mi := memberImage(m, image).name
	return granted(p, g, image, actionPull) || granted(p, m, mi, actionPull)
}

// granted reports p's own grants (users only), without what anonymous
// clients may do.
func granted(p principal, rp *repo, image, action string) bool {
	rp, image = rp.access, rp.grantPrefix+image
	if anyGlob(p.user.Push, rp.Name, image) {
		return true
	}
	return action == actionPull && anyGlob(p.user.Pull, rp.Name, image)
}

// actionFor is the action a request needs.
func actionFor(r *http.Request, rt route) string {
	switch {
	case r.Method == http.MethodDelete && rt.kind != routeUpload:
		return actionDelete
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		if rt.kind == routeUpload {
			return actionPush
		}
		return actionPull
	}
	return actionPush
}

// authorize decides a request to image of rp. It returns a 401 (no or bad
// credentials, or a token without the scope) or 403 (known principal
// without the right) regError, or nil.
func (s *Server) authorize(r *http.Request, p principal, rp *repo, image, clientName, action string) error {
	need := action
	if action == actionDelete {
		need = actionPush // deleting needs a push grant
	}
	ok := allowed(p, rp, image, need)
	if !ok && rp.asGroup() != nil && action == actionPull && p.user != nil {
		// A user may read through a group the members they may read.
		for _, m := range rp.members() {
			ok = ok || memberReadable(p, rp, m, image)
		}
	}
	if !ok {
		if p.user == nil {
			return s.challenge(r, clientName, action, "")
		}
		record(s, r.Context(), audit.Event{Action: audit.Denied, User: p.name(), Client: clientAddr(r), Repository: rp.Name, Image: image,
			Outcome: "refused", Detail: "may not " + action})
		return errf(codeDenied, "%s may not %s %s", p.name(), action, clientName)
	}
	if p.token != nil && !p.token.grants("repository", clientName, action) {
		return s.challenge(r, clientName, action, "insufficient_scope")
	}
	return nil
}

// challenge is a 401 naming the token realm and the scope to ask for.
func (s *Server) challenge(r *http.Request, name, action, errCode string) *regError {
	v := fmt.Sprintf(`Bearer realm=%q,service=%q`, s.realm(r), s.auth.opts.Service)
	if name != "" {
		actions := action
		if action == actionPush {
			actions = "pull,push"
		}
		v += fmt.Sprintf(`,scope="repository:%s:%s"`, name, actions)
	}
	if errCode != "" {
		v += fmt.Sprintf(`,error=%q`, errCode)
	}
	e := errf(codeUnauthorized, "authentication required")
	if errCode == "insufficient_scope" {
		e.Message = "token does not cover this request"
	}
	e.Header = http.Header{"Www-Authenticate": {v}}
	return e
}

// realm is the token endpoint clients are sent to.
func (s *Server) realm(r *http.Request) string {
	if s.auth.opts.ExternalURL != "" {
		return strings.TrimSuffix(s.auth.opts.ExternalURL, "/") + "/token"
	}
	scheme, host := "http", r.Host
	if r.TLS != nil {
		scheme = "https"
	}
	if s.trustedProxy(r) {
		if v := r.Header.Get("X-Forwarded-Proto"); v == "http" || v == "https" {
			scheme = v
		}
		if v := r.Header.Get("X-Forwarded-Host"); v != "" && !strings.ContainsAny(v, "/\"\\ ") {
			host = v
		}
	}
	return scheme + "://" + host + "/token"
}

func (s *Server) trustedProxy(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	for _, n := range s.auth.opts.TrustedProxies {
		if ip != nil && n.Contains(ip) {
			return true
		}
	}
	return false
}
