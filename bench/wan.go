package main

import (
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// The long-path scenario. These machines have no kernel traffic shaping
// (no netem qdisc), so the path between the cache and the upstream is
// emulated in user space: wanProxy sits in front of the upstream registry
// and adds a latency to every request, caps each response at one TCP
// stream's share of a long path and caps the whole link. Direct pulls go
// through the same proxy, so every system crosses the same path.

var (
	wanLatency = flag.Duration("wan-latency", 40*time.Millisecond, "long path: latency added to every request")
	wanStream  = flag.Float64("wan-stream-mbs", 25, "long path: MB/s of one response (one TCP stream's share)")
	wanLink    = flag.Float64("wan-link-mbs", 200, "long path: MB/s of the whole link")
	wanSkip    = flag.Bool("no-wan", false, "skip the long-path scenario")
	berthExtra = flag.String("berth-config", "", "lines added to berth's proxy repository in its config (e.g. eager_layers = false)")
	wanLog     = flag.Bool("wan-log", false, "log each request across the long path and how long it took, and every 100 ms how far many clients of one blob have got")
	wanSystems = flag.String("wan-systems", "direct,berth,distribution", "long path: the systems measured (a comma-separated subset)")
	traceDir   = flag.String("trace", "", "with -only cold: save a Go runtime trace and a CPU profile of berth during each cold pull in this directory (go tool trace, go tool pprof); on the long path, a CPU profile of the big blob by many clients")
	only       = flag.String("only", "", `run one scenario: "wan" (the long path, with the lossy and narrow paths), "wan-pull" (its docker-like pull alone), "cold" (the loopback cold pull of one client), "cold20" (the big blob by 20 on loopback), "curve" (the cost curve) or "sim" (the thousand-node model)`)
)

// wanProxy forwards to the upstream across an emulated long path and
// counts the body bytes of blob GETs per digest.
type wanProxy struct {
	addr     string
	target   string
	latency  time.Duration
	stream   float64 // bytes/s per response
	linkRate float64 // bytes/s of the link
	link     *rate.Limiter

	mu   sync.Mutex
	sent map[string]int64 // digest → blob body bytes sent
	cut  map[string]int64 // digest → break the next response that crosses this byte of the blob
	srv  *http.Server

	// A lossy path: at each MiB a blob response carries, it stalls for
	// stallFor with probability stallShare, drawn from rng (seeded: every
	// run draws the same sequence); stalls counts them.
	stallShare float64
	stallFor   time.Duration
	rng        *rand.Rand
	stalls     int
}

func newWANProxy(target string, latency time.Duration, streamMBs, linkMBs float64) (*wanProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	const burst = 256 << 10
	p := &wanProxy{addr: ln.Addr().String(), target: target, latency: latency, stream: streamMBs * 1e6, linkRate: linkMBs * 1e6,
		link: rate.NewLimiter(rate.Limit(linkMBs*1e6), burst), sent: map[string]int64{}, cut: map[string]int64{}}
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serve(w, r, tr) })}
	go p.srv.Serve(ln)
	return p, nil
}

func (p *wanProxy) close() { p.srv.Close() }

// bytes returns the blob body bytes sent for digest so far.
func (p *wanProxy) bytes(digest string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent[digest]
}

// cutNext makes the next response for digest that carries byte n of the
// blob stop there, its connection dropped.
func (p *wanProxy) cutNext(digest string, n int64) {
	p.mu.Lock()
	p.cut[digest] = n
	p.mu.Unlock()
}

func (p *wanProxy) serve(w http.ResponseWriter, r *http.Request, tr *http.Transport) {
	if *wanLog {
		t0 := time.Now()
		defer func() {
			log.Printf("wan %s %s %s: at %s, took %s", r.Method, r.URL.Path[max(0, len(r.URL.Path)-30):], r.Header.Get("Range"), t0.Format("05.000"), time.Since(t0).Round(time.Millisecond))
		}()
	}
	time.Sleep(p.latency) // the request's way there and the answer's way back
	resp := relay(w, r, tr, p.target)
	if resp == nil {
		return
	}
	defer resp.Body.Close()
	digest := ""
	if m := blobRe.FindStringSubmatch(r.URL.Path); m != nil && r.Method == http.MethodGet {
		digest = m[1]
	}
	limit := p.cutAt(digest, resp)
	nextDraw := int64(0) // the next MiB boundary a stall is drawn at
	// Paced in slices: each waits for its share of this stream and of
	// the link.
	const slice = 32 << 10
	// No per-stream cap on the link alone (a limiter of one stream's
	// small burst would itself hold a 200 MB/s stream back).
	var stream *rate.Limiter
	if p.stream < p.linkRate {
		stream = rate.NewLimiter(rate.Limit(p.stream), slice*2)
	}
	buf := make([]byte, slice)
	var sent int64
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if limit >= 0 && sent+int64(n) > limit {
				n = int(limit - sent)
			}
			if digest != "" && sent >= nextDraw {
				nextDraw += 1 << 20
				if !p.stall(r) {
					return
				}
			}
			if stream != nil {
				if err := stream.WaitN(r.Context(), n); err != nil {
					return
				}
			}
			if err := p.link.WaitN(r.Context(), n); err != nil {
				return
			}
			m, err := w.Write(buf[:n])
			sent += int64(m)
			if digest != "" {
				p.mu.Lock()
				p.sent[digest] += int64(m)
				p.mu.Unlock()
			}
			if err != nil {
				return
			}
			if limit >= 0 && sent == limit {
				http.NewResponseController(w).Flush()
				panic(http.ErrAbortHandler) // the stream breaks
			}
		}
		if rerr != nil {
			return
		}
	}
}

