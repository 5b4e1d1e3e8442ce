//go:build e2e

// Package e2e drives the built berth binary with real parts: distribution's
// registry as the upstream, real clients (crane, regctl, skopeo, oras) and
// a private Docker daemon. Tools come from scripts/install-tools.sh.
package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var (
	toolsBin string // crane, regctl, oras, registry
	berthBin string
)

func TestMain(m *testing.M) {
	root, _ := filepath.Abs("..")
	toolsBin = os.Getenv("TOOLS_BIN")
	if toolsBin == "" {
		toolsBin = filepath.Join(root, "build", "tools", "bin")
	}
	berthBin = os.Getenv("BERTH_BIN")
	if berthBin == "" {
		berthBin = filepath.Join(root, "build", "berth")
		cmd := exec.Command("go", "build", "-o", berthBin, ".")
		cmd.Dir, cmd.Stdout, cmd.Stderr = root, os.Stderr, os.Stderr
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build berth:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	writeMatrix(filepath.Join(root, "build", "client-matrix.md"))
	os.Exit(code)
}

func tool(name string) string {
	if p := filepath.Join(toolsBin, name); fileExists(p) {
		return p
	}
	return name
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// proc is a started process whose output goes to a log file; it is
// stopped at cleanup.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func start(t *testing.T, env []string, bin string, args ...string) *proc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), filepath.Base(bin)+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &proc{cmd: cmd, log: logf.Name(), done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM, 20*time.Second)
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			if dir := os.Getenv("E2E_LOG_DIR"); dir != "" {
				os.MkdirAll(dir, 0o755)
				os.WriteFile(filepath.Join(dir, t.Name()[:min(len(t.Name()), 40)]+"-"+filepath.Base(p.log)), b, 0o644)
			}
			t.Logf("---- %s log (last 3000 bytes) ----\n%s", filepath.Base(bin), tail(string(b), 3000))
		}
	})
	return p
}

// stop signals the process group and waits; after timeout it kills it.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(timeout):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	return p.err
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func waitHTTP(t *testing.T, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s not up after %s", url, timeout)
}

