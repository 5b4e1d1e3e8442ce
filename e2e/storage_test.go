//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// startBerthAt starts berth with a config on addr ("": one berth picks,
// read back) and data dir.
func startBerthAt(t *testing.T, config, addr, dataDir string) *berth {
	t.Helper()
	b := launchBerth(t, config, addr, dataDir, nil)
	waitHTTP(t, "http://"+b.addr+"/healthz", 20*time.Second)
	return b
}

func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := runErr(time.Minute, nil, "mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir); err != nil {
		t.Fatalf("mount tmpfs (the disk-full test needs root): %v %s", err, out)
	}
	t.Cleanup(func() { runIn("", time.Minute, nil, "umount", "-l", dir) })
	return dir
}

// TestDiskFull: with the data dir on a small tmpfs, a pull bigger than the
// free space is still served (passed through from upstream), nothing
// partial is kept, a metric and a log line say why, and caching resumes by
// itself once there is room.
func TestDiskFull(t *testing.T) {
	up := startRegistry(t)
	img := testImage(t, "amd64", 1, 12<<20)
	want := up.push(t, "library/big:v1", img)
	dataDir := mountTmpfs(t, "6m")
	b := startBerthAt(t, proxyConfig(up.proxy), "", dataDir)
	ref := b.addr + "/big:v1"

	run(t, 2*time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", ref)
	if n := b.metric(t, "berth_pass_through_total", `reason="store_error"`); n < 1 {
		t.Fatalf("pass-through not counted: %v", n)
	}
	if log, _ := os.ReadFile(b.proc.log); !strings.Contains(string(log), "passing upstream through") {
		t.Error("no log line for the pass-through")
	}
	if stored := b.metric(t, "berth_store_bytes"); stored > 1<<20 {
		t.Fatalf("partial content kept: %v bytes", stored)
	}
	entries, _ := os.ReadDir(filepath.Join(dataDir, "tmp"))
	if len(entries) != 0 {
		t.Fatalf("temp files left on the full disk: %d", len(entries))
	}

	// Space returns: the next pull caches.
	if out, err := runErr(time.Minute, nil, "mount", "-o", "remount,size=64m", dataDir); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	run(t, 2*time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", ref)
	if stored := b.metric(t, "berth_store_bytes"); stored < 12<<20 {
		t.Fatalf("not cached after space returned: %v bytes", stored)
	}
	gets := up.gets(mustLayer(t, img))
	run(t, 2*time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", ref)
	if up.gets(mustLayer(t, img)) != gets {
		t.Fatal("served from upstream again after caching resumed")
	}
	if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", ref)); got != want.String() {
		t.Fatalf("digest %s", got)
	}
}

func mustLayer(t *testing.T, img v1.Image) string {
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	return d.String()
}

// mustLayers lists img's layer digests.
func mustLayers(t *testing.T, img v1.Image) []string {
	layers, _ := img.Layers()
	var out []string
	for _, l := range layers {
		d, _ := l.Digest()
		out = append(out, d.String())
	}
	return out
}

// TestEvictionAndGCOnline: with a small max_size, pulls keep the cache
// under it while serving; deleting a hosted manifest and asking the
// running server through `berth gc` frees its blobs.
func TestEvictionAndGCOnline(t *testing.T) {
	up := startRegistry(t)
	var imgs []string
	for i := 0; i < 6; i++ {
		up.push(t, fmt.Sprintf("library/img%d:v1", i), testImage(t, "amd64", 1, 3<<20))
		imgs = append(imgs, fmt.Sprintf("img%d:v1", i))
	}
	cfg := proxyConfig(up.proxy) + `
[storage]
max_size = "10MiB"
gc_grace = "1s"

[[repository]]
name = "local"
kind = "hosted"
anonymous_pull = true
anonymous_push = true   # a scratch registry for the test
`
	b := startBerth(t, cfg)
	for _, img := range imgs {
		run(t, 2*time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", b.addr+"/"+img)
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.metric(t, "berth_store_bytes") > 9.5*(1<<20) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := b.metric(t, "berth_store_bytes"); got > 9.5*(1<<20) {
		t.Fatalf("store at %v bytes, over the high-water mark", got)
	}
	if n := b.metric(t, "berth_evictions_total"); n < 1 {
		t.Fatal("nothing evicted")
	}
	// Evicted images are fetched again on demand.
	run(t, 2*time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", b.addr+"/"+imgs[0])

	// Hosted: push, delete the manifest, collect.
	ref := b.addr + "/local/app:v1"
	r, _ := name.ParseReference(ref, name.Insecure)
	if err := remote.Write(r, testImage(t, "amd64", 1, 1<<20)); err != nil {
		t.Fatal(err)
	}
	dg := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", ref))
	run(t, time.Minute, nil, tool("crane"), "delete", "--insecure", b.addr+"/local/app@"+dg)
	time.Sleep(1100 * time.Millisecond) // past gc_grace
	cfgPath := filepath.Join(b.dir, "berth.toml")
	out := run(t, time.Minute, nil, berthBin, "gc", "--config", cfgPath, "--data-dir", filepath.Join(b.dir, "data"))
	if !strings.Contains(out, "gc: freed") || strings.Contains(out, "freed 0 blobs") {
		t.Fatalf("berth gc: %s", out)
	}
	t.Log(strings.TrimSpace(out))
}

// TestCrashSafety kills berth with SIGKILL at random moments during
// concurrent pulls and pushes, restarts it each time, and finally checks
// with `berth verify` and by pulling every image that was reported
// stored.
func TestCrashSafety(t *testing.T) {
	up := startRegistry(t)
	var upstreamImgs []string
	for i := 0; i < 4; i++ {
		up.push(t, fmt.Sprintf("library/crash%d:v1", i), testImage(t, "amd64", 2, 2<<20))
		upstreamImgs = append(upstreamImgs, fmt.Sprintf("crash%d:v1", i))
	}
	cfg := proxyConfig(up.proxy) + `
[[repository]]
name = "local"
kind = "hosted"
anonymous_pull = true
anonymous_push = true   # a scratch registry for the test
`
	dataDir := t.TempDir()
	b := startBerthAt(t, cfg, "", dataDir)
	addr := b.addr // restarts bind the same address: the clients keep it

	var stop atomic.Bool
	var mu sync.Mutex
	pushed := map[string]v1.Hash{} // refs whose push was acknowledged
	var wg sync.WaitGroup
	var pushes, pulls atomic.Int64
	for w := 0; w < 3; w++ { // pullers
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load() && i < 10000; i++ {
				r, _ := name.ParseReference(addr+"/"+upstreamImgs[rand.IntN(len(upstreamImgs))], name.Insecure)
				if img, err := remote.Image(r); err == nil && validate.Image(img) == nil {
					pulls.Add(1)
				}
			}
		}()
	}
	for w := 0; w < 2; w++ { // pushers
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load() && i < 10000; i++ {
				ref := fmt.Sprintf("%s/local/w%d/img%d:v1", addr, w, i)
				r, _ := name.ParseReference(ref, name.Insecure)
				img := testImage(t, "amd64", 2, 512<<10)
				if err := remote.Write(r, img); err == nil {
					d, _ := img.Digest()
					mu.Lock()
					pushed[ref] = d
					mu.Unlock()
					pushes.Add(1)
				}
			}
		}()
	}
	kills, minutes := 25, 3 // make soak raises both
	if v, err := strconv.Atoi(os.Getenv("E2E_KILLS")); err == nil && v > 0 {
		kills = v
	}
	if v, err := strconv.Atoi(os.Getenv("E2E_CRASH_MINUTES")); err == nil && v > 0 {
		minutes = v
	}
	deadline := time.Now().Add(time.Duration(minutes) * time.Minute)
	for i := 0; i < kills && time.Now().Before(deadline); i++ {
		time.Sleep(time.Duration(150+rand.IntN(700)) * time.Millisecond)
		b.proc.stop(syscall.SIGKILL, 5*time.Second)
		b = startBerthAt(t, cfg, addr, dataDir)
	}
	stop.Store(true)
	wg.Wait()
	if err := b.proc.stop(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	out, err := runErr(5*time.Minute, nil, berthBin, "verify", "--data-dir", dataDir)
	t.Logf("%d SIGKILLs during %d acknowledged pushes and %d pulls; verify: %s", kills, pushes.Load(), pulls.Load(), lastLine(out))
	if err != nil || !strings.Contains(out, "0 problems") {
		t.Fatalf("berth verify after crashes: %v\n%s", err, out)
	}
	if pushes.Load() == 0 || pulls.Load() == 0 {
		t.Fatalf("the crash test did no work: %d pushes, %d pulls", pushes.Load(), pulls.Load())
	}
	startBerthAt(t, cfg, addr, dataDir)
	for ref, want := range pushed {
		got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", ref))
		if got != want.String() {
			t.Errorf("%s: digest %s after crashes, want %s", ref, got, want)
		}
	}
	for _, img := range upstreamImgs {
		run(t, 2*time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", addr+"/"+img)
	}
	// Every acknowledged push is whole.
	for ref := range pushed {
		r, _ := name.ParseReference(ref, name.Insecure)
		img, err := remote.Image(r)
		if err == nil {
			err = validate.Image(img)
		}
		if err != nil {
			t.Errorf("%s: %v", ref, err)
		}
	}
	_ = http.StatusOK
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestPushFillsDisk: a push that fills the disk (an 8 MiB tmpfs) is
// answered 507 STORAGE_FULL, not blamed on the client; it is logged at
// ERROR, counted and shown on the status page; nothing partial stays and
// a smaller push works afterwards.
func TestPushFillsDisk(t *testing.T) {
	dataDir := mountTmpfs(t, "8m")
	b := startBerthAt(t, `
[[repository]]
name = "local"
kind = "hosted"
anonymous_push = true
anonymous_pull = true
`, "", dataDir)
	out, err := runErr(2*time.Minute, nil, tool("crane"), "push", "--insecure", writeImageTar(t, testImage(t, "amd64", 1, 12<<20)), b.addr+"/local/big:v1")
	if err == nil {
		t.Fatal("a 12 MiB push into 8 MiB succeeded")
	}
	if !strings.Contains(out, "STORAGE_FULL") && !strings.Contains(out, "507") {
		t.Errorf("crane was not told the disk is full: %s", out)
	}
	if n := b.metric(t, "berth_disk_full_total"); n < 1 {
		t.Errorf("berth_disk_full_total = %v", n)
	}
	if log, _ := os.ReadFile(b.proc.log); !strings.Contains(string(log), "level=ERROR msg=\"disk full") {
		t.Error("no ERROR line for the full disk")
	}
	resp, err := http.Get("http://" + b.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "disk full") {
		t.Error("the status page does not show the full disk")
	}
	small := testImage(t, "amd64", 1, 256<<10)
	run(t, 2*time.Minute, nil, tool("crane"), "push", "--insecure", writeImageTar(t, small), b.addr+"/local/small:v1")
	want, _ := small.Digest()
	if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", b.addr+"/local/small:v1")); got != want.String() {
		t.Errorf("push after the full disk: %s, want %s", got, want)
	}
}

// writeImageTar saves img as a tarball crane can push.
func writeImageTar(t *testing.T, img v1.Image) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img.tar")
	if err := tarball.WriteToFile(p, name.MustParseReference("example.invalid/img:v1"), img); err != nil {
		t.Fatal(err)
	}
	return p
}
