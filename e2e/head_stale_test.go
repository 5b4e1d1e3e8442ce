//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestHeadOnlyClientServedStale: crane digest asks only HEAD for a tag.
// The first one caches the tag (one upstream GET); with the upstream
// down, after tag_ttl, crane digest still gets the digest (served stale),
// as a pulling client would. Before, that HEAD was passed upstream and
// nothing kept: the second crane digest failed with 503.
func TestHeadOnlyClientServedStale(t *testing.T) {
	clientRow(t, "crane", "crane digest (HEAD only) served stale with the upstream down")
	up := startRegistry(t)
	d := up.push(t, "library/tool:v1", testImage(t, "amd64", 1, 32<<10))
	b := startBerth(t, proxyConfig(up.proxy))
	ref := b.addr + "/library/tool:v1"
	if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", ref)); got != d.String() {
		t.Fatalf("crane digest: %q, want %s", got, d)
	}
	up.setDown(true)
	time.Sleep(1100 * time.Millisecond) // past tag_ttl (1s)
	if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", ref)); got != d.String() {
		t.Fatalf("crane digest with the upstream down: %q, want %s", got, d)
	}
	if n := b.metric(t, "berth_cache_results_total", `result="stale"`, `kind="manifest"`); n < 1 {
		t.Errorf("stale manifest answers %v, want >= 1", n)
	}
}
