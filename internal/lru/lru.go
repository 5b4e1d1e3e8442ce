// Package lru is the one bounded map of berth: a size cap, an optional
// cost cap, a time to live per entry and least-recently-used order. Every
// in-memory cache keyed by client input (negative answers, pending tags,
// group members, checked credentials, manifests) is one of these, so none
// of them can grow with the traffic.
package lru

import (
	"container/list"
	"sync"
	"time"
)

// Cache is a bounded map safe for concurrent use. The zero value is not
// usable; call New.
type Cache[K comparable, V any] struct {
	mu      sync.Mutex
	max     int
	maxCost int64
	cost    func(K, V) int64
	onEvict func(K, V)
	ttl     time.Duration
	now     func() time.Time

	ll    *list.List // front: most recently used
	m     map[K]*list.Element
	total int64 // summed cost of the entries
}

type entry[K comparable, V any] struct {
	key  K
	val  V
	exp  time.Time // zero: never expires
	cost int64
}

// New returns a cache of at most max entries (at least 1) whose entries
// expire ttl after they were added (zero: never).
func New[K comparable, V any](size int, ttl time.Duration) *Cache[K, V] {
	return &Cache[K, V]{max: max(1, size), ttl: ttl, now: time.Now, ll: list.New(), m: map[K]*list.Element{}}
}

// WithCost caps the summed cost of the entries at maxCost as well; cost
// tells the cost of one entry (the bytes of its key and value, say). An
// entry costing more than maxCost is not kept. Call it before first use.
func (c *Cache[K, V]) WithCost(maxCost int64, cost func(K, V) int64) *Cache[K, V] {
	c.maxCost, c.cost = maxCost, cost
	return c
}

// StringBytes is a cost function for caches keyed by client input: the
// bytes of the key and a fixed overhead per entry, so that a cache of
// long keys holds fewer of them.
func StringBytes[V any](k string, _ V) int64 { return int64(len(k)) + entryOverhead }

// entryOverhead is what one entry costs besides its key and value: the
// list element, the map slot and the entry struct, roughly.
const entryOverhead = 128

// WithEvict calls f with each entry pushed out by the caps (not those
// removed, taken, expired or replaced), after the cache's lock is
// released: a host proxy's connections are closed that way. Call it
// before first use.
func (c *Cache[K, V]) WithEvict(f func(K, V)) *Cache[K, V] {
	c.onEvict = f
	return c
}

// Values returns the live entries' values, most recently used first.
func (c *Cache[K, V]) Values() []V {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	out := make([]V, 0, c.ll.Len())
	for el := c.ll.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*entry[K, V]); e.exp.IsZero() || now.Before(e.exp) {
			out = append(out, e.val)
		}
	}
	return out
}

// evicted holds the entries the caps pushed out, for onEvict.
type evicted[K comparable, V any] []*entry[K, V]

func (c *Cache[K, V]) notify(ev evicted[K, V]) {
	if c.onEvict == nil {
		return
	}
	for _, e := range ev {
		c.onEvict(e.key, e.val)
	}
}

// Get returns the value of k and marks it most recently used. An expired
// entry is removed and reported missing.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lookupLocked(k)
	if !ok {
		var zero V
		return zero, false
	}
	c.ll.MoveToFront(e)
	return e.Value.(*entry[K, V]).val, true
}

// Add sets k to v with the cache's time to live.
func (c *Cache[K, V]) Add(k K, v V) { c.AddTTL(k, v, c.ttl) }

// AddTTL sets k to v, expiring after ttl (zero: never), and evicts the
// least recently used entries past the caps.
func (c *Cache[K, V]) AddTTL(k K, v V, ttl time.Duration) {
	c.mu.Lock()
	ev := c.addLocked(k, v, ttl)
	c.mu.Unlock()
	c.notify(ev)
}

func (c *Cache[K, V]) addLocked(k K, v V, ttl time.Duration) (ev evicted[K, V]) {
	var cost int64
	if c.cost != nil {
		cost = c.cost(k, v)
		if cost > c.maxCost {
			c.removeLocked(k)
			return nil
		}
	}
	var exp time.Time
	if ttl > 0 {
		exp = c.now().Add(ttl)
	}
	if el, ok := c.m[k]; ok {
		e := el.Value.(*entry[K, V])
		c.total += cost - e.cost
		e.val, e.exp, e.cost = v, exp, cost
		c.ll.MoveToFront(el)
	} else {
		c.m[k] = c.ll.PushFront(&entry[K, V]{key: k, val: v, exp: exp, cost: cost})
		c.total += cost
	}
	for c.ll.Len() > c.max || (c.cost != nil && c.total > c.maxCost) {
		back := c.ll.Back()
		c.removeElementLocked(back)
		if c.onEvict != nil {
			ev = append(ev, back.Value.(*entry[K, V]))
		}
	}
	return ev
}

// Update sets k to f(old, found) atomically, with the cache's time to
// live (renewed).
func (c *Cache[K, V]) Update(k K, f func(old V, found bool) V) {
	c.mu.Lock()
	var old V
	e, ok := c.lookupLocked(k)
	if ok {
		old = e.Value.(*entry[K, V]).val
	}
	ev := c.addLocked(k, f(old, ok), c.ttl)
	c.mu.Unlock()
	c.notify(ev)
}

// Take returns the value of k and removes it.
func (c *Cache[K, V]) Take(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lookupLocked(k)
	if !ok {
		var zero V
		return zero, false
	}
	c.removeElementLocked(e)
	return e.Value.(*entry[K, V]).val, true
}

// Purge forgets every entry.
func (c *Cache[K, V]) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	c.m = map[K]*list.Element{}
	c.total = 0
}

// Remove forgets k.
func (c *Cache[K, V]) Remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked(k)
}

// Len is the number of entries, expired ones not yet dropped included.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// Cost is the summed cost of the entries.
func (c *Cache[K, V]) Cost() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Cap is the most entries the cache holds.
func (c *Cache[K, V]) Cap() int { return c.max }

func (c *Cache[K, V]) lookupLocked(k K) (*list.Element, bool) {
	el, ok := c.m[k]
	if !ok {
		return nil, false
	}
	if e := el.Value.(*entry[K, V]); !e.exp.IsZero() && !c.now().Before(e.exp) {
		c.removeElementLocked(el)
		return nil, false
	}
	return el, true
}

func (c *Cache[K, V]) removeLocked(k K) {
	if el, ok := c.m[k]; ok {
		c.removeElementLocked(el)
	}
}

func (c *Cache[K, V]) removeElementLocked(el *list.Element) {
	e := el.Value.(*entry[K, V])
	c.ll.Remove(el)
	delete(c.m, e.key)
	c.total -= e.cost
}
