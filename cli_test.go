package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/urfave/cli/v2"
	"golang.org/x/crypto/bcrypt"
)

// runCLI runs berth with args in dir and returns its output and error.
func runCLI(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	var out bytes.Buffer
	app := newApp(&out, &out)
	app.ExitErrHandler = func(*cli.Context, error) {} // keep the test process
	err := app.Run(append([]string{"berth"}, args...))
	return out.String(), err
}

// TestStrayArgumentsRefused: a positional argument to a command that
// takes none is an error that suggests --config, never a silent default.
func TestStrayArgumentsRefused(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"serve", "berth.toml", "--listen", "127.0.0.1:0"},
		{"verify", "berth.toml"},
		{"gc", "extra"},
		{"passwd", "secret"},
		{"version", "x"},
	} {
		_, err := runCLI(t, dir, args...)
		if err == nil || !strings.Contains(err.Error(), "takes no arguments") {
			t.Errorf("berth %v: %v", args, err)
		}
		if args[1] == "berth.toml" && !strings.Contains(err.Error(), "--config berth.toml") {
			t.Errorf("berth %v: %v does not suggest --config", args, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "berth-data")); err == nil {
		t.Error("a refused command created ./berth-data")
	}
}

// TestOperatorCommandsNeedAStore: verify, gc and ls on a data dir that
// does not exist fail and create nothing.
func TestOperatorCommandsNeedAStore(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{{"verify"}, {"gc"}, {"ls"}, {"verify", "--data-dir", "/typo"}, {"gc", "--data-dir", filepath.Join(dir, "typo")}} {
		out, err := runCLI(t, dir, args...)
		if err == nil || !strings.Contains(err.Error(), "does not exist") || strings.Contains(out, "0 problems") {
			t.Errorf("berth %v: %v\n%s", args, err, out)
		}
	}
	for _, p := range []string{"berth-data", "typo"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s was created", p)
		}
	}
}

