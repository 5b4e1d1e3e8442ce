package server

import (
	"io"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// pullAll pulls ref's manifest, config and layers through berth, and
// returns how long that took.
func pullAll(b *testing.B, ref string, tb *testBerth) time.Duration {
	b.Helper()
	start := time.Now()
	img, err := remote.Image(tb.ref(ref))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := img.RawConfigFile(); err != nil {
		b.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, rc)
		rc.Close()
	}
	return time.Since(start)
}

// BenchmarkPolicySignatureCost measures what require_signature costs a
// pull, against the same pull through a berth without a policy, in one
// run: cold (each image new to both berths; the upstream 10 ms away at
// 10 MiB/s, the signature's manifest and payload crossing that link too)
// and warm (everything cached). It reports both times and their ratios
// (goal: cold ≤ 1.2×, warm ≤ 1.05×).
func BenchmarkPolicySignatureCost(b *testing.B) {
	up := newFakeUpstream(b)
	key := newSigner(b)
	plain := newTestBerth(b, up)
	signed := newTestBerth(b, up, withSignatures(key.verifier(b)))
	var coldPlain, coldSigned, warmPlain, warmSigned time.Duration
	var colds, warms int
	i := 0
	for b.Loop() {
		i++
		up.mu.Lock()
		up.latency, up.rate = 0, 0
		up.mu.Unlock()
		img := randomImage(b, 1<<20, 3)
		tag := "v" + string(rune('a'+i%26)) + time.Now().Format("150405.000000")
		d := up.push("app", tag, img)
		key.sign(b, up, "app", d, d)
		up.mu.Lock()
		up.latency, up.rate = 10*time.Millisecond, 10<<20
		up.mu.Unlock()
		ref := "app@" + d.String()
		// Alternate which goes first: neither gains from the other's
		// warm-up of the upstream.
		if i%2 == 0 {
			coldPlain += pullAll(b, ref, plain)
			coldSigned += pullAll(b, ref, signed)
		} else {
			coldSigned += pullAll(b, ref, signed)
			coldPlain += pullAll(b, ref, plain)
		}
		colds++
		for range 20 {
			warmPlain += pullAll(b, ref, plain)
			warmSigned += pullAll(b, ref, signed)
			warms++
		}
	}
	per := func(d time.Duration, n int) float64 { return float64(d.Microseconds()) / 1000 / float64(max(n, 1)) }
	b.ReportMetric(per(coldPlain, colds), "cold-plain-ms")
	b.ReportMetric(per(coldSigned, colds), "cold-signed-ms")
	b.ReportMetric(float64(coldSigned)/float64(max(coldPlain, 1)), "cold-ratio")
	b.ReportMetric(per(warmPlain, warms), "warm-plain-ms")
	b.ReportMetric(per(warmSigned, warms), "warm-signed-ms")
	b.ReportMetric(float64(warmSigned)/float64(max(warmPlain, 1)), "warm-ratio")
}
