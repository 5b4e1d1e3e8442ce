package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// wrk runs the wrk load generator (C, from Debian) so that the client
// costs little CPU next to the server on this small machine.
type wrkResult struct {
	reqPerSec   float64
	bytesPerSec float64
	p50, p99    time.Duration
	errors      int
}

func runWrk(conns int, dur time.Duration, script, url string) (wrkResult, error) {
	args := []string{"-t2", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(dur.Seconds())), "--latency", "--timeout", "30s"}
	if script != "" {
		args = append(args, "-s", script)
	}
	out, err := exec.Command("wrk", append(args, url)...).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	var r wrkResult
	text := string(out)
	if m := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`).FindStringSubmatch(text); m != nil {
		r.reqPerSec, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := regexp.MustCompile(`Transfer/sec:\s+([0-9.]+)([KMGT]?B)`).FindStringSubmatch(text); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		r.bytesPerSec = v * map[string]float64{"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[m[2]]
	}
	for _, q := range []struct {
		label string
		dst   *time.Duration
	}{{"50%", &r.p50}, {"99%", &r.p99}} {
		if m := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(q.label) + `\s+([0-9.]+)(us|ms|s)`).FindStringSubmatch(text); m != nil {
			v, _ := strconv.ParseFloat(m[1], 64)
			*q.dst = time.Duration(v * float64(map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[2]]))
		}
	}
	if m := regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`).FindStringSubmatch(text); m != nil {
		r.errors, _ = strconv.Atoi(m[1])
	}
	if m := regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`).FindStringSubmatch(text); m != nil {
		for _, v := range m[1:] {
			n, _ := strconv.Atoi(v)
			r.errors += n
		}
	}
	return r, nil
}

// tagScript writes a wrk script asking random repositories' tags.
func tagScript(repos []string) string {
	var b strings.Builder
	b.WriteString("local paths = {\n")
	for _, r := range repos {
		fmt.Fprintf(&b, "  %q,\n", "/v2/"+r+"/manifests/v1")
	}
	b.WriteString("}\n")
	b.WriteString(`wrk.headers["Accept"] = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"` + "\n")
	b.WriteString("request = function() return wrk.format(\"GET\", paths[math.random(#paths)]) end\n")
	path := filepath.Join(*outDir, "tags.lua")
	os.WriteFile(path, []byte(b.String()), 0o644)
	return path
}
