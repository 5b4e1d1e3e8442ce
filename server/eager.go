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
	eagerParallel = 3  // of one manifest at a time, in manifest order, as Docker asks
	eagerInFlight = 16 // eager downloads under way, all proxies together
)

// eager is the state of eager downloads.
type eager struct {
	slots chan struct{}                // eagerInFlight
	seen  *lru.Cache[string, struct{}] // "<path>@<manifest digest>" recently looked at
}

func newEager() *eager {
	return &eager{slots: make(chan struct{}, eagerInFlight), seen: lru.New[string, struct{}](10_000, 10*time.Minute)}
}

// eagerLayers starts the downloads of m's blobs in the background when rp
// wants eager layers. It never delays the answer: the work runs in its own
// goroutine, at most once per manifest in ten minutes, eagerParallel at a
// time.
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
		// A few at a time, in order: all at once would split the
		// bandwidth (and, on one core, the hashing) so that the layer the
		// client reads first finished last.
		image3 := make(chan struct{}, eagerParallel)
		for i, d := range pm.blobs {
			if i == eagerPerImage {
				return
			}
			image3 <- struct{}{} // waits for one of this manifest's downloads to end
			if _, err := s.blobs.StatBlob(ctx, d); err == nil {
				<-image3
				continue
			}
			select {
			case s.eager.slots <- struct{}{}:
			default:
				return // enough under way; clients fetch the rest as they ask
			}
			free := func() { <-s.eager.slots; <-image3 }
			job := s.blobJob(rp, image, d)
			ended := job.ended
			job.ended = func(err error) {
				free()
				ended(err)
			}
			dl, leader, err := s.fetches.join(ctx, job)
			if err != nil {
				free()
				return
			}
			dl.release() // no reader here: clients join it
			if !leader {
				free() // already in flight: not ours
				continue
			}
			s.m.eager.WithLabelValues(rp.Name).Inc()
		}
	})
}
