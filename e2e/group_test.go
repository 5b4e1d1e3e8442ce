//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

const ciPassword = "ci-password"

// nexusSetup starts two upstream registries (the second demanding basic
// auth, standing in for ghcr.io) and berth with examples/nexus-style/
// berth.toml, only the upstream URLs and ports changed.
type nexusSetup struct {
	hub, ghcr *upstreamRegistry
	b         *berth
	ghcrAddr  string // the extra listener bound to the ghcr proxy
	certsDir  string // the example hosts.toml files, pointed at berth
}

func startNexusSetup(t *testing.T) *nexusSetup {
	t.Helper()
	hash, _ := bcrypt.GenerateFromPassword([]byte("robot-token"), bcrypt.DefaultCost)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(htpasswd, []byte("ci-robot:"+string(hash)+"\n"), 0o644)
	n := &nexusSetup{hub: startRegistry(t), ghcr: startRegistryAuth(t, htpasswd)}
	// berth's own users, in the htpasswd file the example names.
	ciHash, _ := bcrypt.GenerateFromPassword([]byte(ciPassword), bcrypt.DefaultCost)
	devHash, _ := bcrypt.GenerateFromPassword([]byte("dev-password"), bcrypt.DefaultCost)
	berthHtpasswd := filepath.Join(t.TempDir(), "berth-htpasswd")
	os.WriteFile(berthHtpasswd, []byte("ci:"+string(ciHash)+"\ndeveloper:"+string(devHash)+"\n"), 0o600)
	example, err := os.ReadFile("../examples/nexus-style/berth.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer(
		"https://registry-1.docker.io", "http://"+n.hub.proxy,
		"https://ghcr.io", "http://"+n.ghcr.proxy,
		`listen = ":5001"`, `listen = "127.0.0.1:0"`,
		"/etc/berth/htpasswd", berthHtpasswd,
	).Replace(string(example))
	n.b = startBerthEnv(t, cfg, "GHCR_TOKEN=robot-token")
	n.ghcrAddr = n.b.listeners[0]

	n.certsDir = t.TempDir()
	for _, ns := range []string{"docker.io", "ghcr.io"} {
		b, err := os.ReadFile(filepath.Join("../examples/nexus-style/certs.d", ns, "hosts.toml"))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(n.certsDir, ns), 0o755)
		os.WriteFile(filepath.Join(n.certsDir, ns, "hosts.toml"), []byte(strings.ReplaceAll(string(b), "berth.internal:5000", n.b.addr)), 0o644)
	}
	return n
}

// TestNexusStyleContainerd: containerd with one hosts.toml per upstream
// namespace, both naming one berth; ?ns= routes each pull to its proxy.
func TestNexusStyleContainerd(t *testing.T) {
	clientRow(t, "containerd", "ctr pull with certs.d hosts.toml per registry (?ns=)")
	n := startNexusSetup(t)
	hubImg := n.hub.push(t, "library/e2e-ctr:v1", testImage(t, "amd64", 2, 256<<10))
	ghcrImg := n.ghcr.pushAuth(t, "team/tool:v1", testImage(t, "amd64", 1, 256<<10), "ci-robot", "robot-token")

	ctr := startContainerd(t)
	for _, tc := range []struct{ ref, repo, digest string }{
		{"docker.io/library/e2e-ctr:v1", "dockerhub", hubImg.String()},
		{"ghcr.io/team/tool:v1", "ghcr", ghcrImg.String()},
	} {
		before := n.b.metric(t, "berth_cache_results_total", `repository="`+tc.repo+`"`, `kind="manifest"`)
		ctr("images", "pull", "--hosts-dir", n.certsDir, "--snapshotter", "native", tc.ref)
		if out := ctr("images", "ls", "-q"); !strings.Contains(out, tc.ref) {
			t.Fatalf("ctr images: %s", out)
		}
		if out := ctr("images", "ls"); !strings.Contains(out, tc.digest) {
			t.Fatalf("%s: digest %s not in\n%s", tc.ref, tc.digest, out)
		}
		if after := n.b.metric(t, "berth_cache_results_total", `repository="`+tc.repo+`"`, `kind="manifest"`); after <= before {
			t.Errorf("%s was not routed to %s by ?ns=", tc.ref, tc.repo)
		}
	}
}

