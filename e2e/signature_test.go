//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// cosignKey is a key pair cosign generated (no password), in its own dir.
type cosignKey struct{ dir string }

func newCosignKey(t *testing.T) cosignKey {
	t.Helper()
	k := cosignKey{t.TempDir()}
	if _, stderr, err := runIn(k.dir, time.Minute, k.env(), tool("cosign"), "generate-key-pair"); err != nil {
		t.Fatalf("cosign generate-key-pair: %v\n%s", err, stderr)
	}
	return k
}

func (k cosignKey) pub() string { return filepath.Join(k.dir, "cosign.pub") }

// env keeps cosign off the network and its state in the key's dir.
func (k cosignKey) env() []string {
	return append([]string{"COSIGN_PASSWORD=", "HOME=" + k.dir, "TUF_ROOT=" + filepath.Join(k.dir, "tuf"), "COSIGN_YES=true"}, noNet...)
}

// sign signs ref (registry/repo@digest) with cosign, offline: no
// transparency log upload. bundle: cosign's newer layout, a Sigstore
// bundle stored as a referrer.
func (k cosignKey) sign(t *testing.T, ref string, bundle bool) {
	t.Helper()
	args := []string{"sign", "--key", filepath.Join(k.dir, "cosign.key"), "--tlog-upload=false", "--allow-insecure-registry", "--yes"}
	if bundle {
		args = append(args, "--new-bundle-format")
	}
	if out, err := runErr(2*time.Minute, k.env(), tool("cosign"), append(args, ref)...); err != nil {
		t.Fatalf("cosign sign %s: %v\n%s", ref, err, out)
	}
}

// signedConfig is a proxy of up whose policy requires a signature by one
// of keys.
func signedConfig(up string, keys ...string) string {
	return proxyConfig(up) + fmt.Sprintf(`policy = "signed"

[[policy]]
name = "signed"
require_signature = true
keys = ["%s"]
`, strings.Join(keys, `", "`))
}

// TestPolicySignaturesWithCosign: images signed with the real cosign on
// the upstream, pulled through berth with crane under a policy requiring
// a signature by one key: the key's signature (tag scheme and bundle
// referrer) pulls; no signature, another key's, and a valid signature of
// another image are refused with the reason; a signed index lets its
// platform manifest pull by digest; cosign itself verifies through berth.
func TestPolicySignaturesWithCosign(t *testing.T) {
	clientRow(t, "crane", "require_signature: cosign-signed images pull, unsigned and wrongly signed ones are refused")
	up := startRegistry(t)
	key, other := newCosignKey(t), newCosignKey(t)
	img := func(tag string) v1.Hash { return up.push(t, "library/app:"+tag, testImage(t, "amd64", 1, 8<<10)) }
	at := func(d v1.Hash) string { return up.addr + "/library/app@" + d.String() }
	signed, unsigned, byOther, replayed, bundled := img("signed"), img("unsigned"), img("other"), img("replayed"), img("bundled")
	key.sign(t, at(signed), false)
	other.sign(t, at(byOther), false)
	key.sign(t, at(bundled), true)
	// A valid signature of another image, copied where this one's goes.
	run(t, time.Minute, nil, tool("crane"), "copy", "--insecure", up.addr+"/library/app:sha256-"+signed.Hex+".sig", up.addr+"/library/app:sha256-"+replayed.Hex+".sig")
	index := up.pushIndex(t, "library/multi:v1", map[string]v1.Image{"amd64": testImage(t, "amd64", 1, 4<<10), "arm64": testImage(t, "arm64", 1, 4<<10)})
	key.sign(t, up.addr+"/library/multi@"+index.String(), false)

	b := startBerth(t, signedConfig(up.proxy, key.pub()))
	crane := func(args ...string) (string, error) {
		return runErr(time.Minute, nil, tool("crane"), append(args, "--insecure")...)
	}
	for ref, want := range map[string]string{
		"library/app:signed":                        "",
		"library/app:bundled":                       "",
		"library/app:unsigned":                      "no signature of " + unsigned.String(),
		"library/app:other":                         "none verifies",
		"library/app:replayed":                      "the signature is of " + signed.String(),
		"library/app@" + replayed.String():          "the signature is of " + signed.String(),
		"library/app@" + byOther.String():           "none verifies",
		"library/app:sha256-" + signed.Hex + ".sig": "", // the signature itself, for clients that verify
	} {
		out, err := crane("manifest", b.addr+"/"+ref)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v\n%s", ref, err, out)
		case want != "" && (err == nil || !strings.Contains(out, "DENIED") || !strings.Contains(out, `not signed by a key of policy`) || !strings.Contains(out, want)):
			t.Errorf("%s: %v\n%s\nwant DENIED with %q", ref, err, out, want)
		}
	}
	out, err := crane("manifest", b.addr+"/library/multi:v1")
	if err != nil {
		t.Fatalf("the signed index: %v\n%s", err, out)
	}
	child := strings.SplitN(strings.SplitN(out, `"digest":"`, 2)[1], `"`, 2)[0]
	if out, err := crane("manifest", b.addr+"/library/multi@"+child); err != nil {
		t.Fatalf("a platform manifest of the signed index, by digest: %v\n%s", err, out)
	}
	if out, err := crane("pull", b.addr+"/library/app:signed", filepath.Join(t.TempDir(), "img.tar")); err != nil {
		t.Fatalf("crane pull of the signed image: %v\n%s", err, out)
	}
	// cosign verifies through berth: the signatures are served.
	if out, err := runErr(time.Minute, key.env(), tool("cosign"), "verify", "--key", key.pub(), "--insecure-ignore-tlog=true",
		"--allow-insecure-registry", b.addr+"/library/app@"+signed.String()); err != nil {
		t.Fatalf("cosign verify through berth: %v\n%s", err, out)
	}
	if n := b.metric(t, "berth_policy_decisions_total", `decision="deny"`, `reason="signature"`); n < 5 {
		t.Errorf("signature refusals counted %v, want >= 5", n)
	}
}

