//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPolicyByDigestWithCrane: a policy denies the tag "latest". crane
// gets 403 DENIED with the reason for the tag, and for its digest pulled
// by digest (a deny list by tag is not bypassed by the digest); another
// tag pulls. The policy changed and reloaded on SIGHUP decides afresh: the
// digest pulls.
func TestPolicyByDigestWithCrane(t *testing.T) {
	clientRow(t, "crane", "a policy's deny by tag refuses the digest too; SIGHUP re-decides")
	up := startRegistry(t)
	latest := up.push(t, "library/app:latest", testImage(t, "amd64", 1, 16<<10))
	up.push(t, "library/app:v1", testImage(t, "amd64", 1, 16<<10))
	cfg := proxyConfig(up.proxy) + `policy = "pinned"

[[policy]]
name = "pinned"
deny_tags = ["latest"]
`
	b := startBerth(t, cfg)
	crane := func(args ...string) (string, error) {
		return runErr(time.Minute, nil, tool("crane"), append(args, "--insecure")...)
	}
	for _, ref := range []string{"library/app:latest", "library/app@" + latest.String()} {
		out, err := crane("manifest", b.addr+"/"+ref)
		if err == nil || !strings.Contains(out, "DENIED") || !strings.Contains(out, `tag \"latest\"`) && !strings.Contains(out, `tag "latest"`) {
			t.Fatalf("crane manifest %s: %v\n%s\nwant DENIED naming the tag", ref, err, out)
		}
	}
	if out, err := crane("manifest", b.addr+"/library/app:v1"); err != nil {
		t.Fatalf("crane manifest of another tag: %v\n%s", err, out)
	}
	if n := b.metric(t, "berth_policy_decisions_total", `decision="deny"`, `reason="tag"`); n < 2 {
		t.Errorf("deny decisions by tag counted %v, want >= 2", n)
	}

	os.WriteFile(filepath.Join(b.dir, "berth.toml"), []byte(strings.Replace(cfg, `deny_tags = ["latest"]`, `deny_tags = ["nightly"]`, 1)), 0o644)
	logOffset := len(readFile(t, b.proc.log))
	b.proc.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(readFile(t, b.proc.log)[logOffset:], "SIGHUP: reloaded") {
		if time.Now().After(deadline) {
			t.Fatal("no reload logged after SIGHUP")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := crane("manifest", b.addr+"/library/app@"+latest.String()); err != nil {
		t.Fatalf("after the policy changed: %v\n%s", err, out)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
