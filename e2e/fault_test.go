//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/faultproxy"
)

// TestUpstreamFaults puts a fault-injecting proxy between the built
// binary and distribution's registry and, for each fault, pulls a fresh
// image through berth with crane (every layer downloaded and hashed) and
// regctl while the fault is on, then again once it is cleared. Each pull
// either gets the upstream's digests or fails with an error; after the
// fault every pull succeeds; the process never dies; berth verify is
// clean at the end. The table of outcomes is printed.
func TestUpstreamFaults(t *testing.T) {
	up := startRegistry(t)
	fp, err := faultproxy.Start(up.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fp.Close() })
	dataDir := filepath.Join(t.TempDir(), "data")
	b := launchBerth(t, fmt.Sprintf(`
[[repository]]
name = "up"
kind = "proxy"
url = "http://%s"
upstream_timeout = "2s"
not_found_ttl = "1ms"
`, fp.Addr()), "", dataDir, nil)
	waitHTTP(t, "http://"+b.addr+"/healthz", 20*time.Second)

	type row struct {
		fault                 faultproxy.Fault
		target                faultproxy.Target
		during, regctl, after string
	}
	var rows []row
	alive := func(when string) {
		t.Helper()
		resp, err := http.Get("http://" + b.addr + "/healthz")
		if err != nil {
			t.Fatalf("berth died %s: %v", when, err)
		}
		resp.Body.Close()
	}
	i := 0
	for _, target := range []faultproxy.Target{faultproxy.Manifests, faultproxy.Blobs} {
		for _, f := range faultproxy.All {
			i++
			img := testImage(t, "amd64", 2, 256<<10)
			repo := fmt.Sprintf("fault/%d-%s", i, f)
			want := up.push(t, repo+":v1", img)
			ref := b.addr + "/" + repo + ":v1"

			fp.Set(f, target)
			r := row{fault: f, target: target}
			out, err := runErr(90*time.Second, nil, tool("crane"), "validate", "--insecure", "--remote", ref)
			r.during = outcome(out, err)
			duringOut := out
			if err == nil {
				if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", ref)); got != want.String() {
					t.Errorf("%s: pull succeeded with digest %s, want %s", f, got, want)
				}
			}
			r.regctl = "-"
			if target == faultproxy.Blobs { // regctl asks the same manifest; its blob handling differs from crane's
				exp := filepath.Join(t.TempDir(), "img.tar")
				out, err = runErr(90*time.Second, nil, tool("regctl"), "image", "export", "--host", "reg="+b.addr+",tls=disabled", ref, exp)
				r.regctl = outcome(out, err)
			}
			alive("during " + f.String())
			switch f {
			case faultproxy.Unavailable:
				if !strings.Contains(duringOut, "UNAVAILABLE") && !strings.Contains(duringOut, "503") {
					t.Errorf("503 upstream: crane said %q, want the upstream's unavailability named", r.during)
				}
			case faultproxy.RateLimited:
				if !strings.Contains(duringOut, "TOOMANYREQUESTS") && !strings.Contains(duringOut, "429") {
					t.Errorf("429 upstream: crane said %q, want the rate limit named", r.during)
				}
			}

			fp.Set(faultproxy.None, faultproxy.Any)
			out, err = runErr(90*time.Second, nil, tool("crane"), "validate", "--insecure", "--remote", ref)
			r.after = outcome(out, err)
			if err != nil {
				t.Errorf("%s: pull after the fault cleared failed: %s", f, out)
			} else if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", ref)); got != want.String() {
				t.Errorf("%s: digest %s after the fault, want %s", f, got, want)
			}
			alive("after " + f.String())
			rows = append(rows, r)
		}
	}

	var tbl strings.Builder
	fmt.Fprintf(&tbl, "%-13s | %-9s | %-66s | %-66s | %s\n", "fault", "on", "crane pull while on", "regctl export while on", "crane after")
	for _, r := range rows {
		fmt.Fprintf(&tbl, "%-13s | %-9s | %-66s | %-66s | %s\n", r.fault, r.target, r.during, r.regctl, r.after)
	}
	t.Logf("fault × outcome (pulls through the built binary):\n%s", tbl.String())

	if err := b.proc.stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("berth did not stop cleanly: %v", err)
	}
	out, err := runErr(2*time.Minute, nil, berthBin, "verify", "--data-dir", dataDir)
	if err != nil || !strings.Contains(out, " 0 problems") {
		t.Errorf("verify after the faults: %v\n%s", err, out)
	}
}

// outcome is a table cell: "ok", or the part of the client's error that
// names the problem.
func outcome(out string, err error) string {
	if err == nil {
		return "ok"
	}
	line := lastLine(out)
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.Contains(strings.ToLower(l), "error") {
			line = l
		}
	}
	for _, key := range []string{"TOOMANYREQUESTS", "UNAVAILABLE", "timeout awaiting", "connection reset", "nothing cached",
		"undersized", "does not match", "retry limit", "unexpected EOF", "EOF"} {
		if i := strings.Index(line, key); i >= 0 {
			line = line[max(0, i-30):min(len(line), i+40)]
			break
		}
	}
	if len(line) > 70 {
		line = line[len(line)-70:]
	}
	return "error: …" + strings.TrimSpace(line)
}
