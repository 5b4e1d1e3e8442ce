//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const hostedConfig = `default_repository = "hosted"
[[repository]]
name = "hosted"
kind = "hosted"
anonymous_pull = true
anonymous_push = true   # a scratch registry for the test
`

// TestClientsPush pushes with crane, regctl, skopeo, oras and docker into a
// hosted repository and pulls each image back, comparing digests.
func TestClientsPush(t *testing.T) {
	up := startRegistry(t)
	app := testImage(t, "amd64", 2, 256<<10)
	appDigest := up.push(t, "library/e2e-app:v1", app)
	multiDigest := up.pushIndex(t, "library/e2e-multi:v1", map[string]v1.Image{
		"amd64": testImage(t, "amd64", 1, 128<<10), "arm64": testImage(t, "arm64", 1, 128<<10)})
	b := startBerth(t, hostedConfig)
	home := t.TempDir()
	env := []string{"HOME=" + home}
	src := up.addr + "/library/e2e-app:v1"
	digestAt := func(ref string) string {
		return strings.TrimSpace(run(t, time.Minute, env, tool("crane"), "digest", "--insecure", ref))
	}
	validate := func(ref string) {
		run(t, 2*time.Minute, env, tool("crane"), "validate", "--insecure", "--remote", ref)
	}

	t.Run("crane", func(t *testing.T) {
		clientRow(t, "crane", "push to a hosted repository and pull back")
		run(t, 2*time.Minute, env, tool("crane"), "copy", "--insecure", src, b.addr+"/crane/copied:v1")
		tarball := filepath.Join(t.TempDir(), "app.tar")
		run(t, 2*time.Minute, env, tool("crane"), "pull", "--insecure", src, tarball)
		run(t, 2*time.Minute, env, tool("crane"), "push", "--insecure", tarball, b.addr+"/crane/pushed:v1")
		for _, ref := range []string{b.addr + "/crane/copied:v1", b.addr + "/crane/pushed:v1"} {
			if got := digestAt(ref); got != appDigest.String() {
				t.Errorf("%s: digest %s, want %s", ref, got, appDigest)
			}
			validate(ref)
		}
	})
	t.Run("regctl", func(t *testing.T) {
		clientRow(t, "regctl", "push to a hosted repository and pull back")
		run(t, time.Minute, env, tool("regctl"), "registry", "set", "--tls", "disabled", b.addr)
		run(t, time.Minute, env, tool("regctl"), "registry", "set", "--tls", "disabled", up.addr)
		run(t, 2*time.Minute, env, tool("regctl"), "image", "copy", up.addr+"/library/e2e-multi:v1", b.addr+"/regctl/multi:v1")
		if got := strings.TrimSpace(run(t, time.Minute, env, tool("regctl"), "image", "digest", b.addr+"/regctl/multi:v1")); got != multiDigest.String() {
			t.Fatalf("regctl copy: digest %s, want %s", got, multiDigest)
		}
		validate(b.addr + "/regctl/multi:v1")
	})
	t.Run("skopeo", func(t *testing.T) {
		clientRow(t, "skopeo", "push to a hosted repository and pull back")
		run(t, 2*time.Minute, env, "skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
			"docker://"+up.addr+"/library/e2e-multi:v1", "docker://"+b.addr+"/skopeo/multi:v1")
		if got := digestAt(b.addr + "/skopeo/multi:v1"); got != multiDigest.String() {
			t.Fatalf("skopeo copy: digest %s, want %s", got, multiDigest)
		}
		run(t, 2*time.Minute, env, "skopeo", "copy", "--src-tls-verify=false", "docker://"+b.addr+"/skopeo/multi:v1", "dir:"+t.TempDir())
	})
	t.Run("oras", func(t *testing.T) {
		clientRow(t, "oras", "push to a hosted repository and pull back")
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("release notes\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "sig.txt"), []byte("signature\n"), 0o644)
		orasIn := func(args ...string) string {
			t.Helper()
			cmd := append([]string{}, args...)
			o, e, err := runIn(dir, 2*time.Minute, env, tool("oras"), cmd...)
			out := o + e
			if err != nil {
				t.Fatalf("oras %v: %v\n%s", args, err, out)
			}
			return out
		}
		ref := b.addr + "/oras/artifact:v1"
		orasIn("push", "--plain-http", "--artifact-type", "application/vnd.berth.test", ref, "notes.txt:text/plain")
		orasIn("attach", "--plain-http", "--artifact-type", "application/vnd.berth.signature", ref, "sig.txt:text/plain")
		var tree struct {
			Referrers []struct {
				ArtifactType string `json:"artifactType"`
				Digest       string `json:"digest"`
			} `json:"referrers"`
			Manifests []struct {
				ArtifactType string `json:"artifactType"`
			} `json:"manifests"`
		}
		out := orasIn("discover", "--plain-http", "--format", "json", ref)
		if err := json.Unmarshal([]byte(out), &tree); err != nil {
			t.Fatalf("oras discover: %v\n%s", err, out)
		}
		found := false
		for _, r := range tree.Referrers {
			found = found || r.ArtifactType == "application/vnd.berth.signature"
		}
		for _, m := range tree.Manifests {
			found = found || m.ArtifactType == "application/vnd.berth.signature"
		}
		if !found {
			t.Fatalf("oras discover does not list the signature:\n%s", out)
		}
		pulled := filepath.Join(dir, "pulled")
		orasIn("pull", "--plain-http", "-o", pulled, ref)
		if got, _ := os.ReadFile(filepath.Join(pulled, "notes.txt")); string(got) != "release notes\n" {
			t.Fatalf("oras pull: %q", got)
		}
	})
	t.Run("docker", func(t *testing.T) {
		clientRow(t, "docker", "push to a hosted repository and pull back")
		d := startDockerd(t, "")
		d.docker(t, "pull", src)
		d.docker(t, "tag", src, b.addr+"/docker/app:v1")
		out := d.docker(t, "push", b.addr+"/docker/app:v1")
		m := regexp.MustCompile(`digest: (sha256:[0-9a-f]{64})`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("docker push output:\n%s", out)
		}
		if got := digestAt(b.addr + "/docker/app:v1"); got != m[1] {
			t.Fatalf("docker push: berth has %s, docker reported %s", got, m[1])
		}
		validate(b.addr + "/docker/app:v1")
		d.docker(t, "rmi", src, b.addr+"/docker/app:v1")
		d.docker(t, "pull", b.addr+"/docker/app:v1")
	})
}
