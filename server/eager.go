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

// eagerRamp is eager.ramp's default: while none of a manifest's downloads
// ends for this long, the path is slow (long, or one stream gets little of
// the link) and twice as many may run, up to eagerWide. On a fast path,
// three at a time keep the one the client reads first from sharing the
// upstream and the CPU with many others (on loopback, with eight at once
// its first byte came after 160 ms instead of 40).
const eagerRamp = 100 * time.Millisecond

// eager is the state of eager downloads.
type eager struct {
	ramp  time.Duration                // eagerRamp
	slots chan struct{}                // eagerInFlight
	seen  *lru.Cache[string, struct{}] // "<path>@<manifest digest>" recently looked at
}

func newEager() *eager {
	return &eager{ramp: eagerRamp, slots: make(chan struct{}, eagerInFlight), seen: lru.New[string, struct{}](10_000, 10*time.Minute)}
}

// eagerLayers starts the downloads of m's blobs in the background when rp
// wants eager layers. It never delays the answer: the work runs in its own
// goroutine, at most once per manifest in ten minutes, in manifest order,
// eagerParallel at a time (more on a slow path).
func (s *Server) eagerLayers(rp *repo, image string, m store.Manifest) {
	if !rp.EagerLayers || rp.Kind != KindProxy || m.Digest.IsZero() {
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
		ctx := context.Background()
		ended := make(chan struct{}, eagerPerImage) // one per download started
		running, width := 0, eagerParallel
		last := time.Now() // a download started or ended, or width grew
		for i, d := range pm.blobs {
			if i == eagerPerImage {
				return
			}
			for running >= width {
				wait := s.eager.ramp - time.Since(last)
				if width < eagerWide && wait <= 0 {
					width = min(2*width, eagerWide) // slow: twice as many
					last = time.Now()
					continue
				}
				timer := time.NewTimer(max(wait, 0))
				if width >= eagerWide {
					timer.Stop()
					timer = time.NewTimer(time.Hour) // only an end frees a place
				}
				select {
				case <-ended:
					running--
					last = time.Now()
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
			onEnd := job.ended
			job.ended = func(err error) {
				<-s.eager.slots
				ended <- struct{}{}
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
			running++
			last = time.Now()
			s.m.eager.WithLabelValues(rp.Name).Inc()
		}
	})
}