// runIn runs bin (in dir, when not "") with a time limit and env added to
// the test's, and returns its stdout and stderr apart: the one place the
// tests run a command to completion. run and runErr are its two shapes.
func runIn(dir string, timeout time.Duration, env []string, bin string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// run is runIn that fails the test on error (showing both outputs) and
// returns stdout.
func run(t *testing.T, timeout time.Duration, env []string, bin string, args ...string) string {
	t.Helper()
	out, errOut, err := runIn("", timeout, env, bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", filepath.Base(bin), strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// runErr is runIn with stdout and stderr together, for tests that look
// for a message wherever the tool prints it.
func runErr(timeout time.Duration, env []string, bin string, args ...string) (string, error) {
	out, errOut, err := runIn("", timeout, env, bin, args...)
	return out + errOut, err
}

// upstreamRegistry is distribution's registry on a free port, behind a
// reverse proxy that counts blob GETs.
type upstreamRegistry struct {
	proc  *proc
	addr  string // the registry itself
	proxy string // the counting proxy berth talks to

	auth bool

	mu        sync.Mutex
	blobGets  map[string]int
	blobBytes map[string]int64 // body bytes sent for blob GETs
	down      bool
}

func startRegistry(t *testing.T) *upstreamRegistry { return startRegistryAuth(t, "") }

// startRegistryAuth starts distribution's registry; with an htpasswd file
// it demands basic auth.
func startRegistryAuth(t *testing.T, htpasswd string) *upstreamRegistry {
	t.Helper()
	return startRegistryConfig(t, htpasswd, "")
}

// startRegistryConfig starts distribution's registry with extra lines of
// its YAML configuration.
func startRegistryConfig(t *testing.T, htpasswd, extra string) *upstreamRegistry {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: 127.0.0.1:%d
`, filepath.Join(dir, "data"), port) + extra
	if htpasswd != "" {
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: e2e\n    path: %s\n", htpasswd)
	}
	os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o644)
	u := &upstreamRegistry{addr: fmt.Sprintf("127.0.0.1:%d", port), blobGets: map[string]int{}, blobBytes: map[string]int64{}}
	u.proc = start(t, nil, tool("registry"), "serve", filepath.Join(dir, "config.yml"))
	waitHTTP(t, "http://"+u.addr+"/v2/", 20*time.Second)
	u.auth = htpasswd != ""

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.proxy = ln.Addr().String()
	blobRe := regexp.MustCompile(`/blobs/(sha256:[0-9a-f]{64})$`)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		down := u.down
		blob := ""
		if m := blobRe.FindStringSubmatch(r.URL.Path); m != nil && r.Method == "GET" {
			blob = m[1]
			u.blobGets[blob]++
		}
		u.mu.Unlock()
		if down {
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			conn.Close()
			return
		}
		if blob != "" {
			cw := &countingWriter{ResponseWriter: w}
			defer func() {
				u.mu.Lock()
				u.blobBytes[blob] += cw.n
				u.mu.Unlock()
			}()
			w = cw
		}
		forward(w, r, u.addr)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return u
}

// forward relays r to addr (plain HTTP), copying status, headers and body.
func forward(w http.ResponseWriter, r *http.Request, addr string) {
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://"+addr+r.URL.RequestURI(), r.Body)
	req.Header = r.Header.Clone()
	req.ContentLength = r.ContentLength
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

func (u *upstreamRegistry) gets(d string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.blobGets[d]
}

// bytes is the body bytes sent for GETs of blob d.
func (u *upstreamRegistry) bytes(d string) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.blobBytes[d]
}

// countingWriter counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (u *upstreamRegistry) setDown(v bool) {
	u.mu.Lock()
	u.down = v
	u.mu.Unlock()
}

func (u *upstreamRegistry) ref(t *testing.T, s string) name.Reference {
	ref, err := name.ParseReference(u.addr+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// testImage is a linux image of random layers (real gzip'd tars), so that
// Docker can unpack it.
func testImage(t *testing.T, arch string, layers int, size int64) v1.Image {
	t.Helper()
	img := empty.Image
	for i := 0; i < layers; i++ {
		l, err := random.Layer(size, "application/vnd.docker.image.rootfs.diff.tar.gzip")
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Cmd = []string{"/bin/true"}
	img, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func (u *upstreamRegistry) push(t *testing.T, repo string, img v1.Image) v1.Hash {
	t.Helper()
	if err := remote.Write(u.ref(t, repo), img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return d
}

// pushAuth pushes with basic credentials.
func (u *upstreamRegistry) pushAuth(t *testing.T, repo string, img v1.Image, user, pass string) v1.Hash {
	t.Helper()
	if err := remote.Write(u.ref(t, repo), img, remote.WithAuth(&authn.Basic{Username: user, Password: pass})); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return d
}

func (u *upstreamRegistry) pushIndex(t *testing.T, repo string, imgs map[string]v1.Image) v1.Hash {
	t.Helper()
	// A Docker manifest list of Docker manifests, as on Docker Hub.
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	for arch, img := range imgs {
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	if err := remote.WriteIndex(u.ref(t, repo), idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	return d
}

// berth is the built binary, started with a config file.
type berth struct {
	proc      *proc
	addr      string
	dir       string
	data      string       // data dir
	listeners []string     // addresses of the [[listener]]s, in config order
	tlsClient *http.Client // for a TLS listener
}

func startBerth(t *testing.T, config string) *berth {
	t.Helper()
	return startBerthEnv(t, config)
}

func startBerthEnv(t *testing.T, config string, env ...string) *berth {
	t.Helper()
	b := launchBerth(t, config, "", "", env)
	waitHTTP(t, "http://"+b.addr+"/healthz", 20*time.Second)
	return b
}

// launchBerth writes config and starts `berth serve` on addr with its
// data in dataDir (under the test's temp dir when ""). With addr "" berth
// binds 127.0.0.1:0 itself and the addresses it logs are read back (no
// free-port guess that another process could take between the guess and
// the bind); it does not wait for berth to answer HTTP.
func launchBerth(t *testing.T, config, addr, dataDir string, env []string) *berth {
	t.Helper()
	dir := t.TempDir()
	readBack := addr == ""
	if readBack {
		addr = "127.0.0.1:0"
	}
	if dataDir == "" {
		dataDir = filepath.Join(dir, "data")
	}
	cfgPath := filepath.Join(dir, "berth.toml")
	os.WriteFile(cfgPath, []byte(config), 0o644)
	b := &berth{addr: addr, dir: dir, data: dataDir}
	b.proc = start(t, env, berthBin, "serve", "--config", cfgPath, "--listen", addr, "--data-dir", dataDir)
	if readBack {
		ls := b.proc.listening(t, 1+strings.Count(config, "[[listener]]"), 20*time.Second)
		b.addr, b.listeners = ls[0], ls[1:]
	}
	return b
}

// listeningRe matches berth's "listening" log line, text or JSON.
var listeningRe = regexp.MustCompile(`msg"?[=:]"?listening"?,? "?addr"?[=:]"?([0-9.:\[\]]+)`)

// listening waits until the process has logged n "listening" lines and
// returns their addresses in order: berth logs its main listener first,
// then its [[listener]]s in config order.
func (p *proc) listening(t *testing.T, n int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(p.log)
		if m := listeningRe.FindAllStringSubmatch(string(b), -1); len(m) >= n {
			var out []string
			for _, x := range m[:n] {
				out = append(out, x[1])
			}
			return out
		}
		select {
		case <-p.done:
			t.Fatalf("berth exited before listening: %v\n%s", p.err, tail(string(b), 3000))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("berth did not log %d listening lines in %s:\n%s", n, timeout, tail(string(b), 3000))
		}
	}
}

// admin is the --server value for the operator commands: the admin
// socket in the data dir.
func (b *berth) admin() string { return "unix:" + filepath.Join(b.data, "admin.sock") }

// adminClient speaks HTTP to berth's admin socket.
func (b *berth) adminClient() *http.Client {
	sock := filepath.Join(b.data, "admin.sock")
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
}

// metric sums the samples of a metric whose labels include all of want,
// as the operator sees them on the admin socket (the public /metrics
// shows a caller only the repositories it may pull).
func (b *berth) metric(t *testing.T, name string, want ...string) float64 {
	t.Helper()
	resp, err := b.adminClient().Get("http://berth/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, w := range want {
			if !strings.Contains(line, w) {
				ok = false
			}
		}
		if ok {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// noNet is the environment of daemons that must not reach the internet:
// their proxy is a closed loopback port (loopback itself is direct).
var noNet = []string{"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=127.0.0.1,localhost",
	"http_proxy=http://127.0.0.1:9", "https_proxy=http://127.0.0.1:9", "no_proxy=127.0.0.1,localhost"}

// startContainerd starts Debian's containerd (1.6) with its state under a
// temp dir and no CRI, and returns a ctr runner in namespace e2e.
func startContainerd(t *testing.T) func(args ...string) string {
	t.Helper()
	sock := containerdSocket(t)
	return func(args ...string) string {
		return run(t, 3*time.Minute, noNet, "ctr", append([]string{"-a", sock, "-n", "e2e"}, args...)...)
	}
}

// containerdSocket starts containerd as startContainerd does and returns
// its socket.
func containerdSocket(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "cd") // short: the socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := dir + "/containerd.sock"
	os.WriteFile(dir+"/config.toml", []byte(fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
`, dir+"/root", dir+"/state", sock)), 0o644)
	start(t, noNet, "containerd", "--config", dir+"/config.toml")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := runErr(5*time.Second, nil, "ctr", "-a", sock, "version"); err == nil {
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd did not start")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The client matrix: what each real client did in this run and how it
// ended, written to build/client-matrix.md after the run (make
// client-matrix puts it into the README).
type matrixRow struct{ client, version, what, result string }

var matrix struct {
	mu       sync.Mutex
	rows     []matrixRow
	versions map[string]string
}

// versionCmds say how each client reports its version.
var versionCmds = map[string][]string{
	"crane": {"crane", "version"}, "regctl": {"regctl", "version", "--format", "{{.VCSTag}}"},
	"skopeo": {"skopeo", "--version"}, "oras": {"oras", "version"},
	"docker": {"dockerd", "--version"}, "containerd": {"containerd", "--version"},
	"podman": {"podman", "--version"}, "buildah": {"buildah", "--version"},
	"nginx": {"nginx", "-v"}, "haproxy": {"haproxy", "-v"},
}

// clientRow records that client did what in t; the result is t's.
func clientRow(t *testing.T, client, what string) {
	t.Helper()
	t.Cleanup(func() {
		result := "ok"
		if t.Failed() {
			result = "FAILED"
		}
		matrix.mu.Lock()
		defer matrix.mu.Unlock()
		if matrix.versions == nil {
			matrix.versions = map[string]string{}
		}
		v, ok := matrix.versions[client]
		if !ok {
			v = clientVersion(client)
			matrix.versions[client] = v
		}
		matrix.rows = append(matrix.rows, matrixRow{client, v, what, result})
	})
}

func clientVersion(client string) string {
	switch client {
	case "containerd 2.x", "crictl":
		// Built by go install: the module version is in the binary's build
		// info (their own --version says "unknown" without release ldflags).
		name := map[string]string{"containerd 2.x": "containerd", "crictl": "crictl"}[client]
		out, _ := runErr(time.Minute, nil, "go", "version", "-m", filepath.Join(filepath.Dir(toolsBin), "containerd2", name))
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "mod" {
				return f[2]
			}
		}
		return versionIn(out)
	}
	cmd := versionCmds[client]
	if cmd == nil {
		return "?"
	}
	bin := cmd[0]
	if p := tool(bin); p != bin {
		bin = p
	}
	out, _ := runErr(time.Minute, nil, bin, cmd[1:]...)
	return versionIn(out)
}

var versionRe = regexp.MustCompile(`v?[0-9]+\.[0-9]+(\.[0-9]+)?`)

func versionIn(out string) string {
	if v := versionRe.FindString(out); v != "" {
		return v
	}
	return strings.TrimSpace(out)
}

// writeMatrix writes the client matrix as a Markdown table.
func writeMatrix(path string) {
	matrix.mu.Lock()
	defer matrix.mu.Unlock()
	if len(matrix.rows) == 0 {
		return
	}
	sort.SliceStable(matrix.rows, func(i, j int) bool { return matrix.rows[i].client < matrix.rows[j].client })
	var b strings.Builder
	b.WriteString("| client | version | what was run | result |\n|---|---|---|---|\n")
	for _, r := range matrix.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.client, r.version, r.what, r.result)
	}
	os.MkdirAll(filepath.Dir(path), 0o755)
	os.WriteFile(path, []byte(b.String()), 0o644)
}