// cutAt is the body byte a blob response breaks at (cutNext), or -1.
func (p *wanProxy) cutAt(digest string, resp *http.Response) int64 {
	if digest == "" || resp.StatusCode/100 != 2 {
		return -1
	}
	start := int64(0)
	if cr := resp.Header.Get("Content-Range"); cr != "" {
		fmt.Sscanf(cr, "bytes %d-", &start)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if at, ok := p.cut[digest]; ok && start <= at && (resp.ContentLength < 0 || at < start+resp.ContentLength) {
		delete(p.cut, digest)
		return at - start
	}
	return -1
}

// stall holds a response for stallFor when a lossy path draws a stall
// here; false: the request ended meanwhile.
func (p *wanProxy) stall(r *http.Request) bool {
	if !p.drawStall() {
		return true
	}
	select {
	case <-time.After(p.stallFor):
		return true
	case <-r.Context().Done():
		return false
	}
}

// drawStall draws whether a lossy path stalls here.
func (p *wanProxy) drawStall() bool {
	if p.rng == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rng.Float64() >= p.stallShare {
		return false
	}
	p.stalls++
	return true
}

// stallCount is how many stalls the path has made.
func (p *wanProxy) stallCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stalls
}

// wanRun is the long-path scenario: each system on a fresh cache per
// measurement, and "direct", the client pulling from the upstream across
// the same path.
func (b *bench) wanRun(upAddr string, r int) error {
	wan, err := newWANProxy(upAddr, *wanLatency, *wanStream, *wanLink)
	if err != nil {
		return err
	}
	defer wan.close()
	log.Printf("run %d/%d: long path: the link alone (one stream may use all of it)", r, *repeats)
	if err := b.wanLink(upAddr); err != nil {
		return err
	}
	for _, name := range strings.Split(*wanSystems, ",") {
		log.Printf("run %d/%d: long path (%s, %.0f MB/s a stream, %.0f MB/s link): %s", r, *repeats, *wanLatency, *wanStream, *wanLink, name)
		// (a) the 8×16 MiB image, three layers at a time.
		s, err := b.freshOnWAN(name, wan)
		if err != nil {
			return err
		}
		wall, err := b.dockerPull(s)
		s.stop()
		if err != nil {
			return fmt.Errorf("long path %s: %w", name, err)
		}
		b.record("long path: cold 8×16 MiB image, 3 layers at a time: wall s", name, wall.Seconds())
		if *only == "wan-pull" {
			continue
		}
		// (b) the big blob by one client, then by 20.
		for _, n := range []int{1, 20} {
			if err := b.wanBigBlob(name, wan, n); err != nil {
				return err
			}
		}
		if err := b.wanCut(name, wan); err != nil {
			return err
		}
	}
	if !*skipCluster {
		if err := b.wanCluster(wan, r); err != nil {
			return err
		}
	}
	if *only == "wan-pull" || *skipLimits {
		return nil
	}
	return b.wanLimits(upAddr, r)
}

// freshOnWAN starts system name on an empty cache in front of the long
// path (direct: the path itself).
func (b *bench) freshOnWAN(name string, wan *wanProxy) (*system, error) {
	if name == "direct" {
		return &system{name: "direct", addr: wan.addr, stop: func() {}}, nil
	}
	data, _ := os.MkdirTemp(*outDir, name+"-wan")
	var s *system
	var err error
	if name == "berth" {
		s, err = b.startBerthAt(data, wan.addr)
	} else {
		s, err = b.startDistributionAt(data, wan.addr)
	}
	if err != nil {
		return nil, err
	}
	stop := s.stop
	s.stop = func() { stop(); os.RemoveAll(data) }
	return s, nil
}

