package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/berth-registry/berth/internal/fetch"
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
	// balancer is the external_url berth sits behind ("": none); client
	// asks it for prefetches (eager_cluster.go).
	balancer string
	client   *http.Client
}

// eagerFetchedTTL is how long a blob an eager download fetched counts as
// the pull's own: a client that asks later is served from the cache.
const eagerFetchedTTL = 10 * time.Minute

// tookEager reports whether blob d of img was fetched by an eager
// download that no client has read yet, and marks it read.
func (e *eager) tookEager(img imageRef, d store.Digest) bool {
	_, ok := e.fetched.Take(img.at(d.String()))
	return ok
}

func newEager(balancer string) *eager {
	// The balancer is the operator's own: no HTTP(S)_PROXY between them.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: prefetchParallel},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &eager{balancer: balancer, client: client, ramp: eagerRamp, slowRate: eagerSlowRate, slowAnswer: eagerSlowAnswer, slots: make(chan struct{}, eagerInFlight), seen: lru.New[string, struct{}](10_000, 10*time.Minute),
		fetched: lru.New[string, struct{}](10_000, eagerFetchedTTL).WithCost(4<<20, lru.StringBytes[struct{}])}
}

// eagerLayers records the sizes m declares for its blobs and starts their
// downloads in the background when rp wants eager layers. It never delays
// the answer: the work runs in its own goroutine, at most once per
// manifest in ten minutes, in manifest order, eagerParallel at a time
// (more on a slow path).
func (p *proxy) eagerLayers(img imageRef, m store.Manifest) {
	s, rp := p.s, p.repo
	if m.Digest.IsZero() {
		return
	}
	key := img.at(m.Digest.String())
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
		s.declared.declare(img.path(), pm)
		if !rp.EagerLayers {
			return
		}
		if p.viaBalancer() {
			p.eagerViaBalancer(img, pm.blobs)
			return
		}
		run := p.newEagerRun(img, pm.blobs[0])
		for i, d := range pm.blobs {
			if i == eagerPerImage || !run.start(d) {
				return
			}
		}
	})
}

// eagerRun starts the downloads of one manifest's blobs.
type eagerRun struct {
	p       *proxy
	img     imageRef
	config  string                     // the config's digest: it does not take a layer's place
	ended   chan string                // the digest of each download that ends
	running map[string]*fetch.Download // the run's downloads under way
	width   int                        // layers at once: eagerParallel, or eagerWide on a slow path
	pace    fetch.Pace                 // judges the running downloads
}

func (p *proxy) newEagerRun(img imageRef, config store.Digest) *eagerRun {
	s, rp := p.s, p.repo
	e := &eagerRun{p: p, img: img, config: config.String(), ended: make(chan string, eagerPerImage),
		running: map[string]*fetch.Download{}, width: eagerParallel, pace: fetch.Pace{SlowRate: s.eager.slowRate, SlowWindows: 1}}
	if time.Duration(rp.manifestAnswer.Load()) >= s.eager.slowAnswer {
		e.width = eagerWide
	}
	e.pace.Start(time.Now(), 0)
	return e
}

// places is how many downloads may run: the config (small, and Docker
// fetches it besides its three layers) does not take a layer's place.
func (e *eagerRun) places() int {
	if _, ok := e.running[e.config]; ok {
		return e.width + 1
	}
	return e.width
}

// makeRoom waits until one more download may run: one of the run's ends,
// or the pace, judged every ramp, says the path is slow and widens it.
func (e *eagerRun) makeRoom() {
	for len(e.running) >= e.places() {
		wait := e.p.s.eager.ramp - e.pace.Since(time.Now())
		if e.width < eagerWide && wait <= 0 {
			if e.pace.Judge(time.Now(), bytesIn(e.running), len(e.running)) == fetch.Slow {
				e.width = eagerWide
			}
			continue
		}
		timer := time.NewTimer(max(wait, 0))
		if e.width >= eagerWide {
			timer.Stop()
			timer = time.NewTimer(time.Hour) // only an end frees a place
		}
		select {
		case dg := <-e.ended:
			delete(e.running, dg)
			e.pace.Start(time.Now(), bytesIn(e.running))
		case <-timer.C:
		}
		timer.Stop()
	}
}

// start starts blob d's download unless it is cached or under way; false
// means to start no more (enough eager downloads run, or the store
// cannot write).
func (e *eagerRun) start(d store.Digest) bool {
	e.makeRoom()
	if _, err := e.p.s.blobs.StatBlob(context.Background(), d); err == nil {
		return true
	}
	dl, started, more := e.p.eagerDownload(e.img, d, e.ended)
	if started {
		e.running[d.String()] = dl
		e.pace.Start(time.Now(), bytesIn(e.running))
	}
	return more
}

// eagerDownload starts blob d's download for no reader yet (the client's
// GETs join it), within the eager bound; ended, when given, is told its
// digest when it ends. started: it is this call's download; more false:
// start no more (enough eager downloads run, or the store cannot write).
func (p *proxy) eagerDownload(img imageRef, d store.Digest, ended chan<- string) (dl *fetch.Download, started, more bool) {
	s, rp := p.s, p.repo
	select {
	case s.eager.slots <- struct{}{}:
	default:
		return nil, false, false // enough under way; clients fetch the rest as they ask
	}
	job := p.blobJob(img, d)
	job.Keep = true
	onEnd := job.Ended
	fetchedKey := img.at(d.String())
	job.Ended = func(err error) {
		if err != nil {
			s.eager.fetched.Remove(fetchedKey)
		}
		<-s.eager.slots
		if ended != nil {
			ended <- d.String()
		}
		onEnd(err)
	}
	dl, leader, err := s.fetches.Join(context.Background(), job)
	if err != nil {
		<-s.eager.slots
		return nil, false, errors.Is(err, fetch.ErrStored) // a client's download just stored it: go on
	}
	dl.Release() // no reader here: clients join it
	if !leader {
		<-s.eager.slots // already in flight: not ours
		return nil, false, true
	}
	s.eager.fetched.Add(fetchedKey, struct{}{})
	s.m.eager.WithLabelValues(rp.Name).Inc()
	return dl, true, true
}

// bytesIn is the bytes on disk of the downloads together.
func bytesIn(dls map[string]*fetch.Download) (n int64) {
	for _, dl := range dls {
		n += dl.Written()
	}
	return n
}
