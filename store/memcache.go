package store

import (
	"sync"
	"sync/atomic"
)

// memCache keeps recently read manifests and tag records in memory so a
// warm manifest request does no file read and no JSON decoding. Entries
// are dropped when the index changes them: every commit that touches
// tags or manifests bumps version, and a read stores what it read only if
// no such commit happened meanwhile, so a stale entry can never be put
// back by a reader that raced a writer.
type memCache struct {
	version atomic.Uint64

	mu        sync.RWMutex
	manifests map[string]Manifest // repoKey(repo, digest)
	tags      map[string]TagInfo  // repoKey(repo, tag)
	bytes     int64
}

const (
	memCacheMaxBytes = 64 << 20
	memCacheMaxTags  = 200_000
)

func newMemCache() *memCache {
	return &memCache{manifests: map[string]Manifest{}, tags: map[string]TagInfo{}}
}

// invalidate is called (on commit) by every change to tags or manifests.
func (c *memCache) invalidate() {
	c.version.Add(1)
	c.mu.Lock()
	c.manifests = map[string]Manifest{}
	c.tags = map[string]TagInfo{}
	c.bytes = 0
	c.mu.Unlock()
}

func (c *memCache) manifest(k string) (Manifest, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	m, ok := c.manifests[k]
	return m, ok
}

func (c *memCache) tag(k string) (TagInfo, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	t, ok := c.tags[k]
	return t, ok
}

func (c *memCache) putManifest(k string, m Manifest, seen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.version.Load() != seen || int64(len(m.Body)) > memCacheMaxBytes/16 {
		return
	}
	if c.bytes+int64(len(m.Body)) > memCacheMaxBytes {
		c.manifests, c.bytes = map[string]Manifest{}, 0
	}
	c.manifests[k] = m
	c.bytes += int64(len(m.Body))
}

func (c *memCache) putTag(k string, t TagInfo, seen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.version.Load() != seen {
		return
	}
	if len(c.tags) >= memCacheMaxTags {
		c.tags = map[string]TagInfo{}
	}
	c.tags[k] = t
}
