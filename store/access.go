package store

import (
	"context"
	"time"

	bolt "go.etcd.io/bbolt"
)

// accessEntry is a blob's last access (for eviction) and, for a
// manifest, the pulls counted since the last flush and when the last was.
type accessEntry struct {
	last     int64 // unix nanos
	pulls    int64
	lastPull int64 // unix nanos; 0: none since the last flush
}

// touch records a read of d: its last access, which eviction orders by.
func (al *accessLog) touch(d Digest) {
	s := al.s
	now := time.Now().UnixNano()
	s.accessMu.Lock()
	e := s.access[d.String()]
	e.last = now
	s.access[d.String()] = e
	s.accessMu.Unlock()
}

// Pulled counts a client's pull of manifest d (a GET, not a HEAD, not
// berth's own prefetch): berth ls and the status page show the count
// and when the last pull was. Nothing is written to the index until the
// next flush.
func (al *accessLog) Pulled(ctx context.Context, d Digest) {
	s := al.s
	now := time.Now().UnixNano()
	s.accessMu.Lock()
	e := s.access[d.String()]
	e.last, e.pulls, e.lastPull = now, e.pulls+1, now
	s.access[d.String()] = e
	s.accessMu.Unlock()
}

func (al *accessLog) flushLoop(every time.Duration) {
	s := al.s
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.guarded("access-time flush", s.flushAccess)
		}
	}
}

// flushAccess writes the access times gathered since the last flush in one
// transaction.
func (al *accessLog) flushAccess() {
	s := al.s
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.accessMu.Lock()
	pending := s.access
	s.access = map[string]accessEntry{}
	s.accessMu.Unlock()
	if len(pending) == 0 {
		return
	}
	retry := map[string]accessEntry{}
	defer func() {
		s.accessMu.Lock()
		for k, e := range retry {
			n := s.access[k]
			n.pulls += e.pulls
			n.last, n.lastPull = max(n.last, e.last), max(n.lastPull, e.lastPull)
			s.access[k] = n
		}
		s.accessMu.Unlock()
	}()
	err := s.db.Update(func(tx *bolt.Tx) error {
		blobs, acc := tx.Bucket(bucketBlobs), tx.Bucket(bucketAccess)
		for k, e := range pending {
			if blobs.Get([]byte(k)) == nil {
				// Evicted or deleted since, or a manifest whose commit is
				// still under way (a cold pull answers before it): kept
				// for the next flush while it is young.
				if time.Since(time.Unix(0, e.last)) < time.Minute {
					retry[k] = e
				}
				continue
			}
			// last access, pulls, last pull: 8 bytes each (older stores
			// have the first two).
			old := acc.Get([]byte(k))
			var pulls, lastPull int64
			if len(old) >= 16 {
				pulls = decodeInt(old[8:16])
			}
			if len(old) >= 24 {
				lastPull = decodeInt(old[16:24])
			}
			if e.lastPull != 0 {
				lastPull = e.lastPull
			}
			if e.last == 0 && len(old) >= 8 {
				e.last = decodeInt(old[:8])
			}
			v := append(append(encodeInt(e.last), encodeInt(pulls+e.pulls)...), encodeInt(lastPull)...)
			if err := acc.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Error("flush access times", "err", err)
	}
}

// Pulls returns how often clients pulled manifest d (flushed and not
// yet flushed) and when they last did (zero: never).
func (al *accessLog) Pulls(ctx context.Context, d Digest) (n int64, last time.Time) {
	s := al.s
	s.flushMu.RLock()
	defer s.flushMu.RUnlock()
	s.accessMu.Lock()
	e := s.access[d.String()]
	s.accessMu.Unlock()
	n = e.pulls
	lastPull := e.lastPull
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketAccess).Get([]byte(d.String()))
		if len(v) >= 16 {
			n += decodeInt(v[8:16])
		}
		if len(v) >= 24 && lastPull == 0 {
			lastPull = decodeInt(v[16:24])
		}
		return nil
	})
	if err != nil {
		s.log.Warn("read pull count", "digest", d, "err", err)
	}
	if lastPull != 0 {
		last = time.Unix(0, lastPull)
	}
	return n, last
}

// LastAccess returns when d was last read, or its creation time when it
// was never read. It includes access times not yet flushed.
func (al *accessLog) LastAccess(ctx context.Context, d Digest) (time.Time, error) {
	s := al.s
	s.flushMu.RLock()
	defer s.flushMu.RUnlock()
	s.accessMu.Lock()
	e, ok := s.access[d.String()]
	s.accessMu.Unlock()
	if ok && e.last != 0 {
		return time.Unix(0, e.last), nil
	}
	var out time.Time
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, err := getBlob(tx, d)
		if err != nil {
			return err
		}
		out = time.Unix(0, rec.Created)
		if v := tx.Bucket(bucketAccess).Get([]byte(d.String())); len(v) >= 8 {
			out = time.Unix(0, decodeInt(v[:8]))
		}
		return nil
	})
	return out, err
}
