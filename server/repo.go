package server

import (
	"slices"
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
	pending   *lru.Cache[string, pendingTag]     // "<path>@<digest>" → tags an upstream HEAD named
	referrers *lru.Cache[string, referrersEntry] // proxy: "<path>@<digest>?<artifactType>" → the upstream's referrers
	leaves    []*repo                            // group: proxy and hosted members, nested groups flattened, in order
	parent    *repo                              // a per-host proxy: the allowlist repository that made it
	served    *lru.Cache[string, *repo]          // group: which member served an image's manifest
	noRanges  atomic.Bool                        // proxy: the upstream answered a range request otherwise
	// proxy: how long the last manifest GET took the upstream to answer
	// (ns, auth round trips included): eager layers start wide after a
	// slow one.
	manifestAnswer atomic.Int64
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

// pendingTagBytes is what a pending tag entry costs in its cache.
func pendingTagBytes(k string, pt pendingTag) int64 {
	n := int64(len(k)) + 128
	for _, t := range pt.tags {
		n += int64(len(t)) + 16
	}
	return n
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
