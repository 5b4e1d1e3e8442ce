package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type seeded struct {
	big         string   // digest of the big layer in bench/big:v1
	multi       []string // layer digests of bench/multi:v1
	multiConfig string   // its config's digest
	multiMiB    float64
	small       []string // repositories with a small image tagged v1
}

func randomLayer(size int) v1.Layer {
	b := make([]byte, size)
	rand.Read(b)
	return static.NewLayer(b, types.OCILayer)
}

func image(layers ...v1.Layer) v1.Image {
	img, _ := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layers...)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	return img
}

// seed pushes the benchmark images to the upstream registry.
func (b *bench) seed(upAddr string) error {
	push := func(repo string, img v1.Image) error {
		ref, err := name.ParseReference(upAddr+"/"+repo, name.Insecure)
		if err != nil {
			return err
		}
		return remote.Write(ref, img)
	}
	s := &seeded{}
	big := randomLayer(*bigMiB << 20)
	d, _ := big.Digest()
	s.big = d.String()
	if err := push("bench/big:v1", image(big)); err != nil {
		return err
	}
	var layers []v1.Layer
	for i := 0; i < 8; i++ {
		l := randomLayer(16 << 20)
		d, _ := l.Digest()
		s.multi = append(s.multi, d.String())
		layers = append(layers, l)
	}
	s.multiMiB = 8 * 16
	multi := image(layers...)
	if err := push("bench/multi:v1", multi); err != nil {
		return err
	}
	cd, _ := multi.ConfigName()
	s.multiConfig = cd.String()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	sem := make(chan struct{}, 8)
	for i := 0; i < 200; i++ {
		repo := fmt.Sprintf("small/repo%03d", i)
		s.small = append(s.small, repo)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := push(repo+":v1", image(randomLayer(1024))); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	b.images = s
	return nil
}

// system is a registry under test.
type system struct {
	name  string
	addr  string
	pprof string // berth's --pprof address, with -trace
	pid   int
	stop  func()
}

// startBerth starts berth proxying the counting proxy, with a fresh data
// dir.
func (b *bench) startBerth(dataDir string) (*system, error) {
	return b.startBerthAt(dataDir, b.up.addr)
}

// startBerthAt starts berth proxying the registry at upAddr.
func (b *bench) startBerthAt(dataDir, upAddr string) (*system, error) {
	port := freePort()
	cfg := filepath.Join(dataDir, "..", fmt.Sprintf("berth-%d.toml", port))
	os.WriteFile(cfg, []byte(fmt.Sprintf(`default_repository = "hub"
log_level = "warn"
[[repository]]
name = "hub"
kind = "proxy"
url = "http://%s"
tag_ttl = "1h"
%s
`, upAddr, *berthExtra)), 0o644)
	args := []string{"serve", "--config", cfg, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data-dir", dataDir}
	pprof := ""
	if *traceDir != "" {
		pprof = fmt.Sprintf("127.0.0.1:%d", freePort())
		args = append(args, "--pprof", pprof)
	}
	cmd, err := b.startServer(*berthBin, args...)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if _, err := waitUp("http://" + addr + "/v2/"); err != nil {
		return nil, err
	}
	return &system{name: "berth", addr: addr, pprof: pprof, pid: cmd.Process.Pid, stop: func() { stop(cmd) }}, nil
}

// startDistribution starts distribution's registry in proxy mode.
func (b *bench) startDistribution(dataDir string) (*system, error) {
	return b.startDistributionAt(dataDir, b.up.addr)
}

// startDistributionAt starts distribution's proxy of the registry at upAddr.
func (b *bench) startDistributionAt(dataDir, upAddr string) (*system, error) {
	port := freePort()
	cfg := filepath.Join(dataDir, "..", fmt.Sprintf("distribution-%d.yml", port))
	os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: 127.0.0.1:%d
proxy:
  remoteurl: http://%s
  ttl: 168h
`, dataDir, port, upAddr)), 0o644)
	cmd, err := b.startServer(filepath.Join(*toolsDir, "registry"), "serve", cfg)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if _, err := waitUp("http://" + addr + "/v2/"); err != nil {
		return nil, err
	}
	return &system{name: "distribution", addr: addr, pid: cmd.Process.Pid, stop: func() { stop(cmd) }}, nil
}

// startNginx serves berth's blob files at the registry's blob URLs.
func (b *bench) startNginx(berthData string) (*system, error) {
	port := freePort()
	dir, _ := os.MkdirTemp(*outDir, "nginx")
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
user root;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  fastcgi_temp_path %[1]s;
  uwsgi_temp_path %[1]s;
  scgi_temp_path %[1]s;
  server {
    listen 127.0.0.1:%[2]d;
    root %[3]s/blobs;
    location ~ "^/v2/.+/blobs/sha256:([0-9a-f]{2})([0-9a-f]{62})$" {
      default_type application/octet-stream;
      try_files /sha256/$1/$1$2 =404;
    }
    location = /v2/ { return 200 "{}"; }
  }
}
`, dir, port, berthData)), 0o644)
	cmd, err := b.startServer("nginx", "-c", conf, "-p", dir)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if _, err := waitUp("http://" + addr + "/v2/"); err != nil {
		return nil, err
	}
	return &system{name: "nginx", addr: addr, pid: cmd.Process.Pid, stop: func() { stop(cmd) }}, nil
}

