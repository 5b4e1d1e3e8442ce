//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/faultproxy"
)

// TestResumeE2E: the built binary in front of distribution's registry
// behind the fault proxy, whose first blob GET is cut halfway with a TCP
// reset: berth continues the download from the last byte on disk, crane
// gets the upstream's digests, and the resume is counted. Once as one
// stream per blob, once in parallel ranges (a 24 MiB layer in 4 MiB
// ranges after the first 8 MiB).
func TestResumeE2E(t *testing.T) {
	up := startRegistry(t)
	want := up.push(t, "library/big:v1", testImage(t, "amd64", 1, 24<<20))
	for _, tc := range []struct {
		name, settings string
		gets           int // blob GETs at the upstream, at least
	}{
		{"one stream", "range_fetch_parallel = 1", 2},
		{"ranges", "range_fetch_min = \"8MiB\"\nrange_fetch_chunk = \"4MiB\"", 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp, err := faultproxy.Start(up.addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { fp.Close() })
			// A path on which one stream gets 16 MB/s: ranges are judged
			// slow and run in parallel (on bare loopback one stream
			// fetches the rest).
			fp.SetStreamRate(16e6)
			b := startBerth(t, fmt.Sprintf(`
[[repository]]
name = "up"
kind = "proxy"
url = "http://%s"
library_prefix = true
eager_layers = false
%s
`, fp.Addr(), tc.settings))
			fp.Set(faultproxy.ResetOnce, faultproxy.Blobs)
			out := run(t, 2*time.Minute, nil, tool("crane"), "pull", "--insecure", b.addr+"/big:v1", filepath.Join(t.TempDir(), "big.tar"))
			if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", b.addr+"/big:v1")); got != want.String() {
				t.Fatalf("digest through a cut stream: %s, want %s (%s)", got, want, out)
			}
			if n := b.metric(t, "berth_upstream_resumed_total"); n != 1 {
				t.Errorf("berth_upstream_resumed_total = %v, want 1", n)
			}
			if n := fp.Count("GET blob"); n < tc.gets {
				t.Errorf("%d blob GETs at the upstream, want at least %d (the cut one, the resume and the ranges)", n, tc.gets)
			}
			t.Logf("%s: %d blob GETs at the upstream", tc.name, fp.Count("GET blob"))
		})
	}
}
