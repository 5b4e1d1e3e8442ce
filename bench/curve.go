package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-registry/berth/store"
)

// The cost curve: how berth's costs grow with its store. For each size
// a store is filled directly through the store API (store.Loader: no
// network, the same bytes every run) with n blobs: images of a config
// and eight layers, one manifest per ten blobs, ten tags a repository,
// every fifth repository hosted (pushed) and the rest cached from a
// proxy, and one blob in ten that no manifest names (for GC to free).
// Then, for berth on that store: start-up to the first manifest answered,
// idle RSS, the bbolt file's size, the manifest p99 of a warm hammer when
// idle and while a full GC pass runs (online), and offline: an eviction
// pass that frees 10% of the cached bytes, verify of the index, ls, and
// a backup. The exponent of each cost is the slope of log(cost) over
// log(n) through the points.

var (
	curveSizes = flag.String("curve", "10000,100000,1000000", "cost curve: store sizes in blobs (empty: skip)")
	curveDir   = flag.String("curve-dir", "", "cost curve: where the stores are built (default: -out)")
)

const curveBlobSize = 1 << 10

// curveStore is a filled store's shape.
type curveStore struct {
	dir       string // data dir
	blobs     int
	manifests int
	repos     []string // image paths as clients name them: "curve/app-00001" or "local/app-00005"
}

// curveFill fills a new store under dir with n blobs.
func curveFill(dir string, n int) (*curveStore, error) {
	st, err := store.Open(dir, store.Options{ManualEviction: true})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ld := store.NewLoader(st, 20_000)
	cs := &curveStore{dir: dir}
	blob := func(i int) ([]byte, store.Digest) {
		b := make([]byte, curveBlobSize)
		copy(b, fmt.Sprintf("berth cost curve blob %d\n", i))
		for j := 64; j < len(b); j++ {
			b[j] = byte(i*31 + j)
		}
		return b, store.DigestOf(b)
	}
	next := 0
	for m := 0; next < n; m++ {
		repoN := m / 10
		hosted := repoN%5 == 4
		path, client := fmt.Sprintf("hub/curve/app-%05d", repoN), fmt.Sprintf("curve/app-%05d", repoN)
		kind := store.LinkFetched
		if hosted {
			path, client, kind = fmt.Sprintf("local/app-%05d", repoN), fmt.Sprintf("local/app-%05d", repoN), store.LinkPushed
		}
		if m%10 == 0 {
			cs.repos = append(cs.repos, client)
		}
		var refs []store.Digest
		var descs []string
		for k := 0; k < 10 && next < n; k++ {
			b, d := blob(next)
			next++
			if k == 9 { // named by no manifest: garbage
				if err := ld.Blob(d, b, store.Link{Repo: path, Kind: kind}); err != nil {
					return nil, err
				}
				cs.blobs++
				continue
			}
			if err := ld.Blob(d, b, store.Link{Repo: path, Kind: kind}); err != nil {
				return nil, err
			}
			cs.blobs++
			refs = append(refs, d)
			mt := "application/vnd.oci.image.layer.v1.tar+gzip"
			if k == 0 {
				mt = "application/vnd.oci.image.config.v1+json"
			}
			descs = append(descs, fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d}`, mt, d, len(b)))
		}
		if len(descs) < 2 {
			break
		}
		body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}`,
			descs[0], strings.Join(descs[1:], ",")))
		man := store.Manifest{Digest: store.DigestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body, Hosted: hosted}
		if err := ld.Manifest(path, man, fmt.Sprintf("v%d", m%10), refs); err != nil {
			return nil, err
		}
		cs.manifests++
	}
	return cs, ld.Flush(context.Background())
}

// curveRun measures one size.
func (b *bench) curveRun(n int) error {
	root := *curveDir
	if root == "" {
		root = *outDir
	}
	dir, err := os.MkdirTemp(root, fmt.Sprintf("curve-%d-", n))
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	data := filepath.Join(dir, "data")
	t0 := time.Now()
	cs, err := curveFill(data, n)
	if err != nil {
		return fmt.Errorf("cost curve: filling %d blobs: %w", n, err)
	}
	log.Printf("cost curve: %d blobs, %d manifests, %d repositories filled in %s", cs.blobs, cs.manifests, len(cs.repos), time.Since(t0).Round(time.Millisecond))
	label := func(what string) string { return "cost curve: " + what }
	b.curvePoint(label("fill through store.Loader: s"), n, time.Since(t0).Seconds())
	if fi, err := os.Stat(filepath.Join(data, "index.db")); err == nil {
		b.curvePoint(label("bbolt file: MiB"), n, float64(fi.Size())/(1<<20))
	}
	port := freePort()
	cfg := filepath.Join(dir, "berth.toml")
	// The proxy's upstream is a closed port: every answer comes from the store.
	os.WriteFile(cfg, []byte(fmt.Sprintf(`default_repository = "hub"
log_level = "warn"
data_dir = %q
[[repository]]
name = "hub"
kind = "proxy"
url = "http://127.0.0.1:1"
tag_ttl = "87600h"
[[repository]]
name = "local"
kind = "hosted"
anonymous_pull = true
`, data)), 0o644)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	probe := fmt.Sprintf("http://%s/v2/%s/manifests/v1", addr, cs.repos[len(cs.repos)/2])
	t1 := time.Now()
	cmd, err := b.startServer(*berthBin, "serve", "--config", cfg, "--listen", addr)
	if err != nil {
		return err
	}
	defer stop(cmd)
	if err := waitManifest(probe, 60*time.Second); err != nil {
		return fmt.Errorf("cost curve %d: %w", n, err)
	}
	b.curvePoint(label("start-up to the first manifest answered: ms"), n, ms(time.Since(t1)))
	time.Sleep(2 * time.Second)
	b.curvePoint(label("idle RSS: MiB"), n, rssMiB(cmd.Process.Pid))
	idle := hammer(addr, cs.repos, 3*time.Second, nil)
	b.curvePoint(label("manifest p99 idle: ms"), n, ms(percentile(idle, 0.99)))
	var gcTook time.Duration
	during := hammer(addr, cs.repos, 0, func() error {
		t := time.Now()
		out, err := exec.Command(*berthBin, "gc", "--config", cfg, "--grace", "0").CombinedOutput()
		gcTook = time.Since(t)
		if err != nil {
			return fmt.Errorf("berth gc: %v: %s", err, out)
		}
		return nil
	})
	if gcTook == 0 {
		return fmt.Errorf("cost curve %d: gc did not run", n)
	}
	b.curvePoint(label("GC, full pass (online): s"), n, gcTook.Seconds())
	b.curvePoint(label("manifest p99 during GC: ms"), n, ms(percentile(during, 0.99)))
	b.curvePoint(label("manifest p99 during GC ÷ idle"), n, float64(percentile(during, 0.99))/float64(max(percentile(idle, 0.99), 1)))
	stop(cmd)
	if err := b.curveOffline(cfg, dir, n); err != nil {
		return err
	}
	return curveEvict(b, data, n)
}

