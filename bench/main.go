// Command bench measures berth against distribution's proxy mode (and
// nginx serving the same blob files, for warm reads) on this machine, in
// one run, and prints each figure with the ratio berth/peer. Run it with
// `make bench`; see README "Benchmarks".
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"time"
)

var (
	toolsDir = flag.String("tools", "build/tools/bin", "directory with registry")
	berthBin = flag.String("berth", "build/berth", "berth binary")
	outDir   = flag.String("out", "build/bench", "where results and logs go")
	repeats  = flag.Int("repeats", 3, "runs of each phase")
	bigMiB   = flag.Int("big", 256, "size of the big layer in MiB")
	tagPhase = flag.Duration("tags-for", 10*time.Second, "length of the cached-tag phase")
	nBlobs   = flag.Int("index-blobs", 100_000, "blobs in the index for the start-up test")
	srvCPUs  = flag.String("server-cpus", "0", "CPUs the servers under test are pinned to (taskset -c); empty: no pinning. Run the driver itself on the others (make bench does)")
)

func main() {
	flag.Parse()
	log.SetFlags(log.Ltime)
	os.MkdirAll(*outDir, 0o755)
	b := &bench{results: map[string]map[string][]float64{}}
	defer b.cleanup()
	if err := b.run(); err != nil {
		b.cleanup()
		log.Fatal(err)
	}
}

type bench struct {
	up      *countingProxy
	upProc  *exec.Cmd
	procs   []*exec.Cmd
	results map[string]map[string][]float64 // metric → system → values
	curve   map[string]map[int][]float64    // cost curve: metric → store size → values
	images  *seeded
	mu      sync.Mutex
}

func (b *bench) record(metric, system string, v float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.results[metric] == nil {
		b.results[metric] = map[string][]float64{}
	}
	b.results[metric][system] = append(b.results[metric][system], v)
}

// last is the latest value of metric for system in this run of the
// driver (false: none yet).
func (b *bench) last(metric, system string) (float64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := b.results[metric][system]
	if len(v) == 0 {
		return 0, false
	}
	return v[len(v)-1], true
}

func (b *bench) cleanup() {
	for _, p := range append(b.procs, b.upProc) {
		if p != nil && p.Process != nil {
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			p.Wait()
		}
	}
	b.procs = nil
	b.upProc = nil
}

func freePort() int {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startServer starts a system under test, pinned to -server-cpus.
func (b *bench) startServer(name string, args ...string) (*exec.Cmd, error) {
	if *srvCPUs != "" {
		return b.start("taskset", append([]string{"-c", *srvCPUs, name}, args...)...)
	}
	return b.start(name, args...)
}

func (b *bench) start(name string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(filepath.Join(*outDir, fmt.Sprintf("%s-%d.log", filepath.Base(name), time.Now().UnixNano())))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b.procs = append(b.procs, cmd)
	return cmd, nil
}

func stop(cmd *exec.Cmd) {
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

func waitUp(url string) (time.Duration, error) {
	start := time.Now()
	for time.Since(start) < 30*time.Second {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				return time.Since(start), nil
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, fmt.Errorf("%s not up", url)
}

// countingProxy forwards to the upstream registry and counts requests.
type countingProxy struct {
	addr      string
	target    string
	total     atomic.Int64
	mu        sync.Mutex
	blobGets  map[string]int
	blobBytes map[string]int64 // body bytes sent for blob GETs
}

var blobRe = regexp.MustCompile(`/blobs/(sha256:[0-9a-f]{64})$`)

func newCountingProxy(target string) (*countingProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &countingProxy{addr: ln.Addr().String(), target: target, blobGets: map[string]int{}, blobBytes: map[string]int64{}}
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.total.Add(1)
		blob := ""
		if m := blobRe.FindStringSubmatch(r.URL.Path); m != nil && r.Method == "GET" {
			blob = m[1]
			p.mu.Lock()
			p.blobGets[blob]++
			p.mu.Unlock()
		}
		resp := relay(w, r, tr, target)
		if resp == nil {
			return
		}
		defer resp.Body.Close()
		n, _ := io.CopyBuffer(w, resp.Body, make([]byte, 256<<10))
		if blob != "" {
			p.mu.Lock()
			p.blobBytes[blob] += n
			p.mu.Unlock()
		}
	}))
	return p, nil
}

