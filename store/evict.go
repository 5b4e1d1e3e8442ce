package store

import (
	"encoding/json"
	"sort"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// counters are running totals for metrics.
type counters struct {
	evictions    atomic.Int64
	evictedBytes atomic.Int64
	gcRuns       atomic.Int64
	gcBlobs      atomic.Int64
	gcBytes      atomic.Int64
	panics       atomic.Int64
}

// Counters is a snapshot of the store's running totals.
type Counters struct {
	Evictions, EvictedBytes       int64
	GCRuns, GCBlobs, GCFreedBytes int64
	// Panics recovered in the store's background loops.
	Panics int64
}

// Counters returns the eviction and GC totals since start.
func (ev *evictor) Counters() Counters {
	s := ev.s
	return Counters{
		Evictions: s.counters.evictions.Load(), EvictedBytes: s.counters.evictedBytes.Load(),
		GCRuns: s.counters.gcRuns.Load(), GCBlobs: s.counters.gcBlobs.Load(), GCFreedBytes: s.counters.gcBytes.Load(),
		Panics: s.counters.panics.Load(),
	}
}

// used is what counts toward max_size: the stored bytes and the bytes of
// downloads and pushes in progress in tmp/.
func (ev *evictor) used() int64 { return ev.s.bytes.Load() + ev.s.tmpBytes.Load() }

// TempBytes is the bytes of blobs being written in tmp/.
func (ev *evictor) TempBytes() int64 { return ev.s.tmpBytes.Load() }

// maybeEvict wakes the evictor when the store is above its high-water
// mark. It never blocks.
func (ev *evictor) maybeEvict() {
	s := ev.s
	if s.opts.MaxSize <= 0 || s.opts.ManualEviction || float64(s.used()) <= s.opts.HighWater*float64(s.opts.MaxSize) {
		return
	}
	select {
	case s.evictc <- struct{}{}:
	default:
	}
}

func (ev *evictor) evictLoop() {
	s := ev.s
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			return
		case <-s.evictc:
			s.guarded("eviction", func() {
				n, freed, err := s.Evict()
				if err != nil {
					s.log.Error("eviction", "err", err)
				} else if n > 0 {
					s.log.Info("evicted cached content", "blobs", n, "bytes", freed, "store_bytes", s.bytes.Load())
				}
			})
		}
	}
}

type candidate struct {
	digest string
	size   int64
	access int64
}

// Evict, when the store is above its high-water mark, removes
// least-recently-used cached content until it is at its low-water mark: proxy manifests and blobs, never hosted content,
// never a pinned blob (being read), and never a blob that a manifest
// still in the store references (evicting the manifest first makes its
// blobs candidates). It runs alongside reads and writes.
func (ev *evictor) Evict() (n int, freed int64, err error) {
	s := ev.s
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	if s.opts.MaxSize <= 0 || float64(s.used()) <= s.opts.HighWater*float64(s.opts.MaxSize) {
		return 0, 0, nil
	}
	low := int64(s.opts.LowWater * float64(s.opts.MaxSize))
	var gone []string
	defer func() {
		if lerr := s.dropLinks(gone); err == nil {
			err = lerr
		}
	}()
	for pass := 0; pass < 16 && s.used() > low; pass++ {
		cands, repos, refs, err := evictCandidates(s)
		if err != nil {
			return n, freed, err
		}
		sort.Slice(cands, func(i, j int) bool { return cands[i].access < cands[j].access })
		progress := false
		var batch []deletion
		var projected int64 // the bytes batch frees
		flush := func() error {
			res, err := deleteBlobs(s, batch, func(rec blobRecord) bool { return !rec.Hosted })
			batch, projected = batch[:0], 0
			for _, r := range res {
				progress = true
				gone = append(gone, r.digest)
				n++
				freed += r.size
				s.counters.evictions.Add(1)
				s.counters.evictedBytes.Add(r.size)
				for _, ref := range r.refs {
					refs[ref]--
				}
			}
			return err
		}
		for _, c := range cands {
			if s.used()-projected <= low {
				break
			}
			if refs[c.digest] > 0 {
				continue
			}
			batch = append(batch, deletion{digest: c.digest, repos: repos[c.digest]})
			projected += c.size
			if len(batch) == deleteBatch {
				if err := flush(); err != nil {
					return n, freed, err
				}
			}
		}
		if err := flush(); err != nil {
			return n, freed, err
		}
		if !progress {
			break
		}
	}
	return n, freed, nil
}

