package store

import (
	"sync"
	"sync/atomic"

	"github.com/berth-registry/berth/internal/lru"
	bolt "go.etcd.io/bbolt"
)

// memCache keeps recently read manifests and tag records in memory so a
// warm manifest request does no file read and no JSON decoding. A commit
// that changes a tag or a manifest forgets exactly those keys, and bumps
// version: a read stores what it read only if no commit forgot anything
// meanwhile, so a stale entry can never be put back by a reader that raced
// a writer.
type memCache struct {
	version atomic.Uint64

	mu        sync.Mutex                   // orders put against forget
	manifests *lru.Cache[string, Manifest] // repoKey(repo, digest)
	tags      *lru.Cache[string, TagInfo]  // repoKey(repo, tag)
}

const (
	memCacheMaxBytes     = 64 << 20
	memCacheMaxManifests = 50_000
	memCacheMaxTags      = 200_000
	memCacheMaxTagBytes  = 16 << 20
)

func newMemCache() *memCache {
	return &memCache{
		manifests: lru.New[string, Manifest](memCacheMaxManifests, 0).
			WithCost(memCacheMaxBytes, func(k string, m Manifest) int64 { return lru.StringBytes(k, m) + int64(len(m.Body)) }),
		tags: lru.New[string, TagInfo](memCacheMaxTags, 0).WithCost(memCacheMaxTagBytes, lru.StringBytes[TagInfo]),
	}
}

// forgetOnCommit drops keys (repoKey values of tags or manifests) once tx
// commits.
func (c *memCache) forgetOnCommit(tx *bolt.Tx, keys ...[]byte) {
	ks := make([]string, len(keys))
	for i, k := range keys {
		ks[i] = string(k)
	}
	tx.OnCommit(func() { c.forget(ks...) })
}

func (c *memCache) forget(keys ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.version.Add(1)
	for _, k := range keys {
		c.manifests.Remove(k)
		c.tags.Remove(k)
	}
}

func (c *memCache) manifest(k string) (Manifest, bool) { return c.manifests.Get(k) }

func (c *memCache) tag(k string) (TagInfo, bool) { return c.tags.Get(k) }

func (c *memCache) putManifest(k string, m Manifest, seen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.version.Load() == seen && int64(len(m.Body)) <= memCacheMaxBytes/16 {
		c.manifests.Add(k, m)
	}
}

func (c *memCache) putTag(k string, t TagInfo, seen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.version.Load() == seen {
		c.tags.Add(k, t)
	}
}
