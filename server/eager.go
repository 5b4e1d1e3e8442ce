package server

import (
	"context"
	"time"

	"github.com/berth-registry/berth/internal/lru"
	"github.com/berth-registry/berth/store"
)

// Eager layers: when a proxy serves an image manifest (not an index:
// the client has not chosen a platform yet), the config and layers that
// are neither cached nor in flight start downloading at once, through the
// fetch group, so the client's blob GETs join downloads already under
// way. Docker fetches three layers at a time; on a long path the fourth
// would otherwise start only when one of those ends.

// Bounds of eager downloads.
const (
	eagerPerImage = 32 // blobs started for one manifest
	eagerParallel = 3  // of one manifest at a time, in manifest order, as Docker asks...
	eagerWide     = 8  // ...and up to this many on a slow path (eagerRamp)
	eagerInFlight = 16 // eager downloads under way, all proxies together
)

// Widening on a slow path: when none of a manifest's downloads ends for
// eagerRamp and each gained less than eagerSlowRate bytes a second in that
// time, the path is slow (long, or one stream gets little of the link)
// and eagerWide may run at once (doubling instead, 3 → 6 → 8, started the
// last layers ~70 ms later on the bench's long path: its 8×16 MiB pull
// took 1.2 s instead of 1.0 s). On a fast path, three at a
// time keep the one the client reads first from sharing the upstream and
// the CPU with many others (on loopback, with eight at once its first
// byte came after 160 ms instead of 40). eager.ramp and eager.slowRate
// hold them (tests change them).
//
// A proxy whose last manifest took eagerSlowAnswer or more to come from
// its upstream is on a long path already: its downloads start eagerWide
// at once instead of waiting a ramp to be judged (on the long-path bench
// the pull then depended on whether the client's first GETs or the eager
// downloads came first: 1.0 s when six started at once, 1.1-1.2 s when
// three did and the rest 50 ms later).
const (
	eagerRamp       = 50 * time.Millisecond
	eagerSlowRate   = 50e6
	eagerSlowAnswer = 20 * time.Millisecond
)

// eager is the state of eager downloads.
type eager struct {
	ramp       time.Duration                // eagerRamp
	slowRate   float64                      // eagerSlowRate
	slowAnswer time.Duration                // eagerSlowAnswer
	slots      chan struct{}                // eagerInFlight
	seen       *lru.Cache[string, struct{}] // "<path>@<manifest digest>" recently looked at
	// fetched: "<path>@<blob digest>" an eager download started for the
	// pull in progress and no client has read yet. The first client read
	// takes it and is counted as a miss from upstream, not as a hit: the
	// bytes crossed the link for that pull.
	fetched *lru.Cache[string, struct{}]
}

// eagerFetchedTTL is how long a blob an eager download fetched counts as
// the pull's own: a client that asks later is served from the cache.
const eagerFetchedTTL = 10 * time.Minute

// tookEager reports whether blob d of path was fetched by an eager
// download that no client has read yet, and marks it read.
func (e *eager) tookEager(path string, d store.Digest) bool {
	_, ok := e.fetched.Take(path + "@" + d.String())
	return ok
}

func newEager() *eager {
	return &eager{ramp: eagerRamp, slowRate: eagerSlowRate, slowAnswer: eagerSlowAnswer, slots: make(chan struct{}, eagerInFlight), seen: lru.New[string, struct{}](10_000, 10*time.Minute),
		fetched: lru.New[string, struct{}](10_000, eagerFetchedTTL).WithCost(4<<20, lru.StringBytes[struct{}])}
}

// eagerLayers records the sizes m declares for its blobs and starts their
// downloads in the background when rp wants eager layers. It never delays the answer: the work runs in its own
// goroutine, at most once per manifest in ten minutes, in manifest order,
// eagerParallel at a time (more on a slow path).
func (s *Server) eagerLayers(rp *repo, image string, m store.Manifest) {
	if rp.Kind != KindProxy || m.Digest.IsZero() {
		return
	}
	key := rp.Name + "/" + image + "@" + m.Digest.String()
	if _, seen := s.eager.seen.Get(key); seen {
		return
	}
	s.eager.seen.Add(key, struct{}{})
	s.goSafe("eager layers", func() {
		pm, err := parseManifest(m.Body, m.MediaType)
		if err != nil || pm.image == nil {
			return // an index, or schema 1: nothing chosen to fetch
		}
		// The sizes its blobs may have, whether or not they are fetched
		// now (blob_limit.go).
		s.declareSizes(rp.Name+"/"+image, pm)
		if !rp.EagerLayers {
			return
		}
		ctx := context.Background()
		ended := make(chan string, eagerPerImage) // the digest of each download that ends
		running := map[string]*download{}
		width := eagerParallel
		if time.Duration(rp.manifestAnswer.Load()) >= s.eager.slowAnswer {
			width = eagerWide
		}
		last, moved := time.Now(), int64(0) // when the pace was last judged, and the bytes in by then
		// The config (first) is small and Docker fetches it besides its
		// three layers: it does not take a layer's place.
		config := pm.blobs[0].String()
		places := func() int {
			if _, ok := running[config]; ok {
				return width + 1
			}
			return width
		}
		for i, d := range pm.blobs {
			if i == eagerPerImage {
				return
			}
			for len(running) >= places() {
				wait := s.eager.ramp - time.Since(last)
				if width < eagerWide && wait <= 0 {
					// Judge the pace: slow when each running download
					// gained less than eagerSlowRate since last time.
					now := bytesIn(running)
					rate := float64(now-moved) / time.Since(last).Seconds() / float64(len(running))
					if rate < s.eager.slowRate {
						width = eagerWide
					}
					last, moved = time.Now(), now
					continue
				}
				timer := time.NewTimer(max(wait, 0))
				if width >= eagerWide {
					timer.Stop()
					timer = time.NewTimer(time.Hour) // only an end frees a place
				}
				select {
				case dg := <-ended:
					delete(running, dg)
					last, moved = time.Now(), bytesIn(running)
				case <-timer.C:
				}
				timer.Stop()
			}
			if _, err := s.blobs.StatBlob(ctx, d); err == nil {
				continue
			}
			select {
			case s.eager.slots <- struct{}{}:
			default:
				return // enough under way; clients fetch the rest as they ask
			}
			job := s.blobJob(rp, image, d)
			job.keep = true // no reader yet: the client's GETs join it
			onEnd := job.ended
			fetchedKey := rp.Name + "/" + image + "@" + d.String()
			job.ended = func(err error) {
				if err != nil {
					s.eager.fetched.Remove(fetchedKey)
				}
				<-s.eager.slots
				ended <- d.String()
				onEnd(err)
			}
			dl, leader, err := s.fetches.join(ctx, job)
			if err != nil {
				<-s.eager.slots
				return
			}
			dl.release() // no reader here: clients join it
			if !leader {
				<-s.eager.slots // already in flight: not ours
				continue
			}
			s.eager.fetched.Add(fetchedKey, struct{}{})
			running[d.String()] = dl
			last, moved = time.Now(), bytesIn(running)
			s.m.eager.WithLabelValues(rp.Name).Inc()
		}
	})
}

// bytesIn is the bytes on disk of the downloads together.
func bytesIn(dls map[string]*download) (n int64) {
	for _, dl := range dls {
		dl.mu.Lock()
		n += dl.written
		dl.mu.Unlock()
	}
	return n
}
