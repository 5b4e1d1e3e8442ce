//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/bcrypt"
)

// hookReceiver is a webhook endpoint that is down (hangs up), failing
// (500) or up, counting the deliveries of each event id.
type hookReceiver struct {
	addr string
	mode atomic.Int32 // 0 down, 1 failing, 2 up

	mu   sync.Mutex
	got  map[string]int
	kind map[string]string // id → action
}

func startHookReceiver(t *testing.T) *hookReceiver {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hookReceiver{addr: ln.Addr().String(), got: map[string]int{}, kind: map[string]string{}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch h.mode.Load() {
		case 0:
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		case 1:
			http.Error(w, "failing", http.StatusInternalServerError)
			return
		}
		var env struct {
			Events []struct {
				ID     string `json:"id"`
				Action string `json:"action"`
			} `json:"events"`
		}
		if r.Header.Get("Content-Type") != "application/vnd.docker.distribution.events.v2+json" || json.NewDecoder(r.Body).Decode(&env) != nil {
			http.Error(w, "not an envelope", http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		for _, ev := range env.Events {
			h.got[ev.ID]++
			h.kind[ev.ID] = ev.Action
		}
		h.mu.Unlock()
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return h
}

// auditLine is a line of the audit log.
type auditLine struct {
	ID, Action, User, Client, Repository, Image, Tag, Digest, Outcome, Detail string
	Time                                                                      time.Time
}

func readAudit(t *testing.T, path string) []auditLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []auditLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || l.ID == "" || l.Time.IsZero() || l.Action == "" || l.Outcome == "" {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

var removedRe = regexp.MustCompile(`(?m)^(?:would remove|removed) (tag|manifest) (\S+)$`)

// TestHostedRepositoryTidy: a hosted repository of 200 CI tags with
// retention (the newest 20, latest, and v* immutable), an audit log and a
// webhook. The immutable tag is refused by crane, Docker and oras; the
// dry run lists exactly what the run removes while pulls of kept tags go
// on; gc frees the bytes; the audit log has a parsed line for each kind of
// event; the webhook receiver, down, then failing, across a restart of
// berth, then up, gets every event (duplicates only by id, none lost).
func TestHostedRepositoryTidy(t *testing.T) {
	clientRow(t, "crane", "push refused: immutable tag")
	clientRow(t, "docker", "push refused: immutable tag")
	clientRow(t, "oras", "push refused: immutable tag")
	hook := startHookReceiver(t)
	dir := t.TempDir()
	auditLog := filepath.Join(dir, "audit.log")
	hash, _ := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	cfg := fmt.Sprintf(`default_repository = "internal"
[[repository]]
name = "internal"
kind = "hosted"
anonymous_pull = true
anonymous_push = true   # CI pushes without credentials in this lab
immutable_tags = ["v*"]
[repository.retention]
keep_newest = 20
keep = ["latest"]

[[user]]
name = "reader"
password_hash = %q
pull = ["internal"]

[audit]
file = %q

[[webhook]]
name = "ci"
url = "http://%s/hook"
actions = ["push", "delete", "tag_moved", "retention"]
`, hash, auditLog, hook.addr)
	b := startBerth(t, cfg)

	// 200 CI builds, latest, a release.
	start := time.Now()
	for i := range 200 { // in order: push times follow build numbers
		img, _ := random.Image(16<<10, 1)
		ref, _ := name.ParseReference(fmt.Sprintf("%s/team/app:build-%03d", b.addr, i), name.Insecure)
		if err := remote.Write(ref, img); err != nil {
			t.Fatalf("push build-%03d: %v", i, err)
		}
	}
	t.Logf("200 tags pushed in %s", time.Since(start).Round(time.Millisecond))
	crane := func(args ...string) (string, error) {
		return runErr(time.Minute, nil, tool("crane"), append(args, "--insecure")...)
	}
	for _, tag := range []string{"build-198", "build-199"} { // latest moves once
		if _, err := crane("tag", b.addr+"/team/app:"+tag, "latest"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := crane("copy", b.addr+"/team/app:build-000", b.addr+"/team/app:v1.0"); err != nil {
		t.Fatal(err)
	}

	// The release tag is immutable, for every client.
	if out, err := crane("copy", b.addr+"/team/app:build-001", b.addr+"/team/app:v1.0"); err == nil || !strings.Contains(out, "immutable") {
		t.Errorf("crane moved an immutable tag: %v\n%s", err, out)
	}
	work := t.TempDir()
	os.WriteFile(filepath.Join(work, "notes.txt"), []byte("v1.0 notes"), 0o644)
	if out, errOut, err := runIn(work, time.Minute, []string{"HOME=" + work}, tool("oras"), "push", "--plain-http", b.addr+"/team/app:v1.0", "notes.txt:text/plain"); err == nil || !strings.Contains(out+errOut, "immutable") {
		t.Errorf("oras moved an immutable tag: %v\n%s", err, out)
	}
	d := startDockerd(t, "")
	d.docker(t, "pull", b.addr+"/team/app:build-002")
	d.docker(t, "tag", b.addr+"/team/app:build-002", b.addr+"/team/app:v1.0")
	if out, err := runErr(2*time.Minute, d.env, "docker", "push", b.addr+"/team/app:v1.0"); err == nil || !strings.Contains(out, "immutable") {
		t.Errorf("docker moved an immutable tag: %v\n%s", err, out)
	}
	if out, err := runErr(time.Minute, nil, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", "http://"+b.addr+"/v2/team/app/manifests/v1.0"); err != nil || out != "403" {
		t.Errorf("deleting v1.0: %s %v", out, err)
	}
	// A failed login and a denied push, for the audit log.
	run(t, time.Minute, nil, "curl", "-s", "-o", "/dev/null", "-u", "reader:wrong", "http://"+b.addr+"/v2/")
	run(t, time.Minute, nil, "curl", "-s", "-o", "/dev/null", "-u", "reader:secret", "-X", "POST", "http://"+b.addr+"/v2/team/app/blobs/uploads/")

	// Retention: the dry run, then the run while clients pull kept tags.
	dryOut := run(t, time.Minute, nil, berthBin, "retention", "--dry-run", "--server", b.admin())
	dry := removedRe.FindAllString(dryOut, -1)
	stop := make(chan struct{})
	pulls, pullErrs := atomic.Int64{}, make(chan error, 1)
	go func() {
		defer close(pullErrs)
		ref, _ := name.ParseReference(b.addr+"/team/app:build-190", name.Insecure)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := remote.Image(ref); err != nil {
				pullErrs <- err
				return
			}
			pulls.Add(1)
		}
	}()
	rstart := time.Now()
	runOut := run(t, 2*time.Minute, nil, berthBin, "retention", "--server", b.admin())
	took := time.Since(rstart)
	close(stop)
	if err := <-pullErrs; err != nil {
		t.Errorf("a pull of a kept tag during retention: %v", err)
	}
	done := removedRe.FindAllString(runOut, -1)
	for i := range dry {
		dry[i] = strings.Replace(dry[i], "would remove", "removed", 1)
	}
	sort.Strings(dry)
	sort.Strings(done)
	// 180 tags (200 builds but the newest 20) and their manifests, but
	// build-000's: v1.0 names it too.
	if n := strings.Count(dryOut, "would remove tag "); n != 180 || strings.Count(dryOut, "would remove manifest ") != 179 || strings.Join(dry, "\n") != strings.Join(done, "\n") {
		t.Fatalf("dry run listed %d (%d tags), the run removed %d; want 180 tags and 179 manifests, the same:\n%s\n---\n%s", len(dry), n, len(done), tail(dryOut, 1500), tail(runOut, 1500))
	}
	gcOut := run(t, time.Minute, nil, berthBin, "gc", "--grace", "0s", "--server", b.admin())
	tags := strings.Fields(run(t, time.Minute, nil, tool("crane"), "ls", "--insecure", b.addr+"/team/app"))
	if len(tags) != 22 { // 20 builds, latest, v1.0
		t.Errorf("%d tags after retention: %v", len(tags), tags)
	}
	t.Logf("retention of 200 tags: %d tags and %d manifests removed in %s while %d pulls of a kept tag went on; gc: %s",
		strings.Count(runOut, "removed tag"), strings.Count(runOut, "removed manifest"), took.Round(time.Millisecond), pulls.Load(), strings.TrimSpace(tail(gcOut, 200)))

	// The webhook receiver: failing, then berth restarts, then it is up.
	hook.mode.Store(1)
	time.Sleep(500 * time.Millisecond)
	syscall.Kill(b.proc.cmd.Process.Pid, syscall.SIGHUP) // a reload, for the audit log
	time.Sleep(300 * time.Millisecond)
	b.proc.stop(syscall.SIGTERM, 20*time.Second)
	b2 := launchBerth(t, cfg, "", b.data, nil)
	waitHTTP(t, "http://"+b2.addr+"/healthz", 20*time.Second)
	hook.mode.Store(2)

	lines := readAudit(t, auditLog)
	byAction := map[string][]auditLine{}
	for _, l := range lines {
		byAction[l.Action] = append(byAction[l.Action], l)
	}
	for _, action := range []string{"push", "tag_moved", "delete", "login_failed", "denied", "retention", "admin", "reload"} {
		if len(byAction[action]) == 0 {
			t.Errorf("no %s line in the audit log", action)
		}
	}
	if p := byAction["push"][0]; p.Repository != "internal" || p.Image != "team/app" || !strings.HasPrefix(p.Tag, "build-") || !strings.HasPrefix(p.Digest, "sha256:") || p.User != "anonymous" || p.Client != "127.0.0.1" {
		t.Errorf("push line: %+v", p)
	}
	if m := byAction["tag_moved"]; len(m) != 1 || m[0].Tag != "latest" {
		t.Errorf("tag moved lines: %+v", m)
	}
	if l := byAction["login_failed"][0]; l.User != "reader" || l.Outcome != "refused" {
		t.Errorf("login failed line: %+v", l)
	}
	if l := byAction["denied"][0]; l.User != "reader" || l.Detail != "may not push" {
		t.Errorf("denied line: %+v", l)
	}
	if raw, _ := os.ReadFile(auditLog); strings.Contains(string(raw), "secret") || strings.Contains(string(raw), "wrong") {
		t.Error("a password in the audit log")
	}
	want := map[string]bool{}
	for _, l := range lines {
		if l.Outcome == "ok" && (l.Action == "push" || l.Action == "delete" || l.Action == "tag_moved" || l.Action == "retention") {
			want[l.ID] = true
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		hook.mu.Lock()
		missing := 0
		for id := range want {
			if hook.got[id] == 0 {
				missing++
			}
		}
		sent, dups := 0, 0
		for _, n := range hook.got {
			sent += n
			dups += n - 1
		}
		hook.mu.Unlock()
		if missing == 0 {
			t.Logf("webhook: %d events sent to a receiver that was down, then failing, across a restart; %d deliveries, %d duplicates (by id), lost 0; failed deliveries %v", len(want), sent, dups, b2.metric(t, "berth_webhook_deliveries_failed_total"))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook: %d of %d events never arrived", missing, len(want))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