// wanBigBlob: the big blob by n clients at once, on a cold cache.
func (b *bench) wanBigBlob(name string, wan *wanProxy, n int) error {
	size := int64(*bigMiB) << 20
	s, err := b.freshOnWAN(name, wan)
	if err != nil {
		return err
	}
	before := wan.bytes(b.images.big)
	// Clients reading and hashing would measure this machine's second
	// CPU (where they run with the upstream and the path), not the path:
	// they drop the bytes in the kernel and count them (berth and
	// distribution check the digest themselves).
	var profiled chan error
	if s.pprof != "" && n > 1 { // -trace: a CPU profile of the many-client pull
		profiled = make(chan error, 1)
		go func() {
			profiled <- saveProfile(s.pprof, "profile", filepath.Join(*traceDir, fmt.Sprintf("wan-%d.cpu", n)))
		}()
		time.Sleep(100 * time.Millisecond)
	}
	cpu0 := cpuSeconds(s.pid)
	wall, err := discardBlob(s, n, b.images.big, size)
	if profiled != nil {
		if perr := <-profiled; err == nil {
			err = perr
		}
	}
	if err == nil && s.pid != 0 {
		cpu := cpuSeconds(s.pid) - cpu0
		b.record(fmt.Sprintf("long path: %d client(s): server CPU s", n), name, cpu)
		// The server's CPU for the pull on its one core, over the link's
		// time: the wall ÷ link this pull could reach if that work were
		// packed from its first millisecond.
		if link, ok := b.last(fmt.Sprintf("long path: cold %d MiB blob, %d client(s): wall s", *bigMiB, n), "link"); ok && link > 0 {
			b.record(fmt.Sprintf("long path: %d client(s): server CPU s ÷ link's wall s", n), name, cpu/link)
		}
	}
	if err == nil && name == "berth" {
		b.recordStreams(fmt.Sprintf("long path: %d client(s)", n), s)
	}
	s.stop()
	if err != nil {
		return fmt.Errorf("long path %s, %d clients: %w", name, n, err)
	}
	b.record(fmt.Sprintf("long path: cold %d MiB blob, %d client(s): wall s", *bigMiB, n), name, wall.Seconds())
	b.record(fmt.Sprintf("long path: %d client(s): upstream bytes ÷ blob size", n), name, float64(wan.bytes(b.images.big)-before)/float64(size))
	if n == 1 {
		b.record("long path: 1 client: MB/s", name, float64(*bigMiB)*1.048576/wall.Seconds())
	}
	return nil
}

// discardBlob has n clients that drop the bytes in the kernel GET blob
// d of size bytes at once through s.
func discardBlob(s *system, n int, d string, size int64) (time.Duration, error) {
	wall, got, err := discardOnce(n, s.blobURL("bench/big", d))
	if err == nil && got != int64(n)*size {
		err = fmt.Errorf("%s: %d clients received %d bytes, want %d", s.name, n, got, int64(n)*size)
	}
	return wall, err
}

// wanCut: the upstream stream cut once at half the blob. A client
// retries a failed pull once, from the start (as docker does).
func (b *bench) wanCut(name string, wan *wanProxy) error {
	size := int64(*bigMiB) << 20
	s, err := b.freshOnWAN(name, wan)
	if err != nil {
		return err
	}
	before := wan.bytes(b.images.big)
	wan.cutNext(b.images.big, size/2)
	ok := 1.0
	if _, _, err := b.concurrentBlob(s, 1, true); err != nil {
		if _, _, err := b.concurrentBlob(s, 1, true); err != nil {
			ok = 0
		}
	}
	s.stop()
	b.record("long path: stream cut at half: pull completed (1 yes)", name, ok)
	b.record("long path: stream cut at half: MiB fetched twice", name, float64(wan.bytes(b.images.big)-before-size)/(1<<20))
	return nil
}

// dockerPull pulls bench/multi:v1 as Docker does: the manifest, then the
// config and layers three at a time, in order. It returns the wall time.
func (b *bench) dockerPull(s *system) (time.Duration, error) {
	c := newClient()
	start := time.Now()
	if _, _, _, err := fetch(c, s.manifestURL("bench/multi", "v1"), false); err != nil {
		return 0, err
	}
	blobs := append([]string{b.images.multiConfig}, b.images.multi...)
	sem := make(chan struct{}, 3)
	errs := make(chan error, len(blobs))
	var wg sync.WaitGroup
	for _, d := range blobs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			_, _, sum, err := fetch(c, s.blobURL("bench/multi", d), true)
			if err == nil && sum != d {
				err = fmt.Errorf("%s: %s: digest mismatch", s.name, d)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, err
	}
	return time.Since(start), nil
}