func (s *system) blobURL(repo, digest string) string {
	return "http://" + s.addr + "/v2/" + repo + "/blobs/" + digest
}

func (s *system) manifestURL(repo, ref string) string {
	return "http://" + s.addr + "/v2/" + repo + "/manifests/" + ref
}

// coldSingle: one client pulls bench/multi:v1 (manifest, then each layer
// in turn) from an empty cache.
func (b *bench) coldSingle(s *system) error {
	c := newClient()
	cpu0, up0 := cpuSeconds(s.pid), cpuSeconds(b.upProc.Process.Pid)
	srv0, others0 := cpuBusy()
	start := time.Now()
	if _, _, _, err := fetch(c, s.manifestURL("bench/multi", "v1"), false); err != nil {
		return err
	}
	var first time.Duration
	for i, d := range b.images.multi {
		ttfb, _, sum, err := fetch(c, s.blobURL("bench/multi", d), true)
		if err != nil {
			return err
		}
		if sum != d {
			return fmt.Errorf("%s: digest mismatch", s.name)
		}
		if i == 0 {
			first = ttfb
		}
	}
	wall := time.Since(start)
	b.record("cold 1 client, 8×16 MiB image: wall s", s.name, wall.Seconds())
	b.record("cold 1 client, 8×16 MiB image: MB/s", s.name, b.images.multiMiB*1.048576/wall.Seconds())
	b.record("cold 1 client: first layer byte ms", s.name, ms(first))
	if s.pid != 0 {
		b.record("cold 1 client: server CPU s", s.name, cpuSeconds(s.pid)-cpu0)
	}
	b.record("cold 1 client: upstream registry CPU s", s.name, cpuSeconds(b.upProc.Process.Pid)-up0)
	srv1, others1 := cpuBusy()
	b.record("cold 1 client: machine CPU s", s.name, srv1+others1-srv0-others0)
	// The client and the upstream share the CPUs not under test: a pull
	// that keeps them busy its whole wall time is bound by them, and no
	// server in between can end it sooner than the work it leaves there.
	if *srvCPUs != "" {
		b.record("cold 1 client: busy s of the client's and upstream's CPUs", s.name, others1-others0)
		b.record("cold 1 client: those CPUs busy ÷ wall", s.name, (others1-others0)/wall.Seconds())
	}
	return nil
}

