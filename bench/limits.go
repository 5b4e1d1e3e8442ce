package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The long path against its physical limit. "link" is the path itself
// with one stream allowed the whole link (no per-stream cap): the time
// the link needs to carry the blob once, measured in the same run. The
// ratio berth/link is how much of the link a cold pull through berth
// leaves unused. Two more paths: a lossy one (each MiB a response
// carries stalls it for 2 s with probability 1%) and a narrow one
// (a 50 MB/s link, two streams' worth: more streams must not help, and
// berth must not open them).

var (
	lossyShare  = flag.Float64("wan-lossy-share", 0.01, "lossy path: probability that a response stalls at each MiB it carries")
	lossyStall  = flag.Duration("wan-lossy-stall", 2*time.Second, "lossy path: how long a stall lasts")
	narrowLink  = flag.Float64("wan-narrow-mbs", 50, "narrow path: MB/s of the whole link")
	skipLimits  = flag.Bool("no-wan-limits", false, "skip the lossy and narrow paths")
	rttsInImage = 4 // manifest, then config and layers in waves: the round trips a pull needs at least
)

// wanLink measures the link alone: the big blob by one client over the
// path with no per-stream cap, and the image's bytes ÷ the link rate
// plus four round trips (its floor).
func (b *bench) wanLink(upAddr string) error {
	wan, err := newWANProxy(upAddr, *wanLatency, *wanLink, *wanLink)
	if err != nil {
		return err
	}
	defer wan.close()
	wall, err := discardBlob(&system{name: "link", addr: wan.addr}, 1, b.images.big, int64(*bigMiB)<<20)
	if err != nil {
		return fmt.Errorf("link alone: %w", err)
	}
	for _, n := range []int{1, 20} {
		// Twenty clients through a cache need the link to carry the blob once too.
		b.record(fmt.Sprintf("long path: cold %d MiB blob, %d client(s): wall s", *bigMiB, n), "link", wall.Seconds())
	}
	imageBytes := b.images.multiMiB * (1 << 20)
	b.record("long path: cold 8×16 MiB image, 3 layers at a time: wall s", "link",
		imageBytes/(*wanLink*1e6)+float64(rttsInImage)*wanLatency.Seconds())
	return nil
}

// wanLimits runs the lossy and the narrow path: the big blob by one
// client, direct, through berth, and over the link alone.
func (b *bench) wanLimits(upAddr string, r int) error {
	type pathSpec struct {
		label          string
		stream, link   float64
		share          float64
		linkOnlyStream float64 // the link alone: one stream gets this
	}
	paths := []pathSpec{
		{fmt.Sprintf("lossy path (1%% of each MiB stalls %s)", *lossyStall), *wanStream, *wanLink, *lossyShare, *wanLink},
		{fmt.Sprintf("narrow path (%.0f MB/s link)", *narrowLink), *wanStream, *narrowLink, 0, *narrowLink},
	}
	for i, ps := range paths {
		for _, name := range []string{"link", "direct", "berth"} {
			stream := ps.stream
			if name == "link" {
				stream = ps.linkOnlyStream
			}
			wan, err := newWANProxy(upAddr, *wanLatency, stream, ps.link)
			if err != nil {
				return err
			}
			if ps.share > 0 && name != "link" {
				wan.stallShare, wan.stallFor = ps.share, *lossyStall
				wan.rng = rand.New(rand.NewPCG(uint64(r), uint64(i)))
			}
			log.Printf("run %d/%d: %s: %s", r, *repeats, ps.label, name)
			err = b.limitBlob(ps.label, name, wan)
			wan.close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// limitBlob pulls the big blob once across wan through system name.
func (b *bench) limitBlob(label, name string, wan *wanProxy) error {
	var s *system
	var err error
	if name == "link" {
		s = &system{name: "link", addr: wan.addr, stop: func() {}}
	} else if s, err = b.freshOnWAN(name, wan); err != nil {
		return err
	}
	defer s.stop()
	wall, err := discardBlob(s, 1, b.images.big, int64(*bigMiB)<<20)
	if err != nil {
		return fmt.Errorf("%s, %s: %w", label, name, err)
	}
	b.record(fmt.Sprintf("%s: cold %d MiB blob, 1 client: wall s", label, *bigMiB), name, wall.Seconds())
	if wan.rng != nil {
		b.record(label+": stalls during the pull", name, float64(wan.stallCount()))
	}
	if name == "berth" {
		b.recordStreams(label, s)
		b.record(label+": upstream bytes ÷ blob size", name, float64(wan.bytes(b.images.big))/float64(int64(*bigMiB)<<20))
	}
	return nil
}

// recordStreams records the streams berth's ranged downloads ran at
// most (the mean over its downloads, from its metrics).
func (b *bench) recordStreams(label string, s *system) {
	m, err := scrape("http://" + s.addr + "/metrics")
	if err != nil {
		log.Printf("metrics of %s: %v", s.name, err)
		return
	}
	if n := m["berth_range_fetch_streams_count"]; n > 0 {
		b.record(label+": streams at most (berth's ranged download)", s.name, m["berth_range_fetch_streams_sum"]/n)
	}
	for _, how := range []string{"steal", "takeover", "throttled"} {
		if v, ok := m[`berth_range_fetch_moves_total{how="`+how+`",repository="hub"}`]; ok && v > 0 {
			b.record(label+": "+how+"s (berth)", s.name, v)
		}
	}
}

// scrape reads a Prometheus text page into series → value (labels
// summed away for the histogram's _sum and _count).
func scrape(url string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		key := line[:i]
		if name, _, ok := strings.Cut(key, "{"); ok && (strings.HasSuffix(name, "_sum") || strings.HasSuffix(name, "_count")) {
			out[name] += v
			continue
		}
		out[key] = v
	}
	return out, sc.Err()
}