// evictCandidates lists the cached (not hosted) blobs with their last
// access, and the manifests' repositories and reference counts.
func evictCandidates(s *Store) ([]candidate, map[string][]string, map[string]int, error) {
	var cands []candidate
	var repos map[string][]string
	var refs map[string]int
	s.flushMu.RLock() // an access being flushed is in the map or the index
	err := s.db.View(func(tx *bolt.Tx) error {
		repos, refs = manifestRepos(tx), refCounts(tx)
		acc := tx.Bucket(bucketAccess)
		return tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			var rec blobRecord
			if json.Unmarshal(v, &rec) != nil || rec.Hosted {
				return nil
			}
			c := candidate{digest: string(k), size: rec.Size, access: rec.Created}
			if a := acc.Get(k); len(a) >= 8 {
				c.access = decodeInt(a[:8])
			}
			cands = append(cands, c)
			return nil
		})
	})
	if err == nil {
		s.accessMu.Lock()
		for i := range cands {
			if e, ok := s.access[cands[i].digest]; ok {
				cands[i].access = e.last
			}
		}
		s.accessMu.Unlock()
	}
	s.flushMu.RUnlock()
	if err != nil {
		return nil, nil, nil, err
	}
	return cands, repos, refs, nil
}

// deleteBatch is how many blobs eviction and GC delete per index
// transaction: few enough that readers and writers wait for one commit,
// not for a whole pass.
const deleteBatch = 2048

// GCOptions tune a garbage collection.
type GCOptions struct {
	// Grace spares blobs stored or linked more recently than this, so a
	// push whose manifest has not arrived yet is never broken.
	Grace time.Duration
	// DryRun reports what would be freed without deleting.
	DryRun bool
}

// GCResult is what a collection freed (or would free).
type GCResult struct {
	Blobs   int
	Bytes   int64
	Digests []string
	// Kept and KeptBytes are the unreferenced blobs the grace period
	// spared (stored or linked less than Grace ago).
	Kept      int
	KeptBytes int64
}

// GC deletes blobs that no manifest references and that are not manifests
// themselves (after manifest deletes, evictions, pushes that never got a
// manifest), once they are older than the grace period. It runs online.
func (ev *evictor) GC(opts GCOptions) (GCResult, error) {
	s := ev.s
	var res GCResult
	cutoff := time.Now().Add(-opts.Grace).UnixNano()
	garbage := map[string]int64{}
	young := map[string]int64{} // unreferenced, but within the grace period
	err := s.db.View(func(tx *bolt.Tx) error {
		marked := refCounts(tx)
		manifests := manifestRepos(tx)
		err := tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			var rec blobRecord
			if json.Unmarshal(v, &rec) != nil {
				return nil
			}
			if marked[string(k)] == 0 && manifests[string(k)] == nil {
				if rec.Created < cutoff {
					garbage[string(k)] = rec.Size
				} else {
					young[string(k)] = rec.Size
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		// A recent link (a mount, a re-push) counts as recent use.
		return tx.Bucket(bucketLinks).ForEach(func(k, v []byte) error {
			if i := lastNUL(k); i >= 0 {
				if _, ok := garbage[string(k[i+1:])]; ok {
					var l linkRecord
					if json.Unmarshal(v, &l) == nil && l.Created >= cutoff {
						young[string(k[i+1:])] = garbage[string(k[i+1:])]
						delete(garbage, string(k[i+1:]))
					}
				}
			}
			return nil
		})
	})
	if err != nil {
		return res, err
	}
	s.counters.gcRuns.Add(1)
	for _, size := range young {
		res.Kept++
		res.KeptBytes += size
	}
	if opts.DryRun {
		for d, size := range garbage {
			res.Blobs++
			res.Bytes += size
			res.Digests = append(res.Digests, d)
		}
		sort.Strings(res.Digests)
		return res, nil
	}
	if err := gcDelete(s, garbage, cutoff, &res); err != nil {
		return res, err
	}
	sort.Strings(res.Digests)
	err = s.dropLinks(res.Digests)
	s.counters.gcBlobs.Add(int64(res.Blobs))
	s.counters.gcBytes.Add(res.Bytes)
	return res, err
}

// gcDelete deletes the garbage blobs still older than cutoff, a batch
// per index transaction, adding them to res.
func gcDelete(s *Store, garbage map[string]int64, cutoff int64, res *GCResult) error {
	batch := make([]deletion, 0, deleteBatch)
	flush := func() error {
		done, err := deleteBlobs(s, batch, func(rec blobRecord) bool { return rec.Created < cutoff })
		batch = batch[:0]
		for _, d := range done {
			res.Blobs++
			res.Bytes += d.size
			res.Digests = append(res.Digests, d.digest)
		}
		return err
	}
	for d := range garbage {
		if batch = append(batch, deletion{digest: d}); len(batch) == deleteBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func lastNUL(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == 0 {
			return i
		}
	}
	return -1
}
