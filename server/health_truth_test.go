package server

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/upstream"
)

// TestHealthTellsTheTruth: an upstream that refuses berth's credentials
// is "credentials rejected" in /readyz, on the status page and in
// berth_upstream_credentials_rejected (it was "ok" while every request was
// DENIED); an unreachable upstream of a repository with nothing cached
// does not claim to be "serving cache"; a reachable one is painted green.
func TestHealthTellsTheTruth(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("app", "v1", randomImage(t, 512, 1))
	up.token, up.user, up.pass = "tok", "robot", "right"
	b := newTestBerth(t, up, func(r *Repository, o *Options) {
		uc, err := upstream.New(upstream.Options{URL: up.srv.URL, Username: "robot", Password: "wrong", Attempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		r.Upstream = uc
	})
	readAll(t, b.get("GET", "/v2/app/manifests/v1"))
	ready := string(readAll(t, b.get("GET", "/readyz")))
	page := string(readAll(t, b.get("GET", "/")))
	if !strings.Contains(ready, "credentials rejected") || !strings.Contains(page, "credentials rejected") {
		t.Errorf("a wrong password upstream:\nreadyz %s\npage lacks it: %v", ready, !strings.Contains(page, "credentials rejected"))
	}
	metrics := string(readAll(t, b.get("GET", "/metrics")))
	if !strings.Contains(metrics, `berth_upstream_credentials_rejected{repository="hub"} 1`) {
		t.Error("berth_upstream_credentials_rejected is not 1")
	}

	down := newFakeUpstream(t)
	down.setFault(func(w http.ResponseWriter, r *http.Request) bool { w.WriteHeader(503); return true })
	b2 := newTestBerth(t, down, func(r *Repository, o *Options) {
		uc, _ := upstream.New(upstream.Options{URL: down.srv.URL, Attempts: 1, HeaderTimeout: time.Second})
		r.Upstream = uc
	})
	readAll(t, b2.get("GET", "/v2/app/manifests/v1"))
	page = string(readAll(t, b2.get("GET", "/")))
	if strings.Contains(page, "serving cache") || !strings.Contains(page, "nothing cached to serve") {
		t.Errorf("an unreachable upstream with nothing cached:\n%s", page)
	}

	ok := newFakeUpstream(t)
	ok.push("app", "v1", randomImage(t, 512, 1))
	b3 := newTestBerth(t, ok)
	readAll(t, b3.get("GET", "/v2/app/manifests/v1"))
	page = string(readAll(t, b3.get("GET", "/")))
	if !strings.Contains(page, `<td class="ok">reachable`) {
		t.Errorf("a reachable upstream is not painted green:\n%s", page)
	}
}