// curveOffline times berth's offline commands on the store of cfg.
func (b *bench) curveOffline(cfg, dir string, n int) error {
	for _, c := range []struct {
		what string
		args []string
	}{
		{"verify, every blob re-hashed (offline): s", []string{"verify", "--config", cfg}},
		{"ls (offline): s", []string{"ls", "--config", cfg}},
		{"backup (offline): s", []string{"backup", "--config", cfg, "--out", filepath.Join(dir, "backup.db")}},
	} {
		t := time.Now()
		if out, err := exec.Command(*berthBin, c.args...).CombinedOutput(); err != nil {
			return fmt.Errorf("berth %s: %v: %.300s", c.args[0], err, out)
		}
		b.curvePoint("cost curve: "+c.what, n, time.Since(t).Seconds())
	}
	return nil
}

// curveEvict runs an eviction pass that frees 10% of the cached bytes
// (store API, offline: max_size set to the bytes held).
func curveEvict(b *bench, data string, n int) error {
	st, err := store.Open(data, store.Options{ManualEviction: true})
	if err != nil {
		return err
	}
	used, _ := st.Stats()
	st.Close()
	st, err = store.Open(data, store.Options{ManualEviction: true, MaxSize: used, HighWater: 0.95, LowWater: 0.9})
	if err != nil {
		return err
	}
	defer st.Close()
	t := time.Now()
	evicted, freed, err := st.Evict()
	if err != nil {
		return err
	}
	b.curvePoint("cost curve: eviction pass freeing 10% (offline): s", n, time.Since(t).Seconds())
	log.Printf("cost curve %d: eviction removed %d entries, %d bytes of %d", n, evicted, freed, used)
	return nil
}

// waitManifest polls url until it answers 200.
func waitManifest(url string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer 200 within %s", url, limit)
}

// hammer GETs manifests of repos by tag from 8 clients, for d or while
// during runs (when given), and returns every latency.
func hammer(addr string, repos []string, d time.Duration, during func() error) []time.Duration {
	stopAt := make(chan struct{})
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClient()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			var mine []time.Duration
			for {
				select {
				case <-stopAt:
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
					return
				default:
				}
				url := fmt.Sprintf("http://%s/v2/%s/manifests/v%d", addr, repos[r.IntN(len(repos))], r.IntN(10))
				t := time.Now()
				if _, _, _, err := fetch(c, url, false); err == nil {
					mine = append(mine, time.Since(t))
				}
			}
		}()
	}
	if during != nil {
		if err := during(); err != nil {
			log.Print(err)
		}
	} else {
		time.Sleep(d)
	}
	close(stopAt)
	wg.Wait()
	return lat
}

// rssMiB is the resident memory of pid now.
func rssMiB(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// curvePoint records a cost at store size n.
func (b *bench) curvePoint(metric string, n int, v float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.curve == nil {
		b.curve = map[string]map[int][]float64{}
	}
	if b.curve[metric] == nil {
		b.curve[metric] = map[int][]float64{}
	}
	b.curve[metric][n] = append(b.curve[metric][n], v)
}

// exponent is the least-squares slope of log(v) over log(n).
func exponent(points map[int][]float64) float64 {
	var xs, ys []float64
	for n, v := range points {
		if m := median(v); m > 0 {
			xs, ys = append(xs, math.Log(float64(n))), append(ys, math.Log(m))
		}
	}
	if len(xs) < 2 {
		return math.NaN()
	}
	var mx, my float64
	for i := range xs {
		mx, my = mx+xs[i], my+ys[i]
	}
	mx, my = mx/float64(len(xs)), my/float64(len(xs))
	var num, den float64
	for i := range xs {
		num += (xs[i] - mx) * (ys[i] - my)
		den += (xs[i] - mx) * (xs[i] - mx)
	}
	return num / den
}

// curveAll measures every size of -curve.
func (b *bench) curveAll() error {
	for _, f := range strings.Split(*curveSizes, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 100 {
			return fmt.Errorf("-curve: %q is not a store size of 100 blobs or more", f)
		}
		log.Printf("cost curve: %d blobs", n)
		if err := b.curveRun(n); err != nil {
			return err
		}
	}
	return nil
}
