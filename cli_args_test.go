package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-registry/berth/store"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/urfave/cli/v2"
)

// TestPermuteArgs: flags anywhere on the line reach the command; values
// stay with their flags; "--" ends the flags; unknown flags stay put.
func TestPermuteArgs(t *testing.T) {
	app := newApp(nil, nil).App
	for _, tc := range []struct{ in, want string }{
		{"berth ls -c b.toml internal --json", "berth ls -c b.toml --json internal"},
		{"berth import -c b2.toml images.tar --repository imported", "berth import -c b2.toml --repository imported images.tar"},
		{"berth import images.tar --repository=imported", "berth import --repository=imported images.tar"},
		{"berth ls internal -- --json", "berth ls internal -- --json"},
		{"berth ls internal --nosuch", "berth ls internal --nosuch"},
		{"berth version", "berth version"},
	} {
		got := strings.Join(permuteArgs(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("%q → %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestCommandLineReadsWhatPeopleType: a flag after the argument works,
// an unknown command gets the nearest one, --version answers, an unknown
// repository and an output that cannot be written are errors before any
// work.
func TestCommandLineReadsWhatPeopleType(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "berth.toml")
	writeFile(t, cfg, "data_dir = \""+filepath.Join(dir, "data")+"\"\n[[repository]]\nname = \"internal\"\nkind = \"hosted\"\n")
	// A store to list, offline.
	st, serr := store.Open(filepath.Join(dir, "data"), store.Options{})
	if serr != nil {
		t.Fatal(serr)
	}
	st.Close()
	out, err := runCLI(t, dir, "ls", "-c", cfg, "internal", "--json")
	if err != nil || !strings.HasPrefix(strings.TrimSpace(out), "[") && !strings.HasPrefix(strings.TrimSpace(out), "null") {
		t.Errorf("ls with --json after the argument: %v\n%s", err, out)
	}
	if out, err := runCLI(t, dir, "ls", "-c", cfg, "nosuch"); err == nil || !strings.Contains(err.Error(), `no repository "nosuch"`) {
		t.Errorf("ls of an unknown repository: %v\n%s", err, out)
	}
	if _, err := runCLI(t, dir, "export", "--out", filepath.Join(dir, "missing", "x.tar"), "internal/app:v1"); err == nil || !strings.Contains(err.Error(), "cannot write") {
		t.Errorf("export to a missing directory: %v", err)
	}
	code := 0
	old := cli.OsExiter
	cli.OsExiter = func(c int) { code = c }
	defer func() { cli.OsExiter = old }()
	out, _ = runCLI(t, dir, "serv")
	if !strings.Contains(out, `did you mean "serve"?`) || code != 2 {
		t.Errorf("berth serv: exit %d\n%s", code, out)
	}
	out, err = runCLI(t, dir, "--version")
	if err != nil || !strings.Contains(out, "berth version") {
		t.Errorf("--version: %v %q", err, out)
	}
	if !slices.Contains([]string{"dev"}, version) && !strings.Contains(out, version) {
		t.Errorf("--version does not print %q", version)
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestGCSaysWhatGraceKept: a blob no manifest references, stored just
// now, is kept by the grace period and gc says so; --grace 0 collects it.
func TestGCSaysWhatGraceKept(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	st, err := store.Open(data, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w, _ := st.NewBlobWriter(context.Background(), "")
	body := []byte("an orphan layer")
	w.Write(body)
	if _, err := w.Commit(context.Background(), store.DigestOf(body), int64(len(body)), store.Link{Repo: "local/app", Kind: store.LinkPushed}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	st.Close()
	out, err := runCLI(t, dir, "gc", "--data-dir", data, "--dry-run")
	if err != nil || !strings.Contains(out, "would free 0 blobs") || !strings.Contains(out, "kept 1 unreferenced blobs") || !strings.Contains(out, "--grace 0") {
		t.Fatalf("gc --dry-run: %v\n%s", err, out)
	}
	out, err = runCLI(t, dir, "gc", "--data-dir", data, "--dry-run", "--grace", "0")
	if err != nil || !strings.Contains(out, "would free 1 blobs") {
		t.Fatalf("gc --dry-run --grace 0: %v\n%s", err, out)
	}
}

// TestVerifyRepairConverges: a corrupt cached layer named by a cached
// manifest is fixed by one verify --repair (dropping the blob leaves
// links and a tag dangling, which the same run repairs); a second verify
// finds nothing. It used to take two runs.
func TestVerifyRepairConverges(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	st, err := store.Open(data, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	layer := []byte(strings.Repeat("cached layer ", 500))
	ld := store.DigestOf(layer)
	if _, err := st.PutBlob(ctx, ld, layer, store.Link{Repo: "hub/app", Kind: store.LinkFetched}); err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"digest":"` + ld.String() + `","size":6500}]}`)
	if err := st.PutManifest(ctx, "hub/app", store.Manifest{Digest: store.DigestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}, "v1", []store.Digest{ld}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	os.WriteFile(filepath.Join(data, "blobs", "sha256", ld.Hex()[:2], ld.Hex()), []byte(strings.Repeat("x", len(layer))), 0o640)
	out, err := runCLI(t, dir, "verify", "--repair", "--data-dir", data)
	if err != nil || !strings.Contains(out, "repaired") {
		t.Fatalf("verify --repair: %v\n%s", err, out)
	}
	if out, err := runCLI(t, dir, "verify", "--data-dir", data); err != nil || !strings.Contains(out, " 0 problems") {
		t.Fatalf("a second verify after one repair: %v\n%s", err, out)
	}
}

// TestRegistryErrorsAreSentences: an error the registry answers with
// details is printed as codes and messages, not as a Go map.
func TestRegistryErrorsAreSentences(t *testing.T) {
	err := explainRegistryErr(&transport.Error{StatusCode: 404, Errors: []transport.Diagnostic{{
		Code: "MANIFEST_UNKNOWN", Message: "manifest app:v1 not found in group \"all\"",
		Detail: map[string]any{"tried": []any{map[string]any{"member": "internal"}}}}}})
	if msg := err.Error(); strings.Contains(msg, "map[") || !strings.Contains(msg, "berth answered 404 Not Found: MANIFEST_UNKNOWN: manifest app:v1 not found") {
		t.Errorf("registry error: %s", msg)
	}
}
