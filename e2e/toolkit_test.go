//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestPrefetchThenUpstreamDown: berth prefetch fills the cache through the
// same path as pulls; with the upstream gone every image still pulls.
func TestPrefetchThenUpstreamDown(t *testing.T) {
	up := startRegistry(t)
	app := up.push(t, "library/pre-app:v1", testImage(t, "amd64", 2, 512<<10))
	arm := testImage(t, "arm64", 1, 256<<10)
	multi := up.pushIndex(t, "library/pre-multi:v1", map[string]v1.Image{"amd64": testImage(t, "amd64", 1, 256<<10), "arm64": arm})
	b := startBerth(t, proxyConfig(up.proxy))
	cfgPath := filepath.Join(b.dir, "berth.toml")
	out := run(t, 2*time.Minute, nil, berthBin, "prefetch", "--config", cfgPath, "--server", b.admin(), "pre-app:v1")
	if !strings.Contains(out, "prefetched pre-app:v1") || !strings.Contains(out, "blob sha256:") {
		t.Fatalf("prefetch output (not a terminal: log lines):\n%s", out)
	}
	run(t, 2*time.Minute, nil, berthBin, "prefetch", "--server", b.admin(), "--all-platforms", "pre-multi:v1")
	// Prefetch is berth's own work, not a client's: its requests are not
	// in the cache results (the hit ratio is of what clients were
	// served), while what it fetched crossed the upstream link.
	if n := b.metric(t, "berth_cache_results_total", `kind="blob"`); n != 0 {
		t.Errorf("prefetch's blob requests counted as client requests: %v", n)
	}
	if n := b.metric(t, "berth_upstream_bytes_total"); n < 512<<10 {
		t.Errorf("berth_upstream_bytes_total %v after prefetching", n)
	}
	// A bad image name is a clear error, not a crash.
	if out, errOut, err := runIn("", time.Minute, nil, berthBin, "prefetch", "--server", b.admin(), "Bad//Name"); err == nil || !strings.Contains(errOut, "invalid") {
		t.Fatalf("bad name: %v %s %s", err, out, errOut)
	}
	up.setDown(true)
	time.Sleep(1100 * time.Millisecond) // past tag_ttl: tags are served stale
	for ref, want := range map[string]string{"pre-app:v1": app.String(), "pre-multi:v1": multi.String()} {
		if got := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", b.addr+"/"+ref)); got != want {
			t.Errorf("%s: %s, want %s", ref, got, want)
		}
	}
	run(t, 2*time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", b.addr+"/pre-app:v1")
	armRef := strings.TrimSpace(run(t, time.Minute, nil, tool("crane"), "digest", "--insecure", "--platform", "linux/arm64", b.addr+"/pre-multi:v1"))
	run(t, 2*time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", b.addr+"/pre-multi@"+armRef)
	// berth ls sees them, with sizes and pulls.
	ls := run(t, time.Minute, nil, berthBin, "ls", "--config", cfgPath, "--data-dir", filepath.Join(b.dir, "data"), "--server", b.admin(), "--json")
	var entries []struct {
		Image, Tag, Digest string
		Size, Pulls        int64
	}
	if err := json.Unmarshal([]byte(ls), &entries); err != nil || len(entries) != 2 {
		t.Fatalf("berth ls --json: %v\n%s", err, ls)
	}
	for _, e := range entries {
		if e.Size <= 0 || e.Digest == "" {
			t.Errorf("ls entry %+v", e)
		}
	}
	table := run(t, time.Minute, nil, berthBin, "ls", "--config", cfgPath, "--data-dir", filepath.Join(b.dir, "data"))
	if !strings.Contains(table, "library/pre-app") || !strings.Contains(table, "LAST PULLED") {
		t.Errorf("berth ls:\n%s", table)
	}
}

// TestExportImport: export from one berth, import into a second with no
// upstream, pull from the second with skopeo and docker, same digests.
func TestExportImport(t *testing.T) {
	up := startRegistry(t)
	app := up.push(t, "library/exp-app:v1", testImage(t, "amd64", 2, 512<<10))
	multi := up.pushIndex(t, "library/exp-multi:v1", map[string]v1.Image{"amd64": testImage(t, "amd64", 1, 128<<10), "arm64": testImage(t, "arm64", 1, 128<<10)})
	oci := up.push(t, "library/exp-oci:v1", mutate.MediaType(testImage(t, "amd64", 1, 128<<10), types.OCIManifestSchema1))
	src := startBerth(t, proxyConfig(up.proxy))
	archive := filepath.Join(t.TempDir(), "images.tar")
	out := run(t, 3*time.Minute, nil, berthBin, "export", "--server", "http://"+src.addr, "--out", archive, "exp-app:v1", "exp-multi:v1", "exp-oci:v1")
	if !strings.Contains(out, "wrote "+archive) || !strings.Contains(out, "exp-app:v1: blob sha256:") {
		t.Fatalf("export (not a terminal: a progress line per blob): %s", out)
	}
	// skopeo reads the archive (Debian's skopeo 1.9 lists only OCI-typed
	// manifests of a layout; berth keeps manifests as they are).
	insp := run(t, time.Minute, nil, "skopeo", "inspect", "--raw", "oci-archive:"+archive+":exp-oci:v1")
	if got := sha256Hex([]byte(insp)); got != oci.String() {
		t.Fatalf("skopeo inspect oci-archive: %s, want %s", got, oci)
	}

	up.setDown(true)
	dst := startBerth(t, `default_repository = "airgap"
[[repository]]
name = "airgap"
kind = "hosted"
anonymous_pull = true
[[user]]
name = "importer"
password_hash = "$2a$10$DUbwPxEDrDMqEL7WoOUgre9SbJeGuXtT4Ot/eo7OmaL82JHivnzi2"
push = ["airgap"]
`) // the hash is of "secret"
	if _, errOut, err := runIn("", time.Minute, nil, berthBin, "import", "--server", "http://"+dst.addr, archive); err == nil {
		t.Fatal("import without credentials succeeded")
	} else if !strings.Contains(errOut, "--creds USER:PASSWORD") || strings.Contains(errOut, "HEAD responses have no body") && !strings.Contains(errOut, "berth answered 401") {
		t.Errorf("import without credentials does not say what to do: %s", errOut)
	}
	out = run(t, 3*time.Minute, nil, berthBin, "import", "--server", "http://"+dst.addr, "--creds", "importer:secret", archive)
	if strings.Count(out, "imported ") != 3 || !strings.Contains(out, "pushed (") {
		t.Fatalf("import: %s", out)
	}
	for ref, want := range map[string]string{"exp-app:v1": app.String(), "exp-multi:v1": multi.String(), "exp-oci:v1": oci.String()} {
		raw := run(t, time.Minute, nil, "skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+dst.addr+"/"+ref)
		if got := sha256Hex([]byte(raw)); got != want {
			t.Errorf("%s from the second berth: %s, want %s", ref, got, want)
		}
	}
	run(t, 2*time.Minute, nil, "skopeo", "copy", "--src-tls-verify=false", "docker://"+dst.addr+"/exp-app:v1", "dir:"+t.TempDir())
	d := startDockerd(t, "")
	d.docker(t, "pull", dst.addr+"/exp-app:v1")
	if out := d.docker(t, "image", "inspect", "--format", "{{json .RepoDigests}}", dst.addr+"/exp-app:v1"); !strings.Contains(out, app.String()) {
		t.Fatalf("docker pull from the second berth: %s", out)
	}
	// A docker save tarball imports too (its layers are recompressed, so
	// the digest is new; every blob is checked and pulls back whole).
	d.docker(t, "tag", dst.addr+"/exp-app:v1", "saved/app:v2")
	saved := filepath.Join(t.TempDir(), "saved.tar")
	d.docker(t, "save", "-o", saved, "saved/app:v2")
	out = run(t, 3*time.Minute, nil, berthBin, "import", "--server", "http://"+dst.addr, "--creds", "importer:secret", "--repository", "airgap", saved)
	if !strings.Contains(out, "imported "+dst.addr+"/airgap/saved/app:v2") {
		t.Fatalf("docker save import: %s", out)
	}
	run(t, 2*time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", dst.addr+"/airgap/saved/app:v2")
	// A tampered archive is refused.
	bad := filepath.Join(t.TempDir(), "bad.tar")
	corruptBlob(t, archive, bad)
	if _, _, err := runIn("", time.Minute, nil, berthBin, "import", "--server", "http://"+dst.addr, "--creds", "importer:secret", "--repository", "airgap", bad); err == nil {
		t.Fatal("a corrupted archive was imported")
	}
}

func corruptBlob(t *testing.T, in, out string) {
	t.Helper()
	dir := t.TempDir()
	if o, err := runErr(time.Minute, nil, "tar", "-xf", in, "-C", dir); err != nil {
		t.Fatalf("tar: %v %s", err, o)
	}
	var biggest string
	var size int64
	filepath.Walk(filepath.Join(dir, "blobs"), func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && info.Size() > size {
			biggest, size = p, info.Size()
		}
		return nil
	})
	f, _ := os.OpenFile(biggest, os.O_RDWR, 0)
	f.WriteAt([]byte("corrupt"), size/2)
	f.Close()
	if o, err := runErr(time.Minute, nil, "tar", "-cf", out, "-C", dir, "."); err != nil {
		t.Fatalf("tar: %v %s", err, o)
	}
}

// TestStatusPageInBrowser renders the status page in headless Chromium
// after a pull: the DOM must list the repositories and a tag's layers; a
// screenshot is kept under build/screenshots.
func TestStatusPageInBrowser(t *testing.T) {
	up := startRegistry(t)
	want := up.push(t, "library/ui-app:v1", testImage(t, "amd64", 2, 256<<10))
	b := startBerth(t, proxyConfig(up.proxy)+`
[[repository]]
name = "private"
kind = "hosted"
`)
	run(t, 2*time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", b.addr+"/ui-app:v1")
	chromium := func(args ...string) string {
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
			"--disable-component-update", "--disable-sync", "--user-data-dir=" + t.TempDir(), "--window-size=1280,900"}
		out, errOut, err := runIn("", 2*time.Minute, nil, "chromium", append(base, args...)...)
		if err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, tail(errOut, 2000))
		}
		return out
	}
	dom := chromium("--dump-dom", "http://"+b.addr+"/")
	for _, s := range []string{"Repositories", ">hub<", "proxy", "reachable", "cache hit ratio"} {
		if !strings.Contains(dom, s) {
			t.Errorf("overview lacks %q", s)
		}
	}
	if strings.Contains(dom, ">private<") {
		t.Error("anonymous visitor sees the private hosted repository")
	}
	imagePage := "http://" + b.addr + "/ui/image?repo=hub&name=library/ui-app"
	dom = chromium("--dump-dom", imagePage)
	if !strings.Contains(dom, want.String()) || !strings.Contains(dom, ">v1<") {
		t.Fatalf("image page lacks the tag:\n%s", tail(dom, 2000))
	}
	manifestPage := "http://" + b.addr + "/ui/manifest?repo=hub&name=library/ui-app&digest=" + want.String()
	dom = chromium("--dump-dom", manifestPage)
	if strings.Count(dom, "<code>sha256:") < 3 || !strings.Contains(dom, "Layers") {
		t.Fatalf("manifest page lacks the layers:\n%s", tail(dom, 2000))
	}
	root, _ := filepath.Abs("..")
	shots := filepath.Join(root, "build", "screenshots")
	os.MkdirAll(shots, 0o755)
	for name, url := range map[string]string{"status-overview.png": "http://" + b.addr + "/", "status-manifest.png": manifestPage} {
		file := filepath.Join(shots, name)
		chromium("--screenshot="+file, url)
		if st, err := os.Stat(file); err != nil || st.Size() < 5000 {
			t.Fatalf("screenshot %s: %v", file, err)
		}
		t.Logf("screenshot: %s", file)
	}
}