// TestPolicySignaturesDockerContainerd: a Docker daemon (registry-mirrors)
// and containerd (ctr) pull a signed image through berth; an unsigned one
// is refused.
func TestPolicySignaturesDockerContainerd(t *testing.T) {
	clientRow(t, "docker", "require_signature: a signed image pulls, an unsigned one does not")
	clientRow(t, "containerd", "require_signature: a signed image pulls, an unsigned one does not")
	up := startRegistry(t)
	key := newCosignKey(t)
	signed := up.push(t, "library/sig-app:v1", testImage(t, "amd64", 2, 64<<10))
	up.push(t, "library/nosig-app:v1", testImage(t, "amd64", 2, 64<<10))
	key.sign(t, up.addr+"/library/sig-app@"+signed.String(), false)
	b := startBerth(t, signedConfig(up.proxy, key.pub()))

	d := startDockerd(t, b.addr)
	d.docker(t, "pull", "sig-app:v1")
	if out := d.docker(t, "image", "inspect", "--format", "{{json .RepoDigests}}", "sig-app:v1"); !strings.Contains(out, signed.String()) {
		t.Fatalf("docker: repo digests %s, want %s", out, signed)
	}
	if out, err := runErr(2*time.Minute, d.env, "docker", "pull", b.addr+"/nosig-app:v1"); err == nil {
		t.Fatalf("docker pulled an unsigned image:\n%s", out)
	} else if !strings.Contains(out, "not signed by a key of policy") {
		t.Errorf("docker's error does not carry berth's reason:\n%s", out)
	}

	sock := containerdSocket(t)
	ctr := func(ref string) (string, error) {
		return runErr(2*time.Minute, noNet, "ctr", "-a", sock, "-n", "e2e", "images", "pull", "--plain-http", "--snapshotter", "native", ref)
	}
	if out, err := ctr(b.addr + "/library/sig-app:v1"); err != nil {
		t.Fatalf("containerd, a signed image: %v\n%s", err, out)
	}
	out, err := ctr(b.addr + "/library/nosig-app:v1")
	if err == nil || !strings.Contains(out, "403") {
		t.Fatalf("containerd pulled an unsigned image (%v):\n%s", err, out)
	}
}

// TestPolicyQuarantineWithApprove: min_age holds a new digest; the tag
// keeps serving the approved one before it; berth policy test explains;
// berth approve releases.
func TestPolicyQuarantineWithApprove(t *testing.T) {
	clientRow(t, "crane", "min_age: a new digest is held, the tag keeps the last approved one, berth approve releases")
	up := startRegistry(t)
	first := up.push(t, "library/app:v1", testImage(t, "amd64", 1, 8<<10))
	b := startBerth(t, proxyConfig(up.proxy)+`policy = "aged"

[[policy]]
name = "aged"
min_age = "72h"
`)
	crane := func(args ...string) (string, error) {
		return runErr(time.Minute, nil, tool("crane"), append(args, "--insecure")...)
	}
	berthCmd := func(args ...string) (string, error) {
		return runErr(time.Minute, nil, berthBin, append([]string{args[0], args[1], "--server", b.admin()}, args[2:]...)...)
	}
	out, err := crane("manifest", b.addr+"/library/app:v1")
	if err == nil || !strings.Contains(out, "quarantined until") || !strings.Contains(out, "berth approve hub/library/app@"+first.String()) {
		t.Fatalf("a new image: %v\n%s\nwant DENIED, quarantined, with the approve command", err, out)
	}
	if out, err := runErr(time.Minute, nil, berthBin, "policy", "test", "--server", b.admin(), "hub/library/app:v1"); err == nil || !strings.Contains(out, "decision   hold") || !strings.Contains(out, "held until") {
		t.Fatalf("berth policy test: %v\n%s", err, out)
	}
	if out, err := berthCmd("approve", "hub/library/app@"+first.String()); err != nil {
		t.Fatalf("berth approve: %v\n%s", err, out)
	}
	if out, err := crane("digest", b.addr+"/library/app:v1"); err != nil || strings.TrimSpace(out) != first.String() {
		t.Fatalf("after approve: %v %s", err, out)
	}
	// A new digest of the tag is held; the tag keeps the approved one.
	second := up.push(t, "library/app:v1", testImage(t, "amd64", 1, 8<<10))
	time.Sleep(1100 * time.Millisecond) // tag_ttl
	for _, verb := range []string{"digest", "manifest"} {
		out, err := crane(verb, b.addr+"/library/app:v1")
		if err != nil || !strings.Contains(out, first.String()) && verb == "digest" {
			t.Fatalf("crane %s of a tag with a held new digest: %v\n%s\nwant the approved %s", verb, err, out, first)
		}
	}
	if out, err := crane("manifest", b.addr+"/library/app@"+second.String()); err == nil || !strings.Contains(out, "quarantined") {
		t.Fatalf("the held digest by digest: %v\n%s", err, out)
	}
	if out, err := berthCmd("approve", "hub/library/app@"+second.String()); err != nil {
		t.Fatalf("berth approve: %v\n%s", err, out)
	}
	if out, err := crane("digest", b.addr+"/library/app:v1"); err != nil || strings.TrimSpace(out) != second.String() {
		t.Fatalf("after approving the new digest: %v %s", err, out)
	}
	if out, err := berthCmd("approve", "hub/library/app@sha256:nothex"); err == nil || !strings.Contains(out, "digest") {
		t.Fatalf("approve of a bad digest: %v\n%s", err, out)
	}
}
