//go:build e2e

package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/faultproxy"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"golang.org/x/crypto/bcrypt"
)

// TestCluster runs examples/cluster with each balancer: three berth nodes
// (node.toml as written, origin swapped for a lab registry) behind
// Debian's nginx and HAProxy with their example configs.
func TestCluster(t *testing.T) {
	for _, lb := range []string{"nginx", "haproxy"} {
		t.Run(lb, func(t *testing.T) {
			clientRow(t, lb, "balancer of a 3-node cluster: crane, docker, containerd; a node killed")
			clusterScenario(t, lb)
		})
	}
}

func clusterScenario(t *testing.T, lb string) {
	up := startRegistry(t)
	fp, err := faultproxy.Start(up.proxy) // drips blobs for the streaming check
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fp.Close() })
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "token.key")
	os.WriteFile(keyFile, []byte(strings.Repeat("k", 64)), 0o600)
	hash, _ := bcrypt.GenerateFromPassword([]byte("ci-pw"), bcrypt.MinCost)
	htpasswd := filepath.Join(dir, "htpasswd")
	os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o600)
	lbAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // the balancer's config must name its port

	example, err := os.ReadFile("../examples/cluster/node.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer(
		"/etc/berth/token.key", keyFile,
		"/etc/berth/htpasswd", htpasswd,
		"http://registry.internal:5000", "http://"+lbAddr,
		`url = "https://registry-1.docker.io"`, `url = "http://`+fp.Addr()+`"
ns_aliases = ["docker.io"]   # the lab stands in for Docker Hub
library_prefix = true`,
	).Replace(string(example))
	var nodes []*berth
	for i := 0; i < 3; i++ {
		nodes = append(nodes, startBerth(t, cfg))
	}
	startBalancer(t, lb, lbAddr, nodes)

	// crane, docker (mirror) and containerd through the balancer.
	d1 := up.push(t, "library/c1:v1", testImage(t, "amd64", 2, 256<<10))
	if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", lbAddr+"/c1:v1")); got != d1.String() {
		t.Fatalf("crane through %s: %s, want %s", lb, got, d1)
	}
	run(t, time.Minute, nil, tool("crane"), "pull", "--insecure", lbAddr+"/c1:v1", filepath.Join(t.TempDir(), "c1.tar"))
	dk := startDockerd(t, lbAddr)
	dk.docker(t, "pull", "c1:v1")
	if out := dk.docker(t, "image", "inspect", "--format", "{{json .RepoDigests}}", "c1:v1"); !strings.Contains(out, d1.String()) {
		t.Fatalf("docker through %s: %s", lb, out)
	}
	hostsDir := t.TempDir()
	os.MkdirAll(filepath.Join(hostsDir, "docker.io"), 0o755)
	os.WriteFile(filepath.Join(hostsDir, "docker.io", "hosts.toml"), []byte(fmt.Sprintf("[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", lbAddr)), 0o644)
	ctr := startContainerd(t)
	ctr("images", "pull", "--hosts-dir", hostsDir, "--snapshotter", "native", "docker.io/library/c1:v1")
	if out := ctr("images", "ls"); !strings.Contains(out, d1.String()) {
		t.Fatalf("containerd through %s: %s", lb, out)
	}

	// A blob streams through the balancer: its first byte reaches the
	// client long before the (slowly sent) rest.
	slow := testImage(t, "amd64", 1, 1<<20)
	up.push(t, "library/slow:v1", slow)
	fp.Set(faultproxy.Drip, faultproxy.Blobs)
	start := time.Now()
	resp, err := http.Get("http://" + lbAddr + "/v2/slow/blobs/" + mustLayers(t, slow)[0])
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, one); err != nil {
		t.Fatal(err)
	}
	firstByte := time.Since(start)
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	whole := time.Since(start)
	fp.Set(faultproxy.None, faultproxy.Any)
	if n+1 != 1<<20 && resp.ContentLength != n+1 || firstByte > whole/2 {
		t.Errorf("through %s: first byte after %s, whole blob (%d bytes) after %s: not streamed", lb, firstByte, n+1, whole)
	}

	// 20 concurrent cold pulls: one origin GET per blob, cluster-wide.
	cold := testImage(t, "amd64", 4, 512<<10)
	up.push(t, "library/cold:v1", cold)
	if failed := pullMany(t, lbAddr+"/cold:v1", 20, nil); failed > 0 {
		t.Fatalf("%d of 20 cold pulls failed", failed)
	}
	maxGets := 0
	for _, l := range mustLayers(t, cold) {
		maxGets = max(maxGets, up.gets(l))
		if n := up.gets(l); n != 1 {
			t.Errorf("blob %s: %d origin GETs for 20 cold pulls through %s, want 1", l, n, lb)
		}
	}

	// 200 blobs of one size: how evenly the nodes cache them (the growth
	// of each node's store while they are pulled).
	var before []float64
	for _, n := range nodes {
		before = append(before, n.metric(t, "berth_store_bytes"))
	}
	many := testImage(t, "amd64", 200, 4<<10)
	up.push(t, "library/many:v1", many)
	run(t, 3*time.Minute, nil, tool("crane"), "pull", "--insecure", lbAddr+"/many:v1", filepath.Join(t.TempDir(), "many.tar"))
	var minB, maxB float64
	for i, n := range nodes {
		v := n.metric(t, "berth_store_bytes") - before[i]
		if i == 0 || v < minB {
			minB = v
		}
		maxB = max(maxB, v)
	}
	if minB == 0 || maxB/minB > 2.5 {
		t.Errorf("200 blobs over 3 nodes: min %.0f max %.0f bytes", minB, maxB)
	}

	// A hosted push through the balancer pulls back; a token from one
	// node works on another.
	img := writeImageTar(t, testImage(t, "amd64", 2, 128<<10))
	home := t.TempDir()
	env := []string{"HOME=" + home}
	run(t, time.Minute, env, tool("crane"), "auth", "login", lbAddr, "-u", "ci", "-p", "ci-pw")
	run(t, 2*time.Minute, env, tool("crane"), "push", "--insecure", img, lbAddr+"/local/team/app:v1")
	pushed := strings.TrimSpace(run(t, time.Minute, env, tool("crane"), "digest", "--insecure", lbAddr+"/local/team/app:v1"))
	run(t, time.Minute, nil, tool("crane"), "pull", "--insecure", lbAddr+"/local/team/app:v1", filepath.Join(t.TempDir(), "p.tar"))
	tok := nodeToken(t, nodes[0].addr, "ci", "ci-pw", "repository:local/team/app:pull,push")
	req, _ := http.NewRequest("GET", "http://"+nodes[1].addr+"/v2/", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("node A's token on node B: %s", resp.Status)
	}

	// kill -9 of one node during 20 pulls: clients retry and complete;
	// the other nodes take its keys.
	killImg := testImage(t, "amd64", 3, 1<<20)
	up.push(t, "library/kill:v1", killImg)
	var killed atomic.Bool
	failed := pullMany(t, lbAddr+"/kill:v1", 20, func(i int) {
		if i == 5 && killed.CompareAndSwap(false, true) {
			nodes[2].proc.stop(syscall.SIGKILL, 5*time.Second)
		}
	})
	if failed > 0 {
		t.Errorf("%d of 20 pulls failed with a node killed in the middle", failed)
	}
	if got := strings.TrimSpace(run(t, time.Minute, env, tool("crane"), "digest", "--insecure", lbAddr+"/c1:v1")); got != d1.String() {
		t.Errorf("after the kill, signed in: %s", got)
	}
	t.Logf("%s: first byte %s before the whole blob %s; origin GETs per blob for 20 cold pulls: max %d; cached bytes over 3 nodes for 200 blobs: max/min %.2f; pulls completed with a node killed: %d/20; hosted push %s",
		lb, firstByte.Round(time.Millisecond), whole.Round(time.Millisecond), maxGets, maxB/minB, 20-failed, pushed)
}