// TestSecondServerNamesTheFirst: a second berth on the same data dir says
// the dir is in use and by which PID, and ls lists what the index holds
// (not only the repositories in a config) without counting a pull.
func TestSecondServerNamesTheFirst(t *testing.T) {
	up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer up.Close()
	cfg := &Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0",
		Repositories: []RepositoryConfig{{Name: "up", Kind: "proxy", URL: up.URL}}}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	m, err := NewMain(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewMain(cfg, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "in use by a running berth (pid "+strconv.Itoa(os.Getpid())+")") {
		t.Errorf("second server: %v", err)
	}
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	d := store.DigestOf(body)
	if err := m.store.PutManifest(context.Background(), "old/app", store.Manifest{Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}, "v1", nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(cfg.DataDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lastBefore, _ := st.LastAccess(context.Background(), d)
	st.Close()
	time.Sleep(10 * time.Millisecond)
	out, err := runCLI(t, t.TempDir(), "ls", "--data-dir", cfg.DataDir)
	if err != nil || !strings.Contains(out, "old") || !strings.Contains(out, "app") || !strings.Contains(out, "v1") {
		t.Fatalf("ls of a stopped store: %v\n%s", err, out)
	}
	st, err = store.Open(cfg.DataDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n, _ := st.Pulls(context.Background(), d); n != 0 {
		t.Errorf("berth ls counted %d pulls", n)
	}
	if last, _ := st.LastAccess(context.Background(), d); !last.Equal(lastBefore) {
		t.Errorf("berth ls moved the last access from %v to %v", lastBefore, last)
	}
}

// TestSIGHUPReloads: SIGHUP (no TLS) re-reads the config: a changed
// password and log level take effect, the server keeps serving, and a
// broken config changes nothing.
func TestSIGHUPReloads(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "berth.toml")
	write := func(pw, level string) {
		hash, _ := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
data_dir = %q
listen = "127.0.0.1:0"
log_level = %q
[[repository]]
name = "local"
kind = "hosted"
[[user]]
name = "alice"
password_hash = %q
pull = ["local"]
`, filepath.Join(dir, "data"), level, hash)), 0o600)
	}
	write("pw1", "info")
	cfg, err := loadConfigFile(cfgPath)
	if err == nil {
		err = cfg.setDefaults()
	}
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	log, level := newLogger(cfg, &logs)
	m, err := NewMain(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.cfgPath, m.level = cfgPath, level
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	addr := m.Addrs()[0]
	status := func(pw string) int {
		req, _ := http.NewRequest("GET", "http://"+addr+"/v2/", nil)
		req.SetBasicAuth("alice", pw)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if status("pw1") != 200 || status("pw2") != 401 {
		t.Fatal("initial passwords")
	}
	hup := func() {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	write("pw2", "debug")
	hup()
	for i := 0; i < 200 && !strings.Contains(logs.String(), "SIGHUP: reloaded"); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "SIGHUP: reloaded") {
		t.Fatalf("no reload logged:\n%s", logs.String())
	}
	if status("pw2") != 200 || status("pw1") != 401 {
		t.Error("the new password does not work, or the old one still does")
	}
	if level.Level() != slog.LevelDebug {
		t.Errorf("log level %v after reload, want DEBUG", level.Level())
	}
	// A repository added: a reload cannot apply it, and says so.
	text, _ := os.ReadFile(cfgPath)
	os.WriteFile(cfgPath, append(text, []byte("[[repository]]\nname = \"more\"\nkind = \"hosted\"\n")...), 0o600)
	hup()
	for i := 0; i < 200 && !strings.Contains(logs.String(), "need a restart"); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "need a restart") || !strings.Contains(logs.String(), `repository \"more\" added`) {
		t.Errorf("an added repository on SIGHUP is not named as needing a restart:\n%s", logs.String())
	}
	os.WriteFile(cfgPath, []byte("this is not toml ["), 0o600)
	hup()
	for i := 0; i < 200 && !strings.Contains(logs.String(), "config not reloaded"); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "config not reloaded") || status("pw2") != 200 {
		t.Errorf("a broken config on SIGHUP: %s", logs.String())
	}
	select {
	case err := <-done:
		t.Fatalf("Run ended on SIGHUP: %v", err)
	default:
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's and the test's
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCommandsReachTheAdminSocket: while berth runs, gc and ls on its data
// dir go to the admin socket (mode 0600), not to the public listener.
func TestCommandsReachTheAdminSocket(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0",
		Repositories: []RepositoryConfig{{Name: "local", Kind: "hosted"}}}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	m := runMain(t, cfg)
	sock := m.AdminAddr()
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("admin socket %s: %v %v", sock, st.Mode(), err)
	}
	out, err := runCLI(t, dir, "gc", "--data-dir", cfg.DataDir)
	if err != nil || !strings.Contains(out, "asking it") || !strings.Contains(out, "gc: freed 0 blobs, 0B") {
		t.Errorf("gc while running: %v\n%s", err, out)
	}
	if out, err := runCLI(t, dir, "ls", "--data-dir", cfg.DataDir); err != nil || !strings.Contains(out, "REPOSITORY") {
		t.Errorf("ls while running: %v\n%s", err, out)
	}
	// --server wins over a local data dir (even one that is not there).
	if out, err := runCLI(t, dir, "ls", "--server", "unix:"+sock, "--data-dir", filepath.Join(dir, "elsewhere")); err != nil || !strings.Contains(out, "REPOSITORY") {
		t.Errorf("ls --server: %v\n%s", err, out)
	}
	resp, err := http.Post("http://"+m.Addrs()[0]+"/admin/gc", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/admin/gc on the public listener: %d", resp.StatusCode)
	}
}

// TestImportTarget: importing into a group writes to its push_to member;
// a group without one, or a proxy, is refused with the reason (it used to
// find the image through a proxy member, write nothing, and say
// "imported").
func TestImportTarget(t *testing.T) {
	cfg := &Config{Repositories: []RepositoryConfig{
		{Name: "hub", Kind: "proxy"}, {Name: "local", Kind: "hosted"},
		{Name: "all", Kind: "group", Members: []string{"local", "hub"}, PushTo: "local"},
		{Name: "ro", Kind: "group", Members: []string{"hub"}},
	}}
	for name, want := range map[string]string{"all": "local", "local": "local", "elsewhere": "elsewhere", "": ""} {
		if got, err := importTarget(cfg, name); err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", name, got, err, want)
		}
	}
	for _, name := range []string{"ro", "hub"} {
		if _, err := importTarget(cfg, name); err == nil || !strings.Contains(err.Error(), "--repository") {
			t.Errorf("%q: %v", name, err)
		}
	}
}

