package server

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/berth-registry/berth/internal/audit"

	"github.com/berth-registry/berth/internal/lru"
	"golang.org/x/crypto/bcrypt"
)

// Logins cost what they must and no more. A wrong password is logged
// (user, client address, reason) and counted in
// berth_auth_failures_total{reason}; after loginMaxPerAddr failures from
// one address, or loginMaxPerUser for one user name from anywhere, within
// loginWindow of each other, that address or name is answered 429 with
// Retry-After for loginLockout without running bcrypt. bcrypt itself runs
// in a few slots (half the CPUs, at least one): a flood of bad passwords
// queues there, up to loginQueue waiters, and cannot take the CPUs that
// serve cache hits; past the queue it is 429 too. A name that is not a
// user costs a bcrypt comparison at the cost of a configured user's
// hash, so its time does not tell that it is unknown.

const (
	loginWindow     = time.Minute
	loginLockout    = time.Minute
	loginMaxPerAddr = 10
	loginMaxPerUser = 30
	loginQueue      = 64
	loginQueueWait  = 5 * time.Second
	// The failure tables' bounds: entries and bytes (keys are client
	// input, names up to the header cap).
	loginTableEntries = 10_000
	loginTableBytes   = 4 << 20
)

// Reasons of berth_auth_failures_total.
const (
	failUnknownUser = "unknown_user"
	failBadPassword = "bad_password"
	failMalformed   = "malformed"
	failBadToken    = "bad_token"
	failThrottled   = "throttled"
	failBusy        = "busy"
)

// authError is a failed sign-in: why, and for whom.
type authError struct {
	reason string
	user   string
	retry  time.Duration // throttled or busy: when to come back
}

func (e *authError) Error() string {
	if e.user != "" {
		return fmt.Sprintf("%v: %s for user %q", errBadCredentials, e.reason, truncate(e.user, 64))
	}
	return fmt.Sprintf("%v: %s", errBadCredentials, e.reason)
}

func (e *authError) Unwrap() error { return errBadCredentials }

// failures counts a key's recent failed logins.
type failures struct {
	n     int
	until time.Time // locked until
}

// loginGuard is the state behind the rules above.
type loginGuard struct {
	byAddr, byUser *lru.Cache[string, failures]
	slots          chan struct{} // bcrypt work under way
	queue          chan struct{} // callers waiting for a slot, and those in one
	key            [32]byte      // picks an unknown name's cost
	now            func() time.Time
}

func newLoginGuard() *loginGuard {
	n := max(1, runtime.GOMAXPROCS(0)/2)
	g := &loginGuard{
		byAddr: lru.New[string, failures](loginTableEntries, loginWindow).WithCost(loginTableBytes, lru.StringBytes[failures]),
		byUser: lru.New[string, failures](loginTableEntries, loginWindow).WithCost(loginTableBytes, lru.StringBytes[failures]),
		slots:  make(chan struct{}, n),
		queue:  make(chan struct{}, loginQueue+n),
		now:    time.Now,
	}
	rand.Read(g.key[:])
	return g
}

// clientAddr is the client's IP address, the key of its failures.
func clientAddr(r *http.Request) string {
	if r == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// locked returns how long addr or user must wait, 0 when they need not.
func (g *loginGuard) locked(addr, user string) time.Duration {
	now := g.now()
	var wait time.Duration
	for _, c := range []struct {
		t *lru.Cache[string, failures]
		k string
	}{{g.byAddr, addr}, {g.byUser, user}} {
		if c.k == "" {
			continue
		}
		if f, ok := c.t.Get(c.k); ok && f.until.After(now) {
			wait = max(wait, f.until.Sub(now))
		}
	}
	return wait
}

// failed counts a wrong password for addr and user.
func (g *loginGuard) failed(addr, user string) {
	now := g.now()
	count := func(t *lru.Cache[string, failures], k string, limit int) {
		if k == "" {
			return
		}
		t.Update(k, func(f failures, _ bool) failures {
			f.n++
			if f.n >= limit {
				f.until, f.n = now.Add(loginLockout), 0
			}
			return f
		})
	}
	count(g.byAddr, addr, loginMaxPerAddr)
	count(g.byUser, user, loginMaxPerUser)
}

// compare runs bcrypt in a slot, waiting in the queue when the slots are
// taken; errLoginBusy when the queue is full or the wait too long.
func (g *loginGuard) compare(ctx context.Context, hash []byte, password string) (bool, error) {
	select {
	case g.queue <- struct{}{}:
	default:
		return false, errLoginBusy
	}
	defer func() { <-g.queue }()
	t := time.NewTimer(loginQueueWait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
	case <-t.C:
		return false, errLoginBusy
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-g.slots }()
	return bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil, nil
}

var errLoginBusy = errors.New("too many password checks under way")

// dummyFor returns the hash an unknown name is compared against: one of
// the configured users' costs, picked by a keyed hash of the name (the
// same name always costs the same), so that an unknown name takes as long
// as a known one.
func (a *auth) dummyFor(name string) []byte {
	d := *a.dummies.Load()
	if len(d) == 0 {
		return dummyHash()
	}
	m := hmac.New(sha256.New, a.guard.key[:])
	m.Write([]byte(name))
	i := binary.BigEndian.Uint64(m.Sum(nil)) % uint64(len(d))
	return d[i]
}

// dummyHashes makes one dummy hash per distinct cost among users, in the
// proportions the costs have (a list of each user's cost, deduplicated
// hashes shared).
func dummyHashes(users map[string]*User) [][]byte {
	byCost := map[int][]byte{}
	var out [][]byte
	names := make([]string, 0, len(users))
	for n := range users {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		c, err := bcrypt.Cost(users[n].PasswordHash)
		if err != nil {
			continue
		}
		h, ok := byCost[c]
		if !ok {
			h, _ = bcrypt.GenerateFromPassword([]byte("berth-dummy"), c)
			byCost[c] = h
		}
		out = append(out, h)
	}
	return out
}

// loginFailed is the answer to a request whose credentials failed: 429
// with Retry-After when the client is throttled, else fallback (a
// challenge). Every failure is logged and counted once, here.
func (s *Server) loginFailed(r *http.Request, err error, fallback error) error {
	reason, user := failMalformed, ""
	var ae *authError
	if errors.As(err, &ae) {
		reason, user = ae.reason, ae.user
	} else if errors.Is(err, errBadToken) {
		reason = failBadToken
	}
	s.m.authFailures.WithLabelValues(reason).Inc()
	s.log.Warn("login failed", "user", truncate(user, 64), "remote", clientAddr(r), "reason", reason, "path", truncate(r.URL.Path, 200))
	record(s, r.Context(), audit.Event{Action: audit.LoginFailed, User: truncate(user, 64), Client: clientAddr(r), Outcome: "refused", Detail: reason})
	if ae != nil && ae.retry > 0 {
		return &regError{Code: codeTooManyRequests, Message: "too many failed logins or password checks; try again later",
			Header: http.Header{"Retry-After": {strconv.Itoa(int(max(1, ae.retry.Round(time.Second)/time.Second)))}}}
	}
	return fallback
}