// pullMany pulls ref n times at once, each retried up to 3 times; before
// each try hook (may be nil) is called with the pull's index. It returns
// how many failed.
func pullMany(t *testing.T, ref string, n int, hook func(int)) int {
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			for try := 0; try < 3; try++ {
				if hook != nil {
					hook(i)
				}
				r, _ := name.ParseReference(ref, name.Insecure)
				im, e := remote.Image(r)
				if e == nil {
					e = validate.Image(im)
				}
				if err = e; err == nil {
					return
				}
				time.Sleep(500 * time.Millisecond)
			}
			t.Logf("pull %d: %v", i, err)
			failed.Add(1)
		}()
	}
	wg.Wait()
	return int(failed.Load())
}

// nodeToken gets a token from one node's realm with basic credentials.
func nodeToken(t *testing.T, addr, user, pass, scope string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/token?scope="+scope, nil)
	req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Token == "" {
		t.Fatalf("token from %s: %s %v", addr, resp.Status, err)
	}
	return body.Token
}

// startBalancer runs the example config of lb ("nginx" or "haproxy"),
// listening on addr and balancing over nodes.
func startBalancer(t *testing.T, lb, addr string, nodes []*berth) {
	t.Helper()
	dir := t.TempDir()
	ports := []string{"127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"}
	switch lb {
	case "nginx":
		b, _ := os.ReadFile("../examples/cluster/nginx.conf")
		conf := string(b)
		for i, p := range ports {
			conf = strings.Replace(conf, "server "+p, "server "+nodes[i].addr, 1)
		}
		conf = strings.NewReplacer("listen 5000;", "listen "+addr+";",
			"pid /run/berth-nginx.pid;", "pid "+dir+"/nginx.pid;\nerror_log "+dir+"/error.log;").Replace(conf)
		path := filepath.Join(dir, "nginx.conf")
		os.WriteFile(path, []byte(conf), 0o644)
		start(t, nil, "nginx", "-c", path, "-p", dir, "-g", "daemon off;")
	case "haproxy":
		b, _ := os.ReadFile("../examples/cluster/haproxy.cfg")
		conf := string(b)
		for i, p := range ports {
			conf = strings.Replace(conf, " "+p+" ", " "+nodes[i].addr+" ", 1)
		}
		conf = strings.Replace(conf, "bind :5000", "bind "+addr, 1)
		path := filepath.Join(dir, "haproxy.cfg")
		os.WriteFile(path, []byte(conf), 0o644)
		start(t, nil, "haproxy", "-f", path, "-db")
	}
	waitHTTP(t, "http://"+addr+"/healthz", 20*time.Second)
}
