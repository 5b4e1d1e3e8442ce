package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
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