// concurrentBlob has n clients GET the big blob at once.
func (b *bench) concurrentBlob(s *system, n int, hash bool) (wall time.Duration, ttfbs []time.Duration, err error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := make(chan error, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ttfb, size, sum, err := fetch(newClient(), s.blobURL("bench/big", b.images.big), hash)
			if err == nil && hash && sum != b.images.big {
				err = fmt.Errorf("%s: digest mismatch", s.name)
			}
			if err == nil && size != int64(*bigMiB)<<20 {
				err = fmt.Errorf("%s: short body %d", s.name, size)
			}
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			ttfbs = append(ttfbs, ttfb)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		return 0, nil, e
	}
	return time.Since(start), ttfbs, nil
}

func (b *bench) cold20(s *system) error {
	if _, _, _, err := fetch(newClient(), s.manifestURL("bench/big", "v1"), false); err != nil {
		return err
	}
	before, beforeBytes := b.up.gets(b.images.big), b.up.bytes(b.images.big)
	wall, ttfbs, err := b.concurrentBlob(s, 20, true)
	if err != nil {
		return err
	}
	mb := float64(20**bigMiB) * 1.048576
	b.record("cold 20 clients, one 256 MiB blob: wall s", s.name, wall.Seconds())
	b.record("cold 20 clients: MB/s delivered", s.name, mb/wall.Seconds())
	b.record("cold 20 clients: first byte p50 ms", s.name, ms(percentile(ttfbs, 0.5)))
	b.record("cold 20 clients: first byte p99 ms", s.name, ms(percentile(ttfbs, 0.99)))
	b.record("cold 20 clients: upstream GETs of the blob", s.name, float64(b.up.gets(b.images.big)-before))
	b.record("cold 20 clients: upstream bytes ÷ blob size", s.name, float64(b.up.bytes(b.images.big)-beforeBytes)/float64(int64(*bigMiB)<<20))
	return nil
}

func (b *bench) warm(s *system) error {
	mb := float64(*bigMiB) * 1.048576
	// One client.
	_, _, sum, err := fetch(newClient(), s.blobURL("bench/big", b.images.big), true)
	if err != nil || sum != b.images.big {
		return fmt.Errorf("%s warm: %v", s.name, err)
	}
	start := time.Now()
	ttfb, _, _, err := fetch(newClient(), s.blobURL("bench/big", b.images.big), true)
	if err != nil {
		return err
	}
	b.record("warm 1 client (hashing): MB/s", s.name, mb/time.Since(start).Seconds())
	b.record("warm 1 client: first byte ms", s.name, ms(ttfb))
	// 20 clients hashing.
	wall, ttfbs, err := b.concurrentBlob(s, 20, true)
	if err != nil {
		return err
	}
	b.record("warm 20 clients (hashing): MB/s", s.name, 20*mb/wall.Seconds())
	b.record("warm 20 clients: first byte p50 ms", s.name, ms(percentile(ttfbs, 0.5)))
	// 20 connections not hashing (wrk, a cheap C client): the server
	// alone, and its CPU per GB.
	// Server CPU is the process's own; on loopback part of the sending
	// (what the kernel transmits when an ACK opens the window) runs on
	// the client's CPU, so the machine's busy time per GB is given too.
	cpu0, all0 := cpuSeconds(s.pid), machineCPUSeconds()
	res, err := runWrk(20, 8*time.Second, "", s.blobURL("bench/big", b.images.big))
	if err != nil {
		return err
	}
	gb := res.bytesPerSec * 8 / 1e9
	b.record("warm 20 connections (wrk, no hashing): MB/s", s.name, res.bytesPerSec/1e6)
	b.record("warm: server CPU s per GB served", s.name, (cpuSeconds(s.pid)-cpu0)/max(gb, 0.001))
	b.record("warm: machine CPU s per GB (server+client+kernel)", s.name, (machineCPUSeconds()-all0)/max(gb, 0.001))
	// 20 connections whose client drops the bytes in the kernel: the
	// server alone, without a loopback client's copy (see discardLoad).
	cpu0, all0 = cpuSeconds(s.pid), machineCPUSeconds()
	bps, err := discardLoad(20, 8*time.Second, s.blobURL("bench/big", b.images.big))
	if err != nil {
		return fmt.Errorf("%s discarding client: %v", s.name, err)
	}
	gb = bps * 8 / 1e9
	b.record("warm 20 conns, client discards in kernel: MB/s", s.name, bps/1e6)
	b.record("warm, discarding client: server CPU s per GB", s.name, (cpuSeconds(s.pid)-cpu0)/max(gb, 0.001))
	b.record("warm, discarding client: machine CPU s per GB", s.name, (machineCPUSeconds()-all0)/max(gb, 0.001))
	return nil
}

