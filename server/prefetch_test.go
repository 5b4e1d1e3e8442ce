package server

import "testing"

func TestParseImageRefs(t *testing.T) {
	for _, tc := range []struct{ in, name, ref string }{
		{"nginx", "nginx", "latest"},
		{"library/nginx:1.27", "library/nginx", "1.27"},
		{"ghcr.io/org/app:v1", "ghcr.io/org/app", "v1"},
		{"app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "app", "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	} {
		name, ref, err := ParseImageRef(tc.in)
		if err != nil || name != tc.name || ref != tc.ref {
			t.Errorf("%q: %q %q %v", tc.in, name, ref, err)
		}
	}
	if _, _, err := ParseImageRef("Bad//Name"); err == nil {
		t.Error("bad name accepted")
	}
}
