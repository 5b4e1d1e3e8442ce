//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadReplica: a second berth proxying a primary's hosted repository
// keeps every tag warm ([[prefetch]] all_tags); with the primary down it
// serves every tag pushed before its last sync.
func TestReadReplica(t *testing.T) {
	primary := startBerth(t, `default_repository = "local"
[[repository]]
name = "local"
kind = "hosted"
anonymous_pull = true
anonymous_push = true   # the test pushes without credentials
`)
	want := map[string]string{}
	for _, tag := range []string{"v1", "v2", "v3"} {
		img := writeImageTar(t, testImage(t, "amd64", 1, 64<<10))
		run(t, time.Minute, nil, tool("crane"), "push", "--insecure", img, primary.addr+"/team/app:"+tag)
		want[tag] = strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", primary.addr+"/team/app:"+tag))
	}
	replica := startBerth(t, fmt.Sprintf(`default_repository = "primary"
[[repository]]
name = "primary"
kind = "proxy"
url = "http://%s"

[[prefetch]]
images = ["team/app"]
all_tags = true   # every tag, on a schedule
every = "1m"
`, primary.addr))
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _ := runErr(30*time.Second, nil, berthBin, "ls", "--server", replica.admin(), "primary/team/app")
		if strings.Count(out, "primary/team/app") >= 3 || strings.Count(out, " v") >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica did not sync every tag:\n%s", out)
		}
		time.Sleep(300 * time.Millisecond)
	}
	primary.proc.stop(syscall.SIGTERM, 20*time.Second)
	for tag, d := range want {
		ref := replica.addr + "/team/app:" + tag
		run(t, time.Minute, nil, tool("crane"), "pull", "--insecure", ref, filepath.Join(t.TempDir(), "x.tar"))
		if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", ref)); got != d {
			t.Errorf("%s from the replica with the primary down: %s, want %s", tag, got, d)
		}
	}
}
