//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// The attack suite: what a hostile client sends the built binary, on
// loopback, with bounded loops. Each case failed before the hardening.

// TestAttackCredentialCatcher: an allowlist proxy with credentials for
// "*.lab.internal" and private networks allowed (an internal registry's
// set-up). A client names "127.0.0.1:<catcher>#x.lab.internal" in ?ns=
// and in the path: berth answers 400, the catcher receives nothing (it
// used to receive the proxy's Basic credentials).
func TestAttackCredentialCatcher(t *testing.T) {
	var hits, creds atomic.Int64
	// The catcher asks for Basic credentials, as a registry does, and
	// counts what it is sent.
	catcher := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.Header.Get("Authorization") != "" {
			creds.Add(1)
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="catcher"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer catcher.Close()
	port := catcher.Listener.Addr().(*net.TCPAddr).Port
	b := startBerth(t, `default_repository = "lab"

[[repository]]
name = "lab"
kind = "proxy"
hosts = ["*.lab.internal"]
http_hosts = ["*.lab.internal"]
allow_private_networks = true

[[repository.credentials]]
host = "*.lab.internal"
username = "robot"
password = "s3cret-lab-token"
`)
	for _, p := range []string{
		fmt.Sprintf("/v2/any/thing/manifests/v1?ns=127.0.0.1:%d%%23x.lab.internal", port),
		fmt.Sprintf("/v2/any/thing/manifests/v1?ns=127.0.0.1:%d%%2523x.lab.internal", port),
		fmt.Sprintf("/v2/any/thing/manifests/v1?ns=robot@127.0.0.1:%d%%2Fx.lab.internal", port),
		fmt.Sprintf("/v2/127.0.0.1:%d%%23x.lab.internal/any/thing/manifests/v1", port),
		fmt.Sprintf("/v2/lab/127.0.0.1:%d%%23x.lab.internal/any/thing/manifests/v1", port),
	} {
		resp, err := http.Get("http://" + b.addr + p)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", p, resp.StatusCode)
		}
	}
	if hits.Load() != 0 || creds.Load() != 0 {
		t.Fatalf("the catcher got %d requests, %d with credentials", hits.Load(), creds.Load())
	}
}

// TestAttackConnectionFlood: one address opens connections that trickle
// a POST /token body and never finish. Past max_connections_per_client
// it gets 429 at once; another client (another loopback address) is
// still served, and berth's descriptors stay below the bound.
func TestAttackConnectionFlood(t *testing.T) {
	b := startBerth(t, `[limits]
max_connections = 400
max_connections_per_client = 100

[[repository]]
name = "hub"
kind = "proxy"
url = "http://127.0.0.1:1"
`)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	refused := 0
	for i := 0; i < 300; i++ {
		c, err := net.DialTimeout("tcp", b.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /token HTTP/1.1\r\nHost: berth\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\ng")
	}
	// The refused ones have their answer already.
	// Each connection is read at once, in its own goroutine: a refused
	// one has its answer waiting, an accepted one waits for the body.
	lines := make(chan string, len(conns))
	for _, c := range conns {
		go func() {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			lines <- line
		}()
	}
	for range conns {
		if strings.HasPrefix(<-lines, "HTTP/1.1 429") {
			refused++
		}
	}
	if refused < 190 {
		t.Errorf("%d of 300 connections from one address refused, want >= 190 (per-client bound 100)", refused)
	}
	other := clientFrom("127.0.0.2")
	start := time.Now()
	resp, err := other.Get("http://" + b.addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("another client during the flood: %v", err)
	}
	resp.Body.Close()
	t.Logf("another client's /healthz during the flood: %s", time.Since(start))
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", b.proc.cmd.Process.Pid))
	if len(fds) > 100+60 {
		t.Errorf("berth holds %d descriptors with 300 hostile connections (bound 100 per client)", len(fds))
	}
	t.Logf("berth's descriptors during the flood: %d; refused %d of 300", len(fds), refused)
}

// TestAttackBruteForce: wrong passwords from one address are answered
// 429 with Retry-After after a few tries, with no bcrypt run for them;
// each failure is logged and counted.
func TestAttackBruteForce(t *testing.T) {
	b := berthWithUser(t, "alice", "right-password", 10)
	var codes []int
	for i := 0; i < 25; i++ {
		req, _ := http.NewRequest("GET", "http://"+b.addr+"/v2/", nil)
		req.SetBasicAuth("alice", fmt.Sprint("guess", i))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
		if resp.StatusCode == 429 && resp.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
	if codes[0] != 401 || codes[len(codes)-1] != 429 {
		t.Fatalf("statuses %v: want 401 first, then 429", codes)
	}
	if n := b.metric(t, "berth_auth_failures_total", `reason="throttled"`); n < 10 {
		t.Errorf("throttled failures %v", n)
	}
	if n := b.metric(t, "berth_auth_failures_total", `reason="bad_password"`); n != 10 {
		t.Errorf("bad_password failures %v, want 10 (then throttled)", n)
	}
	log, _ := os.ReadFile(b.proc.log)
	if !strings.Contains(string(log), "login failed") || !strings.Contains(string(log), "user=alice") {
		t.Error("failed logins are not logged with the user")
	}
}

// TestAttackAnonymousMetrics: anonymous /metrics names no repository
// anonymous clients cannot pull.
func TestAttackAnonymousMetrics(t *testing.T) {
	b := startBerth(t, `[[repository]]
name = "hub"
kind = "proxy"
url = "http://127.0.0.1:1"

[[repository]]
name = "payroll-secrets"
kind = "hosted"
`)
	resp, err := http.Get("http://" + b.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), "payroll-secrets") {
		t.Error("anonymous /metrics names the private repository")
	}
	if !strings.Contains(string(body), `repository="hub"`) {
		t.Error("anonymous /metrics lost the public repository")
	}
	if b.metric(t, "berth_cache_results_total", `repository="payroll-secrets"`) != 0 || !strings.Contains(adminMetrics(t, b), "payroll-secrets") {
		t.Error("the admin socket's /metrics does not show every repository")
	}
}

func adminMetrics(t *testing.T, b *berth) string {
	t.Helper()
	resp, err := b.adminClient().Get("http://berth/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// berthWithUser starts a berth with one hosted repository and one user
// whose password hash has the given bcrypt cost.
func berthWithUser(t *testing.T, user, password string, cost int) *berth {
	t.Helper()
	hash, _ := bcrypt.GenerateFromPassword([]byte(password), cost)
	return startBerth(t, fmt.Sprintf(`[[repository]]
name = "local"
kind = "hosted"

[[user]]
name = %q
password_hash = %q
push = ["local"]
`, user, hash))
}

// clientFrom is an HTTP client whose connections come from ip, a
// loopback address: another client, as berth counts them.
func clientFrom(ip string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}}
}
