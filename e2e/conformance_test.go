//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// conformanceSkipsAllowed are the suite's checks of optional features that
// berth declines by design (see README, "OCI conformance").
var conformanceSkipsAllowed = []string{
	// ?mount= without from=: berth never mounts a blob whose source the
	// client does not name, so it answers 202 and the client uploads.
	"blob-mount-anonymous",
}

// runConformance runs the OCI distribution-spec conformance suite against
// addr with env settings, keeps its reports under build/conformance/<name>,
// and fails the test on any failure, error or unexpected skip.
func runConformance(t *testing.T, name, addr string, env ...string) {
	t.Helper()
	root, _ := filepath.Abs("..")
	results := filepath.Join(root, "build", "conformance", name)
	os.RemoveAll(results)
	os.MkdirAll(results, 0o755)
	env = append([]string{
		"OCI_REGISTRY=" + addr, "OCI_TLS=disabled", "OCI_RESULTS_DIR=" + results, "OCI_LOG=warn",
		"OCI_REPO1=conformance/repo1", "OCI_REPO2=conformance/repo2",
	}, env...)
	out, err := runErr(10*time.Minute, env, tool("conformance"))
	os.WriteFile(filepath.Join(results, "summary.txt"), []byte(out), 0o644)
	if err != nil {
		t.Fatalf("conformance: %v\n%s", err, tail(out, 4000))
	}
	count := func(label string) int {
		m := regexp.MustCompile(`(?m)^  ` + label + `\.+:\s+(\d+)$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("conformance summary lacks %q:\n%s", label, tail(out, 3000))
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	pass, fail, errs, skip := count("Pass"), count("FAIL"), count("Error"), count("Skip")
	t.Logf("conformance %s: %d pass, %d fail, %d error, %d skip, %d disabled (reports in %s)",
		name, pass, fail, errs, skip, count("Disabled"), results)
	if fail != 0 || errs != 0 || pass == 0 || !strings.Contains(out, "OCI Conformance Test: Pass") {
		t.Fatalf("conformance %s failed:\n%s", name, failures(out))
	}
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasSuffix(line, ": Skip") {
			continue
		}
		ok := false
		for _, allowed := range conformanceSkipsAllowed {
			if strings.Contains(line, allowed) {
				ok = true
			}
		}
		if !ok && strings.Count(line, "/") >= 2 { // leaf checks; parents repeat the leaf's status
			t.Errorf("unexpected skip: %s", strings.TrimSpace(line))
		}
	}
}

func failures(out string) string {
	var b strings.Builder
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "Fail") || strings.Contains(line, "Error") || strings.HasPrefix(strings.TrimSpace(line), "-") {
			b.WriteString(line + "\n")
		}
	}
	return tail(b.String(), 6000)
}

// TestConformanceHosted: the whole OCI distribution spec (pull, push,
// content discovery, content management) against a hosted repository,
// with the optional upload-cancel, tag-parameter and digest-header checks
// turned on.
func TestConformanceHosted(t *testing.T) {
	b := startBerth(t, `default_repository = "hosted"
[[repository]]
name = "hosted"
kind = "hosted"
anonymous_pull = true
anonymous_push = true   # a scratch registry for the test
`)
	runConformance(t, "hosted", b.addr,
		"OCI_API_BLOBS_UPLOAD_CANCEL=true", "OCI_API_MANIFESTS_TAG_PARAM=true",
		"OCI_API_BLOBS_DIGEST_HEADER=true", "OCI_API_MANIFESTS_DIGEST_HEADER=true")
}