// relay sends r to target and writes the answer's status and headers to
// w; the caller copies the body and closes it. nil: the target could not
// be reached (502 written).
func relay(w http.ResponseWriter, r *http.Request, tr *http.Transport, target string) *http.Response {
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://"+target+r.URL.RequestURI(), r.Body)
	req.Header = r.Header.Clone()
	req.ContentLength = r.ContentLength
	resp, err := tr.RoundTrip(req)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return nil
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	return resp
}

// bytes is the body bytes sent for GETs of blob d.
func (p *countingProxy) bytes(d string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blobBytes[d]
}

func (p *countingProxy) gets(d string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blobGets[d]
}

// proc stats: peak RSS (VmHWM) and CPU seconds of a process and its
// children (nginx workers).
func procTree(pid int) []int {
	pids := []int{pid}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 2 && f[1] == strconv.Itoa(pid) {
			pids = append(pids, c)
		}
	}
	return pids
}

func cpuSeconds(pid int) float64 {
	var total float64
	for _, p := range procTree(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		total += (ut + st) / 100
	}
	return total
}

func peakRSSMiB(pid int) float64 {
	var total float64
	for _, p := range procTree(pid) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "VmHWM:") {
				kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
				total += kb / 1024
			}
		}
	}
	return total
}

// fetch GETs url, reading (and, with hash, digesting) the body; it
// returns time to first byte and bytes read.
func fetch(client *http.Client, url string, hash bool) (ttfb time.Duration, n int64, sum string, err error) {
	start := time.Now()
	var first time.Time
	trace := &httptrace.ClientTrace{GotFirstResponseByte: func() { first = time.Now() }}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", url, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		io.Copy(io.Discard, resp.Body)
		return 0, 0, "", fmt.Errorf("%s: status %d", url, resp.StatusCode)
	}
	buf := make([]byte, 256<<10)
	if hash {
		h := sha256.New()
		n, err = io.CopyBuffer(h, resp.Body, buf)
		sum = fmt.Sprintf("sha256:%x", h.Sum(nil))
	} else {
		n, err = io.CopyBuffer(io.Discard, resp.Body, buf)
	}
	if first.IsZero() {
		first = time.Now()
	}
	return first.Sub(start), n, sum, err
}

func newClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}, Timeout: 5 * time.Minute}
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(v []float64) float64 {
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func writeJSON(path string, v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	os.WriteFile(path, b, 0o644)
}

// machineCPUSeconds is the busy time of all CPUs so far (user, nice,
// system, irq, softirq, steal from /proc/stat): the server, the client
// and the kernel's work for both, wherever it ran.
func machineCPUSeconds() float64 {
	servers, others := cpuBusy()
	return servers + others
}

// cpuBusy is the busy time so far of the CPUs the servers are pinned to
// (-server-cpus) and of the others, where the driver, its clients and the
// upstream run (all of it in others when the servers are not pinned).
func cpuBusy() (servers, others float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	pinned := cpuList(*srvCPUs)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line) // cpuN user nice system idle iowait irq softirq steal ...
		if len(f) < 9 || len(f[0]) < 4 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		n, err := strconv.Atoi(f[0][3:])
		if err != nil {
			continue
		}
		var busy float64
		for _, i := range []int{1, 2, 3, 6, 7, 8} {
			v, _ := strconv.ParseFloat(f[i], 64)
			busy += v / 100 // USER_HZ
		}
		if pinned[n] {
			servers += busy
		} else {
			others += busy
		}
	}
	return servers, others
}

// cpuList parses a taskset list such as "0", "0-1" or "0,2-3".
func cpuList(s string) map[int]bool {
	cpus := map[int]bool{}
	for _, part := range strings.Split(s, ",") {
		lo, hi, found := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		z := a
		if found {
			if z, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		for c := a; c <= z && c-a < 4096; c++ {
			cpus[c] = true
		}
	}
	return cpus
}
