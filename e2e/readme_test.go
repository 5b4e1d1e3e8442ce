//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	bolt "go.etcd.io/bbolt"
)

// readmeBlocks returns the ```sh blocks of a README section, line by line.
func readmeBlocks(t *testing.T, section string) [][]string {
	t.Helper()
	f, err := os.Open("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks [][]string
	in, code := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			in = line == "## "+section
		case in && line == "```sh":
			code = true
			blocks = append(blocks, nil)
		case in && code && line == "```":
			code = false
		case in && code:
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				blocks[len(blocks)-1] = append(blocks[len(blocks)-1], l)
			}
		}
	}
	if len(blocks) == 0 {
		t.Fatalf("README has no sh block under %q", section)
	}
	return blocks
}

// TestREADMECommands runs the README's Install, First push and Upgrading
// and backup commands as written, into a temporary root (/etc, /usr/local,
// /var/lib and /var/backups under it; "sudo" dropped; the unit's
// ExecStart started directly where systemctl would; edge.internal:5000 is
// mapped to the loopback address berth listens on). Then an index from a
// newer berth is refused, and the backup restores.
func TestREADMECommands(t *testing.T) {
	up := startRegistry(t)
	root := t.TempDir()
	work := filepath.Join(root, "work")
	os.MkdirAll(work, 0o755)
	os.MkdirAll(filepath.Join(root, "home"), 0o755)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	repo, _ := filepath.Abs("..")
	rewrite := strings.NewReplacer("sudo ", "", "/usr/local/", root+"/usr/local/", "/etc/", root+"/etc/",
		"/var/lib/berth", root+"/var/lib/berth", "/var/backups", root+"/var/backups", "edge.internal:5000", addr,
		"build/berth", berthBin)
	cfgPath := filepath.Join(root, "etc/berth/berth.toml")
	env := []string{"HOME=" + filepath.Join(root, "home"), "BERTH_CONFIG=" + cfgPath, "COSIGN_PASSWORD=",
		"PATH=" + filepath.Join(root, "usr/local/bin") + ":" + toolsBin + ":" + os.Getenv("PATH")}
	env = append(env, noNet...) // cosign, crane: loopback only
	var srv *proc
	var logOffset int
	startUnit := func() {
		unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/berth.service"))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(unit), "\n") {
			if cmd, ok := strings.CutPrefix(l, "ExecStart="); ok {
				args := strings.Fields(rewrite.Replace(cmd))
				srv = start(t, env, args[0], args[1:]...)
				waitHTTP(t, "http://"+addr+"/healthz", 20*time.Second)
				return
			}
		}
		t.Fatal("the unit has no ExecStart")
	}
	sh := func(dir, line string) string {
		t.Helper()
		line = rewrite.Replace(line)
		if rest, ok := strings.CutPrefix(line, "systemctl "); ok {
			switch rest {
			case "daemon-reload":
			case "enable --now berth", "start berth":
				startUnit()
			case "restart berth":
				if err := srv.stop(syscall.SIGTERM, 30*time.Second); err != nil {
					t.Fatalf("berth did not stop cleanly: %v", err)
				}
				startUnit()
			case "stop berth":
				if err := srv.stop(syscall.SIGTERM, 30*time.Second); err != nil {
					t.Fatalf("berth did not stop cleanly: %v", err)
				}
			case "reload berth":
				b, _ := os.ReadFile(srv.log)
				logOffset = len(b)
				syscall.Kill(srv.cmd.Process.Pid, syscall.SIGHUP)
				for i := 0; i < 100; i++ {
					if b, _ := os.ReadFile(srv.log); strings.Contains(string(b[logOffset:]), "SIGHUP: reloaded") {
						return ""
					}
					time.Sleep(50 * time.Millisecond)
				}
				t.Fatal("no reload logged after SIGHUP")
			default:
				t.Fatalf("README command %q: the test does not stand in for it", line)
			}
			return ""
		}
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", line)
		cmd.Dir, cmd.Env = dir, append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("README command %q: %v\n%s", line, err, out)
		}
		return string(out)
	}

	// Install: the config is edited before the service starts, as the
	// README says.
	config := fmt.Sprintf(`data_dir = %q
listen = %q
default_repository = "hub"

[[repository]]
name = "hub"
kind = "proxy"
url = "http://%s"
`, filepath.Join(root, "var/lib/berth"), addr, up.proxy)
	for _, line := range readmeBlocks(t, "Install")[0] {
		if strings.Contains(line, "systemctl enable") {
			os.WriteFile(cfgPath, []byte(config), 0o644)
		}
		sh(repo, line)
	}
	if out := sh(repo, "berth version"); !strings.HasPrefix(out, "berth ") {
		t.Errorf("installed berth version: %s", out)
	}

	// First push: a user made with berth passwd, then a push with crane.
	push := readmeBlocks(t, "First push")
	os.WriteFile(filepath.Join(work, "ci-password.txt"), []byte("ci-secret\n"), 0o600)
	hash := strings.TrimSpace(sh(work, push[0][0]))
	config += fmt.Sprintf(`
[[repository]]
name = "internal"
kind = "hosted"

[[user]]
name = "ci"
password_hash = %q
pull = ["*"]
push = ["internal"]
`, hash)
	os.WriteFile(cfgPath, []byte(config), 0o644)
	img := testImage(t, "amd64", 2, 256<<10)
	want, _ := img.Digest()
	tar := writeImageTar(t, img)
	os.Rename(tar, filepath.Join(work, "app.tar"))
	var got string
	for _, line := range push[1] {
		got = sh(work, line)
	}
	if strings.TrimSpace(got) != want.String() {
		t.Fatalf("pushed image digest %q, want %s", got, want)
	}

	// Policies: sign the pushed image with cosign, require signatures on
	// the hosted repository, reload, pull, ask why.
	pol := readmeBlocks(t, "Policies: what a repository may serve")
	for _, line := range pol[0] {
		sh(work, line)
	}
	config = strings.Replace(config, "kind = \"hosted\"\n", "kind = \"hosted\"\npolicy = \"signed\"\n", 1) + fmt.Sprintf(`
[[policy]]
name = "signed"
require_signature = true
keys = [%q]
`, filepath.Join(root, "etc/berth/cosign.pub"))
	os.WriteFile(cfgPath, []byte(config), 0o644)
	var why string
	for _, line := range pol[1] {
		why = sh(work, line)
	}
	if !strings.Contains(why, "decision   allow (rule signature)") || !strings.Contains(why, want.String()) {
		t.Fatalf("berth policy test of the signed image:\n%s", why)
	}
	other := writeImageTar(t, testImage(t, "amd64", 1, 4<<10))
	sh(work, "crane push --insecure "+other+" edge.internal:5000/internal/team/unsigned:1.0")
	out, err := runErr(time.Minute, env, tool("crane"), "manifest", "--insecure", addr+"/internal/team/unsigned:1.0")
	if err == nil || !strings.Contains(out, `not signed by a key of policy \"signed\"`) && !strings.Contains(out, `not signed by a key of policy "signed"`) {
		t.Fatalf("an unsigned image under the README's policy: %v\n%s", err, out)
	}

	// Upgrading and backup: back up while serving, then restore.
	blocks := readmeBlocks(t, "Upgrading and backup")
	os.MkdirAll(filepath.Join(root, "var/backups"), 0o755)
	for _, line := range blocks[0] {
		sh(repo, line)
	}
	// An upgrade gone wrong: the index now says a newer berth wrote it.
	sh(repo, "systemctl stop berth")
	index := filepath.Join(root, "var/lib/berth/index.db")
	db, err := bolt.Open(index, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		v := make([]byte, 8)
		v[7] = byte(store.SchemaVersion + 1)
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), v)
	})
	db.Close()
	out, err = runErr(time.Minute, env, filepath.Join(root, "usr/local/bin/berth"), "serve", "--config", cfgPath, "--data-dir", filepath.Join(root, "var/lib/berth"))
	if err == nil || !strings.Contains(out, "written by a newer berth") {
		t.Fatalf("an older berth on a newer index: %v\n%s", err, out)
	}
	// Restore, as written (its first line stops the already stopped berth).
	for i, line := range blocks[1] {
		if i == 0 && strings.Contains(line, "systemctl stop") {
			continue
		}
		sh(repo, line)
	}
	d := strings.TrimSpace(sh(work, "crane digest --insecure "+addr+"/internal/team/app:1.0"))
	if d != want.String() {
		t.Errorf("after restore: %s, want %s", d, want)
	}
	run(t, 2*time.Minute, env, tool("crane"), "validate", "--insecure", "--remote", addr+"/internal/team/app:1.0")
}