// TestVerifyRepairKeepsHostedDamageVisible: verify --repair on a pushed
// image with a corrupt layer quarantines the file and never reports 0
// problems; ls, /metrics and the status page show the image as damaged.
func TestVerifyRepairKeepsHostedDamageVisible(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	st, err := store.Open(data, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	layer := bytes.Repeat([]byte("layer"), 1000)
	ld := store.DigestOf(layer)
	if _, err := st.PutBlob(context.Background(), ld, layer, store.Link{Repo: "local/app", Kind: store.LinkPushed}); err != nil {
		t.Fatal(err)
	}
	body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"digest":%q,"size":%d}]}`, ld, len(layer)))
	md := store.DigestOf(body)
	if err := st.PutManifest(context.Background(), "local/app", store.Manifest{Digest: md, MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body, Hosted: true}, "v1", []store.Digest{ld}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	os.WriteFile(filepath.Join(data, "blobs", "sha256", ld.Hex()[:2], ld.Hex()), bytes.Repeat([]byte("x"), len(layer)), 0o640)

	out, err := runCLI(t, dir, "verify", "--repair", "--data-dir", data)
	if err == nil || strings.Contains(out, " 0 problems") && !strings.Contains(out, "left") {
		t.Errorf("verify --repair on damaged hosted content: %v\n%s", err, out)
	}
	if err == nil || !strings.Contains(err.Error(), "cannot fix") || !strings.Contains(err.Error(), "push the damaged images again") || !strings.Contains(out, "left: damaged_image") {
		t.Errorf("verify --repair does not name what it left and what to do: %v\n%s", err, out)
	}
	out, err = runCLI(t, dir, "verify", "--data-dir", data)
	if err == nil || !strings.Contains(out, "damaged_image") {
		t.Errorf("second verify: %v\n%s", err, out)
	}
	if strings.Contains(err.Error(), "run with --repair") {
		t.Errorf("verify advises --repair for a problem repair cannot fix: %v", err)
	}
	out, _ = runCLI(t, dir, "ls", "--data-dir", data)
	if !strings.Contains(out, "DAMAGED") {
		t.Errorf("ls does not show the damage:\n%s", out)
	}
	cfg := &Config{DataDir: data, Listen: "127.0.0.1:0", Repositories: []RepositoryConfig{{Name: "local", Kind: "hosted"}}}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	m := runMain(t, cfg)
	get := func(p string) string {
		resp, err := http.Get("http://" + m.Addrs()[0] + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if !strings.Contains(get("/metrics"), "berth_damaged_images 1") {
		t.Error("berth_damaged_images is not 1")
	}
	if !strings.Contains(get("/"), "damaged images") {
		t.Error("the status page does not show the damage")
	}
}

// TestBackupCommand: berth backup writes an index that opens, both from a
// stopped data dir and from a running berth (over its admin socket).
func TestBackupCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0", Repositories: []RepositoryConfig{{Name: "local", Kind: "hosted"}}}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	m, err := NewMain(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	if err := m.store.PutManifest(context.Background(), "local/app", store.Manifest{Digest: store.DigestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body, Hosted: true}, "v1", nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	m.Addrs()
	check := func(file string) {
		t.Helper()
		restore := filepath.Join(t.TempDir(), "restore")
		os.MkdirAll(restore, 0o750)
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(restore, "index.db"), b, 0o600)
		os.CopyFS(filepath.Join(restore, "blobs"), os.DirFS(filepath.Join(cfg.DataDir, "blobs")))
		out, err := runCLI(t, dir, "ls", "--data-dir", restore)
		if err != nil || !strings.Contains(out, "app") {
			t.Errorf("ls of the restored copy: %v\n%s", err, out)
		}
	}
	out, err := runCLI(t, dir, "backup", "--data-dir", cfg.DataDir, "--out", filepath.Join(dir, "live.db"))
	if err != nil || !strings.Contains(out, "from the running berth") {
		t.Fatalf("backup while serving: %v\n%s", err, out)
	}
	check(filepath.Join(dir, "live.db"))
	cancel()
	<-done
	m.Close()
	out, err = runCLI(t, dir, "backup", "--data-dir", cfg.DataDir, "--out", filepath.Join(dir, "offline.db"))
	if err != nil || !strings.Contains(out, "from the data dir") {
		t.Fatalf("backup of a stopped data dir: %v\n%s", err, out)
	}
	check(filepath.Join(dir, "offline.db"))
}

// runMain sets cfg's defaults, starts berth on it and stops it (drained,
// closed) when the test ends.
func runMain(t *testing.T, cfg *Config) *Main {
	t.Helper()
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	m, err := NewMain(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		m.Close()
	})
	m.Addrs() // listening
	return m
}

// TestExportNeedsARunningBerth: export with no berth running says so and
// how to point at one, instead of a bare "connection refused".
func TestExportNeedsARunningBerth(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "berth.toml"), []byte("data_dir = \""+filepath.Join(dir, "data")+"\"\n[[repository]]\nname = \"hub\"\nkind = \"proxy\"\nurl = \"https://registry-1.docker.io\"\n"), 0o644)
	for _, format := range []string{"oci", "docker-archive"} {
		_, err := runCLI(t, dir, "export", "-c", "berth.toml", "--format", format, "--out", "x.tar", "nginx:1.27")
		if err == nil || !strings.Contains(err.Error(), "export needs a running berth") || !strings.Contains(err.Error(), "--server") {
			t.Errorf("%s: %v", format, err)
		}
	}
}

// TestMinProcs: on one CPU serve runs goroutines on two threads, so a
// blocking fsync does not hold up every request; an operator's
// GOMAXPROCS and a machine with more CPUs keep Go's choice.
func TestMinProcs(t *testing.T) {
	for _, tc := range []struct {
		env     string
		current int
		want    int
	}{
		{"", 1, 2},
		{"", 2, 0},
		{"", 16, 0},
		{"1", 1, 0},
		{"4", 4, 0},
	} {
		if got := minProcs(tc.env, tc.current); got != tc.want {
			t.Errorf("minProcs(%q, %d) = %d, want %d", tc.env, tc.current, got, tc.want)
		}
	}
}

// berth doctor on a copy of a node's files: a node berth clients set up
// passes (exit 0); one without config_path fails (exit 1) with the fix.
func TestDoctorCommand(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" || (r.URL.Path == "/v2/library/app/manifests/v1" && r.URL.Query().Get("ns") == "docker.io") {
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	dir, root := t.TempDir(), t.TempDir()
	if out, err := runCLI(t, dir, "clients", "--url", srv.URL, "--out", root); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(root, "etc/containerd/config.toml"), []byte("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n"), 0o644)
	out, err := runCLI(t, dir, "doctor", "--root", root, "--url", srv.URL, "--image", "library/app:v1")
	if err != nil || !strings.Contains(out, "OK   containerd docker.io") || !strings.Contains(out, "HEAD library/app:v1 through berth: 200") {
		t.Fatalf("doctor on a node berth clients set up: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(root, "etc/containerd/config.toml"), []byte("version = 2\n"), 0o644)
	out, err = runCLI(t, dir, "doctor", "--root", root, "--url", srv.URL, "--image", "library/nope:v1")
	if code := exitCode(err); code != 1 || !strings.Contains(out, "config_path is not set") || !strings.Contains(out, "fix: set config_path") || !strings.Contains(out, "HEAD library/nope:v1 through berth: 404") {
		t.Errorf("doctor on a node without config_path: exit %d\n%s", code, out)
	}
}

// exitCode is the exit code err asks for (0 for nil, 1 for an error
// without one).
func exitCode(err error) int {
	var ec cli.ExitCoder
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ec):
		return ec.ExitCode()
	}
	return 1
}