// TestDashboardMatchesMetrics: every metric the Grafana dashboard queries
// is exported by a live berth.
func TestDashboardMatchesMetrics(t *testing.T) {
	up := startRegistry(t)
	up.push(t, "library/dash:v1", testImage(t, "amd64", 1, 64<<10))
	b := startBerth(t, proxyConfig(up.proxy))
	run(t, time.Minute, nil, tool("crane"), "validate", "--insecure", "--remote", b.addr+"/dash:v1")
	raw, err := os.ReadFile("../dashboards/berth.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	resp, err := http.Get("http://" + b.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	scrape, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	exported := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) `).FindAllStringSubmatch(string(scrape), -1) {
		exported[m[1]] = true
	}
	metricRe := regexp.MustCompile(`berth_[a-z_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricRe.FindAllString(tg.Expr, -1) {
				n++
				base := strings.TrimSuffix(m, "_bucket")
				if !exported[base] && !exported[m] {
					t.Errorf("panel %q queries %s, which berth does not export", p.Title, m)
				}
			}
		}
	}
	if n < 15 {
		t.Fatalf("only %d metric references in the dashboard", n)
	}
}

// TestPrometheusExample: the alert rules and scrape config in
// examples/prometheus pass promtool, and every berth_ metric the rules
// name is one berth defines.
func TestPrometheusExample(t *testing.T) {
	for _, args := range [][]string{{"check", "rules", "../examples/prometheus/berth-alerts.yml"}, {"check", "config", "../examples/prometheus/prometheus.yml"}} {
		if out, errOut, err := runIn("", time.Minute, nil, "promtool", args...); err != nil {
			t.Fatalf("promtool %v: %v\n%s%s", args, err, out, errOut)
		}
	}
	rules, _ := os.ReadFile("../examples/prometheus/berth-alerts.yml")
	var src strings.Builder
	for _, glob := range []string{"../server/*.go", "../*.go", "../store/*.go"} {
		files, _ := filepath.Glob(glob)
		for _, f := range files {
			if !strings.HasSuffix(f, "_test.go") {
				b, _ := os.ReadFile(f)
				src.Write(b)
			}
		}
	}
	names := regexp.MustCompile(`berth_[a-z_]+`).FindAllString(string(rules), -1)
	if len(names) < 10 {
		t.Fatalf("only %d berth metrics named in the rules", len(names))
	}
	for _, n := range names {
		if !strings.Contains(src.String(), `"`+n+`"`) {
			t.Errorf("the alert rules name %s, which berth does not define", n)
		}
	}
}

// TestSystemdUnit: the unit passes systemd-analyze verify.
func TestSystemdUnit(t *testing.T) {
	dir := t.TempDir()
	unit, _ := os.ReadFile("../systemd/berth.service")
	// verify checks that ExecStart exists: point it at the built binary.
	os.WriteFile(filepath.Join(dir, "berth.service"), []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/berth", berthBin)), 0o644)
	out, errOut, err := runIn("", time.Minute, nil, "systemd-analyze", "verify", filepath.Join(dir, "berth.service"))
	if err != nil || strings.TrimSpace(errOut+out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s%s", err, out, errOut)
	}
	for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=berth", "Restart=on-failure", "DynamicUser=yes",
		"ConfigurationDirectoryMode=0750"} { // the README promises /etc/berth mode 0750
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %s", want)
		}
	}
	// berth version prints build information.
	if v := run(t, time.Minute, nil, berthBin, "version"); !strings.HasPrefix(v, "berth ") || !strings.Contains(v, "go") {
		t.Errorf("berth version: %s", v)
	}
}

func sha256Hex(b []byte) string {
	return fmt.Sprintf("sha256:%x", sha256Sum(b))
}

// TestExportDockerArchive: berth export --format docker-archive writes a
// docker save tarball that skopeo (docker-archive:) and docker load read,
// with the image's config and layers; a multi-platform image is exported
// for the platform asked.
func TestExportDockerArchive(t *testing.T) {
	clientRow(t, "skopeo", "inspect docker-archive: of berth export --format docker-archive")
	clientRow(t, "docker", "docker load of berth export --format docker-archive")
	up := startRegistry(t)
	amd := testImage(t, "amd64", 2, 256<<10)
	up.push(t, "library/arc-app:v1", amd)
	arm := testImage(t, "arm64", 1, 128<<10)
	up.pushIndex(t, "library/arc-multi:v1", map[string]v1.Image{"amd64": testImage(t, "amd64", 1, 128<<10), "arm64": arm})
	b := startBerth(t, proxyConfig(up.proxy))
	archive := filepath.Join(t.TempDir(), "images.tar")
	out := run(t, 3*time.Minute, nil, berthBin, "export", "--server", "http://"+b.addr, "--format", "docker-archive",
		"--platform", "linux/arm64", "--out", archive, "arc-app:v1", "arc-multi:v1")
	if !strings.Contains(out, "docker save format") {
		t.Fatalf("export: %s", out)
	}
	wantCfg, _ := arm.ConfigName()
	insp := run(t, time.Minute, nil, "skopeo", "inspect", "--raw", "--config", "docker-archive:"+archive+":library/arc-multi:v1")
	if got := sha256Hex([]byte(insp)); got != wantCfg.String() {
		t.Fatalf("skopeo docker-archive: config %s, want the arm64 image's %s", got, wantCfg)
	}
	d := startDockerd(t, "")
	d.docker(t, "load", "-i", archive)
	appCfg, _ := amd.ConfigName()
	if id := strings.TrimSpace(d.docker(t, "image", "inspect", "--format", "{{.Id}}", "arc-app:v1")); id != appCfg.String() {
		t.Fatalf("docker load: image id %s, want the config digest %s", id, appCfg)
	}
}
