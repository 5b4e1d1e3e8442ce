//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/faultproxy"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// totals sums what the counting proxy sent for blob GETs.
func (u *upstreamRegistry) totals() (gets int, bytes int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for d, n := range u.blobGets {
		gets += n
		bytes += u.blobBytes[d]
	}
	return gets, bytes
}

// fillSource pushes repos × tags images to up (each a layer shared by a
// tenth of the repositories and one of its own) and returns "repo:tag" →
// digest.
func fillSource(t *testing.T, up *upstreamRegistry, repos, tags int, size int64) map[string]string {
	t.Helper()
	var bases []v1.Layer
	for range max(repos/10, 1) {
		l, err := random.Layer(size, "application/vnd.docker.image.rootfs.diff.tar.gzip")
		if err != nil {
			t.Fatal(err)
		}
		bases = append(bases, l)
	}
	want := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for r := range repos {
		for tg := range tags {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				own, _ := random.Layer(size/2, "application/vnd.docker.image.rootfs.diff.tar.gzip")
				img, _ := mutate.AppendLayers(empty.Image, bases[r%len(bases)], own)
				cf, _ := img.ConfigFile()
				cf = cf.DeepCopy()
				cf.OS, cf.Architecture, cf.Config.Cmd = "linux", "amd64", []string{"/bin/true"}
				img, _ = mutate.ConfigFile(img, cf)
				ref := fmt.Sprintf("team/app-%02d:v1.%d.0", r, tg)
				if err := remote.Write(up.ref(t, ref), img); err != nil {
					t.Errorf("push %s: %v", ref, err)
					return
				}
				d, _ := img.Digest()
				mu.Lock()
				want[ref] = d.String()
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	return want
}

// checkDigests HEADs every ref of want in berth's addr/prefix.
func checkDigests(t *testing.T, addr, prefix string, want map[string]string) {
	t.Helper()
	bad := 0
	for ref, d := range want {
		r, err := name.ParseReference(addr+"/"+prefix+ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		desc, err := remote.Head(r)
		if err != nil || desc.Digest.String() != d {
			if bad++; bad <= 5 {
				t.Errorf("%s in the target: %v %v, want %s", ref, desc, err, d)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d images differ in the target", bad, len(want))
	}
}

var summaryRe = regexp.MustCompile(`(\d+) repositories, (\d+) tags copied, (\d+) unchanged, (\d+) blobs \(([^)]*)\) fetched, (\d+) linked, (\d+) deleted, (\d+) errors`)

// TestReplicateFromDistribution: a migration off another registry with
// berth replicate --from. Distribution's registry holds 50 repositories
// × 3 tags, a multi-platform index, a cosign signature and an SBOM oras
// attached (distribution v3 has no referrers API: both are tags); its
// catalog pages by 20. After one run every digest is equal in berth and
// crane, skopeo and Docker pull from it; cosign verifies the signature
// there; a second run moves 0 blob bytes.
func TestReplicateFromDistribution(t *testing.T) {
	clientRow(t, "crane", "replicate --from distribution: 150 images, pulled from the target")
	clientRow(t, "skopeo", "copy of a replicated image")
	clientRow(t, "docker", "pull of a replicated image (registry-mirrors)")
	up := startRegistryConfig(t, "", "catalog:\n  maxentries: 20\n")
	want := fillSource(t, up, 50, 3, 64<<10)
	want["multi:v1"] = up.pushIndex(t, "multi:v1", map[string]v1.Image{
		"amd64": testImage(t, "amd64", 1, 32<<10), "arm64": testImage(t, "arm64", 1, 32<<10)}).String()
	key := newCosignKey(t)
	key.sign(t, up.addr+"/team/app-00@"+want["team/app-00:v1.0.0"], false)
	work := t.TempDir()
	os.WriteFile(filepath.Join(work, "sbom.json"), []byte(`{"spdxVersion":"SPDX-2.3"}`), 0o644)
	out, errOut, err := runIn(work, time.Minute, []string{"HOME=" + work}, tool("oras"), "attach", "--plain-http", "--artifact-type", "application/spdx+json",
		"--format", "json", up.addr+"/team/app-01:v1.0.0", "sbom.json:application/spdx+json")
	var sbom struct {
		Digest string `json:"digest"`
	}
	if err != nil || json.Unmarshal([]byte(out), &sbom) != nil || sbom.Digest == "" {
		t.Fatalf("oras attach: %v\n%s%s", err, out, errOut)
	}

	b := startBerth(t, `default_repository = "internal"
[[repository]]
name = "internal"
kind = "hosted"
anonymous_pull = true
`)
	replicate := func() (string, time.Duration) {
		t.Helper()
		start := time.Now()
		out := run(t, 5*time.Minute, nil, berthBin, "replicate", "--server", b.admin(), "--from", "http://"+up.proxy, "--to", "internal")
		return out, time.Since(start)
	}
	out1, took1 := replicate()
	gets1, bytes1 := up.totals()
	m := summaryRe.FindStringSubmatch(out1)
	if m == nil || m[1] != "51" || m[8] != "0" {
		t.Fatalf("first run: want 51 repositories and no error:\n%s", tail(out1, 3000))
	}
	t.Logf("first run: %s in %s; %d blob GETs, %d bytes at the source's proxy", m[0], took1.Round(time.Millisecond), gets1, bytes1)
	checkDigests(t, b.addr, "", want)

	// Clients pull from the target.
	ref := b.addr + "/team/app-07:v1.2.0"
	run(t, time.Minute, nil, tool("crane"), "pull", "--insecure", ref, filepath.Join(t.TempDir(), "x.tar"))
	run(t, 2*time.Minute, noNet, "skopeo", "copy", "--src-tls-verify=false", "docker://"+ref, "dir:"+t.TempDir())
	run(t, time.Minute, nil, tool("crane"), "pull", "--insecure", "--platform", "linux/arm64", b.addr+"/multi:v1", filepath.Join(t.TempDir(), "y.tar"))
	d := startDockerd(t, b.addr)
	d.docker(t, "pull", "team/app-07:v1.2.0")
	if got := d.docker(t, "image", "inspect", "--format", "{{index .RepoDigests 0}}", "team/app-07:v1.2.0"); !strings.Contains(got, want["team/app-07:v1.2.0"]) {
		t.Errorf("docker pulled %s, want %s", got, want["team/app-07:v1.2.0"])
	}
	// The signature and the SBOM came along.
	if out, err := runErr(2*time.Minute, key.env(), tool("cosign"), "verify", "--key", key.pub(), "--insecure-ignore-tlog", "--allow-insecure-registry",
		b.addr+"/team/app-00@"+want["team/app-00:v1.0.0"]); err != nil {
		t.Errorf("cosign verify in the target: %v\n%s", err, out)
	}
	if out := run(t, time.Minute, []string{"HOME=" + work}, tool("oras"), "discover", "--plain-http", "--format", "json", b.addr+"/team/app-01:v1.0.0"); !strings.Contains(out, sbom.Digest) {
		t.Errorf("oras discover in the target does not list the SBOM %s:\n%s", sbom.Digest, out)
	}

	// A second run over the unchanged source moves no blob byte.
	out2, took2 := replicate()
	gets2, bytes2 := up.totals()
	m2 := summaryRe.FindStringSubmatch(out2)
	if m2 == nil || m2[2] != "0" || m2[4] != "0" || gets2 != gets1 || bytes2 != bytes1 {
		t.Fatalf("second run: %d blob GETs and %d bytes more:\n%s", gets2-gets1, bytes2-bytes1, tail(out2, 2000))
	}
	t.Logf("second run: %s in %s; 0 blob GETs, 0 bytes", m2[0], took2.Round(time.Millisecond))
}

// TestReplicateResumesAfterKill: a configured rule copies a source over a
// capped link; berth is killed (-9) mid-run and started again: the rule
// resumes and fetches again only the blobs in flight at the kill.
func TestReplicateResumesAfterKill(t *testing.T) {
	up := startRegistry(t)
	want := fillSource(t, up, 10, 3, 512<<10) // 30 images, ~10 MiB
	cfg := fmt.Sprintf(`default_repository = "internal"
[[repository]]
name = "internal"
kind = "hosted"
anonymous_pull = true

[[replicate]]
name = "migrate"
from = "http://%s"
to = "internal"
max_upstream_bandwidth = "4MB/s"
concurrency = 2
`, up.proxy)
	b := startBerth(t, cfg)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if gets, _ := up.totals(); gets >= 12 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the rule did not start copying")
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.proc.stop(syscall.SIGKILL, 10*time.Second)
	before := map[string]int{}
	up.mu.Lock()
	for d, n := range up.blobGets {
		before[d] = n
	}
	up.mu.Unlock()
	_, bytesBefore := up.totals()

	b2 := launchBerth(t, cfg, "", b.data, nil)
	waitHTTP(t, "http://"+b2.addr+"/healthz", 20*time.Second)
	deadline = time.Now().Add(2 * time.Minute)
	for b2.metric(t, "berth_replicate_last_success_timestamp_seconds", `rule="migrate"`) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the resumed rule did not finish")
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkDigests(t, b2.addr, "", want)
	refetched := 0
	up.mu.Lock()
	distinct := len(up.blobGets)
	for d := range before {
		if up.blobGets[d] > 1 {
			refetched++
		}
	}
	up.mu.Unlock()
	_, bytesAll := up.totals()
	t.Logf("killed after %d of %d blobs (%d bytes); the resumed run fetched %d bytes more; %d blobs fetched again", len(before), distinct, bytesBefore, bytesAll-bytesBefore, refetched)
	if refetched > 2 { // concurrency: the blobs in flight at the kill
		t.Errorf("%d blobs fetched again after the restart, want at most the 2 in flight", refetched)
	}
}

// TestReplicaFollowsPrimary: a replica's hosted repository follows a
// primary's by a rule that runs at start and whenever the primary's
// webhook tells it something changed (every = "1h": no polling in the
// test's time): a new tag arrives, a deleted one goes, and with the
// primary down the replica serves everything it had.
func TestReplicaFollowsPrimary(t *testing.T) {
	const token = "e2e-notify-token-0123456789"
	replicaAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	primary := startBerth(t, fmt.Sprintf(`default_repository = "local"
[[repository]]
name = "local"
kind = "hosted"
anonymous_pull = true
anonymous_push = true   # the test pushes without credentials

[[webhook]]
name = "replica"
url = "http://%s/replicate/notify/primary"
actions = ["push", "delete", "tag_moved"]
headers = { Authorization = "Bearer %s" }
`, replicaAddr, token))
	digest := map[string]string{}
	push := func(tag string) {
		img := writeImageTar(t, testImage(t, "amd64", 1, 64<<10))
		run(t, time.Minute, nil, tool("crane"), "push", "--insecure", img, primary.addr+"/team/app:"+tag)
		digest[tag] = strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", primary.addr+"/team/app:"+tag))
	}
	for _, tag := range []string{"v1", "v2", "v3"} {
		push(tag)
	}
	replica := launchBerth(t, fmt.Sprintf(`default_repository = "internal"
[[repository]]
name = "internal"
kind = "hosted"
anonymous_pull = true

[[replicate]]
name = "primary"
from = "http://%s"
to = "internal"
every = "1h"            # the primary's webhook says when
notify_token = "%s"
delete = true           # a tag deleted on the primary goes here too
`, primary.addr, token), replicaAddr, "", nil)
	waitHTTP(t, "http://"+replica.addr+"/healthz", 20*time.Second)
	tagsAre := func(want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, _ := runErr(30*time.Second, nil, tool("crane"), "ls", "--insecure", replica.addr+"/team/app")
			if got := strings.Join(strings.Fields(out), ","); got == want {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("the replica's tags are %s, want %s", got, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	tagsAre("v1,v2,v3")
	push("v4")
	run(t, time.Minute, nil, "curl", "-sf", "-X", "DELETE", "http://"+primary.addr+"/v2/team/app/manifests/v1")
	tagsAre("v2,v3,v4")
	if n := replica.metric(t, "berth_replicate_images_total", `rule="primary"`); n != 4 {
		t.Errorf("the replica copied %v images, want 4", n)
	}
	primary.proc.stop(syscall.SIGTERM, 20*time.Second)
	for _, tag := range []string{"v2", "v3", "v4"} {
		ref := replica.addr + "/team/app:" + tag
		run(t, time.Minute, nil, tool("crane"), "pull", "--insecure", ref, filepath.Join(t.TempDir(), "x.tar"))
		if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", ref)); got != digest[tag] {
			t.Errorf("%s from the replica with the primary down: %s, want %s", tag, got, digest[tag])
		}
	}
}

// TestReplicateThroughFaults: distribution's registry behind a proxy
// that breaks it. Corrupt blobs are refused and nothing is stored; a
// 429 on every manifest is an error naming each repository and tag; a
// blob cut once is fetched again within the run; then everything
// arrives, and berth verify finds the store whole.
func TestReplicateThroughFaults(t *testing.T) {
	up := startRegistry(t)
	want := fillSource(t, up, 3, 1, 64<<10)
	fp, err := faultproxy.Start(up.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fp.Close() })
	b := startBerth(t, `default_repository = "internal"
[[repository]]
name = "internal"
kind = "hosted"
anonymous_pull = true
`)
	replicate := func() (string, error) {
		return runErr(3*time.Minute, nil, berthBin, "replicate", "--server", b.admin(), "--from", "http://"+fp.Addr(), "--to", "internal")
	}
	fp.Set(faultproxy.Corrupt, faultproxy.Blobs)
	out, err := replicate()
	if err == nil || strings.Count(out, "does not match") < 3 {
		t.Fatalf("corrupt blobs: %v\n%s", err, out)
	}
	if list, _ := runErr(time.Minute, nil, berthBin, "ls", "--server", b.admin(), "internal"); strings.Contains(list, "team/app") {
		t.Fatalf("images stored from corrupt blobs:\n%s", list)
	}
	fp.Set(faultproxy.RateLimited, faultproxy.Manifests)
	out, err = replicate()
	for ref := range want {
		if err == nil || !strings.Contains(out, ref+": ") || !strings.Contains(out, "429") {
			t.Fatalf("429s: want an error naming %s with its 429 (%v):\n%s", ref, err, out)
		}
	}
	fp.Set(faultproxy.ResetOnce, faultproxy.Blobs)
	if out, err = replicate(); err != nil || !strings.Contains(out, "3 tags copied") || !strings.Contains(out, "0 errors") {
		t.Fatalf("after the faults: %v\n%s", err, out)
	}
	checkDigests(t, b.addr, "", want)
	b.proc.stop(syscall.SIGTERM, 20*time.Second)
	if out, err := runErr(2*time.Minute, nil, berthBin, "verify", "--data-dir", b.data); err != nil || !strings.Contains(out, " 0 problems") {
		t.Fatalf("berth verify after the faults: %v\n%s", err, out)
	}
}