// TestNexusStyleDockerAndClients: a Docker daemon using the group as its
// mirror, pushes through the group, path prefixes and the extra listener.
func TestNexusStyleDockerAndClients(t *testing.T) {
	n := startNexusSetup(t)
	hubImg := n.hub.push(t, "library/e2e-grp:latest", testImage(t, "amd64", 2, 256<<10))
	ghcrImg := n.ghcr.pushAuth(t, "team/tool:v1", testImage(t, "amd64", 1, 128<<10), "ci-robot", "robot-token")
	env := []string{"HOME=" + t.TempDir()}
	digest := func(ref string) string {
		return strings.TrimSpace(run(t, time.Minute, env, tool("crane"), "digest", "--insecure", ref))
	}

	d := startDockerd(t, n.b.addr)
	d.docker(t, "pull", "e2e-grp:latest") // mirror → group → dockerhub
	if out := d.docker(t, "image", "inspect", "--format", "{{json .RepoDigests}}", "e2e-grp:latest"); !strings.Contains(out, hubImg.String()) {
		t.Fatalf("docker pull through group: %s", out)
	}
	// Push through the group (as the ci user) lands in the hosted member,
	// which anonymous clients cannot read.
	d.docker(t, "tag", "e2e-grp:latest", n.b.addr+"/team/pushed:1")
	if _, err := runErr(time.Minute, []string{"HOME=" + t.TempDir()}, tool("crane"), "copy", "--insecure",
		n.b.addr+"/e2e-grp:latest", n.b.addr+"/team/anonymous:1"); err == nil {
		t.Fatal("anonymous push succeeded")
	}
	d.docker(t, "login", "-u", "ci", "-p", ciPassword, n.b.addr)
	d.docker(t, "push", n.b.addr+"/team/pushed:1")
	creds := []string{"--insecure", "-u", "ci", "-p", ciPassword}
	run(t, time.Minute, env, tool("crane"), append([]string{"auth", "login", n.b.addr}, creds[1:]...)...)
	pushed := digest(n.b.addr + "/team/pushed:1")
	if got := digest(n.b.addr + "/internal/team/pushed:1"); got != pushed {
		t.Fatalf("pushed image not in internal: %s vs %s", got, pushed)
	}
	if _, err := runErr(time.Minute, []string{"HOME=" + t.TempDir()}, tool("crane"), "digest", "--insecure", n.b.addr+"/internal/team/pushed:1"); err == nil {
		t.Fatal("anonymous client read the private hosted repository")
	}

	// Path prefixes by repository name and by upstream host.
	if got := digest(n.b.addr + "/dockerhub/library/e2e-grp:latest"); got != hubImg.String() {
		t.Errorf("crane via /dockerhub/: %s", got)
	}
	run(t, time.Minute, env, tool("regctl"), "registry", "set", "--tls", "disabled", n.b.addr)
	if got := strings.TrimSpace(run(t, time.Minute, env, tool("regctl"), "image", "digest", n.b.addr+"/ghcr/team/tool:v1")); got != ghcrImg.String() {
		t.Errorf("regctl via /ghcr/: %s", got)
	}
	out := run(t, time.Minute, env, "skopeo", "inspect", "--tls-verify=false", "docker://"+n.b.addr+"/team/tool:v1")
	if !strings.Contains(out, ghcrImg.String()) {
		t.Errorf("skopeo through the group: %s", out)
	}
	// The extra listener serves only the ghcr proxy.
	if got := digest(n.ghcrAddr + "/team/tool:v1"); got != ghcrImg.String() {
		t.Errorf("ghcr listener: %s", got)
	}
	if _, err := runErr(time.Minute, env, tool("crane"), "digest", "--insecure", n.ghcrAddr+"/library/e2e-grp:latest"); err == nil {
		t.Error("the ghcr listener served a Docker Hub image")
	}
}

// TestConformanceGroup runs the conformance suite through the group:
// pulls try the members, pushes go to push_to.
func TestConformanceGroup(t *testing.T) {
	n := startNexusSetup(t)
	runConformance(t, "group", n.b.addr, "OCI_USERNAME=ci", "OCI_PASSWORD="+ciPassword,
		"OCI_API_BLOBS_UPLOAD_CANCEL=true", "OCI_API_MANIFESTS_TAG_PARAM=true",
		"OCI_API_BLOBS_DIGEST_HEADER=true", "OCI_API_MANIFESTS_DIGEST_HEADER=true")
}