// tags: GET manifests by (cached) tag across 200 repositories at
// concurrency 32 for tagPhase.
func (b *bench) tags(s *system) error {
	c := newClient()
	for _, repo := range b.images.small {
		if _, _, _, err := fetch(c, s.manifestURL(repo, "v1"), false); err != nil {
			return err
		}
	}
	upBefore := b.up.total.Load()
	res, err := runWrk(32, *tagPhase, tagScript(b.images.small), "http://"+s.addr)
	if err != nil {
		return err
	}
	n := res.reqPerSec * tagPhase.Seconds()
	b.record("cached tags, 200 repos, c=32 (wrk): requests/s", s.name, res.reqPerSec)
	b.record("cached tags: p50 ms", s.name, ms(res.p50))
	b.record("cached tags: p99 ms", s.name, ms(res.p99))
	b.record("cached tags: upstream requests per request", s.name, float64(b.up.total.Load()-upBefore)/max(n, 1))
	if res.errors > 0 {
		log.Printf("%s: %d failed tag requests", s.name, res.errors)
		b.record("cached tags: failed requests", s.name, float64(res.errors))
	}
	return nil
}

// startup builds a berth data dir with nBlobs blobs in the index and
// measures start-up time and warm-hit latency.
func (b *bench) startup() error {
	dir, err := os.MkdirTemp("/dev/shm", "berth-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	data := filepath.Join(dir, "data")
	st, err := store.Open(data, store.Options{ManualEviction: true})
	if err != nil {
		return err
	}
	log.Printf("start-up: writing %d blobs to the index", *nBlobs)
	var probe store.Digest
	for i := 0; i < *nBlobs; i++ {
		blob := []byte(fmt.Sprintf("blob %d %s", i, bytes.Repeat([]byte{'x'}, 64)))
		d := store.DigestOf(blob)
		if _, err := st.PutBlob(context.Background(), d, blob, store.Link{Repo: "hub/bench/index", Kind: store.LinkFetched}); err != nil {
			return err
		}
		if i == *nBlobs/2 {
			probe = d
		}
	}
	st.Close()
	for r := 0; r < *repeats; r++ {
		port := freePort()
		cfg := filepath.Join(dir, "berth.toml")
		os.WriteFile(cfg, []byte(fmt.Sprintf("default_repository = \"hub\"\nlog_level = \"warn\"\n[[repository]]\nname = \"hub\"\nkind = \"proxy\"\nurl = \"http://%s\"\n", b.up.addr)), 0o644)
		t0 := time.Now()
		cmd, err := b.startServer(*berthBin, "serve", "--config", cfg, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data-dir", data)
		if err != nil {
			return err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if _, err := waitUp("http://" + addr + "/healthz"); err != nil {
			return err
		}
		b.record(fmt.Sprintf("start-up with %dk blobs indexed: ms", *nBlobs/1000), "berth", ms(time.Since(t0)))
		c := newClient()
		var lat []time.Duration
		for i := 0; i < 2000; i++ {
			t := time.Now()
			if _, _, _, err := fetch(c, "http://"+addr+"/v2/bench/index/blobs/"+probe.String(), false); err != nil {
				return err
			}
			lat = append(lat, time.Since(t))
		}
		b.record("warm hit with that index: p50 ms", "berth", ms(percentile(lat, 0.5)))
		b.record("warm hit with that index: p99 ms", "berth", ms(percentile(lat, 0.99)))
		stop(cmd)
	}
	return nil
}
