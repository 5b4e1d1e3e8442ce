package server

import (
	"sync/atomic"
	"time"

	"github.com/berth-registry/berth/internal/lru"
)

// repo is a configured repository with what berth keeps of it while
// running.
type repo struct {
	Repository
	health    *upstreamHealth                    // proxy: what real requests said of the upstream
	neg       *lru.Cache[string, time.Time]      // upstream 404s → fresh until (kept negKeep, for stale answers)
	referrers *lru.Cache[string, referrersEntry] // proxy: "<path>@<digest>?<artifactType>" → the upstream's referrers
	kind      repository                         // what it does: a *proxy, *hosted or *group
	impl      repository                         // the kind as served: behind its gate (policy.go)
	// Whose access rules and grants decide requests here: the repository
	// itself, or for a per-host proxy its allowlist repository, whose
	// grants name "<host>/<image>" (grantPrefix). hostKey: a per-host
	// proxy's key in the host table ("" for a configured repository).
	access      *repo
	grantPrefix string
	hostKey     string
	noRanges    atomic.Bool // proxy: the upstream answered a range request otherwise
	// proxy: how long the last manifest GET took the upstream to answer
	// (ns, auth round trips included): eager layers start wide after a
	// slow one.
	manifestAnswer atomic.Int64
}

// rememberNotFound keeps an upstream 404 for not_found_ttl.
func (rp *repo) rememberNotFound(key string) {
	if rp.NotFoundTTL > 0 {
		rp.neg.AddTTL(key, time.Now().Add(rp.NotFoundTTL), max(rp.NotFoundTTL, negKeep))
	}
}

// negKeep is how long an upstream 404 is kept to be answered again, stale,
// while the upstream is down (a client that saw "not found" should not see
// "unavailable" for the same name: oras falls back to the tag schema on the
// one and gives up on the other).
const negKeep = time.Hour

// notFound reports a remembered upstream 404.
func (rp *repo) notFound(key string) bool {
	until, ok := rp.neg.Get(key)
	return ok && time.Now().Before(until)
}

// staleNotFound reports an upstream 404 remembered past its not_found_ttl.
func (rp *repo) staleNotFound(key string) bool {
	_, ok := rp.neg.Get(key)
	return ok
}
