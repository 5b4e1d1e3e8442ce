package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/server"
)

func TestProgressBar(t *testing.T) {
	bar := progressBar("library/nginx:1.27", 50<<20, 100<<20, 2*time.Second)
	for _, want := range []string{"library/nginx:1.27", "[===============               ]", " 50.0%", "50.0MiB/100.0MiB", "25.0MiB/s", "ETA 2s"} {
		if !strings.Contains(bar, want) {
			t.Errorf("bar %q lacks %q", bar, want)
		}
	}
	// Not a terminal: one line per object.
	var out bytes.Buffer
	p := newProgress(&out, "app:v1", 300)
	p.add(100)
	p.object("blob sha256:aa", 100)
	if got := out.String(); got != "app:v1: blob sha256:aa (100B) 100/300 bytes\n" {
		t.Fatalf("line %q", got)
	}
}

func TestParseImageRefs(t *testing.T) {
	for _, tc := range []struct{ in, name, ref string }{
		{"nginx", "nginx", "latest"},
		{"library/nginx:1.27", "library/nginx", "1.27"},
		{"ghcr.io/org/app:v1", "ghcr.io/org/app", "v1"},
		{"app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "app", "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	} {
		name, ref, err := server.ParseImageRef(tc.in)
		if err != nil || name != tc.name || ref != tc.ref {
			t.Errorf("%q: %q %q %v", tc.in, name, ref, err)
		}
	}
	if _, _, err := server.ParseImageRef("Bad//Name"); err == nil {
		t.Error("bad name accepted")
	}
}
