package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/replicate"
	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/client_golang/prometheus"
)

// replicaSetup is a source registry with images in two repositories (one
// a multi-platform index, one with a signature by the referrers API and
// one by the tag scheme) and a berth with a hosted repository.
type replicaSetup struct {
	up      *fakeUpstream
	b       *testBerth
	src     *upstream.Client
	digests map[string]v1.Hash // "repo:tag"
	sig     v1.Hash            // the referrer of team/app:v1
}

func newReplicaSetup(t *testing.T) *replicaSetup {
	t.Helper()
	up := newFakeUpstream(t)
	rs := &replicaSetup{up: up, digests: map[string]v1.Hash{}}
	for _, tag := range []string{"v1", "v1.1.0", "v2.0.0", "latest"} {
		rs.digests["team/app:"+tag] = up.push("team/app", tag, randomImage(t, 3000, 2))
	}
	rs.digests["team/tool:1.0.0"] = up.push("team/tool", "1.0.0", randomImage(t, 2000, 1))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: randomImage(t, 1000, 1), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: randomImage(t, 1000, 1), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	rs.digests["multi:v1"] = up.pushIndex("multi", "v1", idx)
	// A signature of team/app:v1 through the referrers API, and a
	// cosign-style tag of team/tool:1.0.0.
	subject := rs.digests["team/app:v1"]
	sig := mutate.MediaType(randomImage(t, 100, 1), types.OCIManifestSchema1)
	sig = mutate.ConfigMediaType(sig, types.OCIConfigJSON)
	sig = mutate.Subject(sig, v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: subject, Size: 1}).(v1.Image)
	rs.sig = up.push("team/app", "sigtmp", sig)
	tool := rs.digests["team/tool:1.0.0"]
	rs.digests["team/tool:sha256-"+tool.Hex+".sig"] = up.push("team/tool", "sha256-"+tool.Hex+".sig", randomImage(t, 100, 1))
	rs.b = newTestBerth(t, up, withHosted)
	src, err := upstream.New(upstream.Options{URL: up.srv.URL, HeaderTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rs.src = src
	return rs
}

func (rs *replicaSetup) run(t *testing.T, rule replicate.Rule) replicate.Report {
	t.Helper()
	if rule.Name == "" {
		rule.Name = "test"
	}
	if rule.To == "" {
		rule.To = "local/mirror"
	}
	dst, err := ReplicaTarget(rs.b.srv, rule.To)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := replicate.Run(context.Background(), rule, rs.src, dst, nil)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return rep
}

// digestAt is the digest the berth serves for ref.
func (rs *replicaSetup) digestAt(t *testing.T, ref string) string {
	t.Helper()
	desc, err := remote.Head(rs.b.ref(ref))
	if err != nil {
		return "missing: " + err.Error()
	}
	return desc.Digest.String()
}

func TestReplicateCopiesAndIsIncremental(t *testing.T) {
	rs := newReplicaSetup(t)
	rep := rs.run(t, replicate.Rule{Repositories: []string{"team/*", "multi"}})
	if rep.Errors != 0 {
		t.Fatalf("errors: %v", rep.FirstErrors)
	}
	for ref, d := range rs.digests {
		if strings.HasSuffix(ref, ":sigtmp") {
			continue
		}
		if got := rs.digestAt(t, "local/mirror/"+ref); got != d.String() {
			t.Errorf("%s: berth serves %s, the source %s", ref, got, d)
		}
	}
	// Pulled whole, with every platform and the signature by referrers.
	for _, ref := range []string{"team/app:v2.0.0", "multi:v1"} {
		r := rs.b.ref("local/mirror/" + ref)
		if idx, err := remote.Index(r); err == nil && strings.HasPrefix(ref, "multi") {
			im, _ := idx.IndexManifest()
			for _, c := range im.Manifests {
				img, err := remote.Image(r.Context().Digest(c.Digest.String()))
				if err == nil {
					_, err = img.RawConfigFile()
				}
				if err != nil {
					t.Errorf("%s child %s: %v", ref, c.Digest, err)
				}
			}
		} else if img, err := remote.Image(r); err != nil {
			t.Errorf("%s: %v", ref, err)
		} else if ls, _ := img.Layers(); len(ls) == 0 {
			t.Errorf("%s: no layers", ref)
		}
	}
	idx, err := remote.Referrers(rs.b.ref("local/mirror/team/app").Context().Digest(rs.digests["team/app:v1"].String()))
	if err != nil {
		t.Fatal(err)
	}
	if im, _ := idx.IndexManifest(); len(im.Manifests) != 1 || im.Manifests[0].Digest != rs.sig {
		t.Errorf("referrers of team/app:v1 in the target: %+v, want the signature %s", im.Manifests, rs.sig)
	}
	if rep.Bytes == 0 || rep.Blobs == 0 || rep.Tags != 8 {
		t.Errorf("first run: %+v (want 8 tags: 5 app, 1 tool, its .sig, 1 multi)", rep)
	}
	blobGets := rs.up.count("GET blob")
	manifestGets := rs.up.count("GET manifest")

	// A second run over an unchanged source: HEADs only, no blob, no
	// manifest GET.
	again := rs.run(t, replicate.Rule{Repositories: []string{"team/*", "multi"}})
	if again.Bytes != 0 || again.Blobs != 0 || again.Tags != 0 || again.Unchanged != 8 || again.Errors != 0 {
		t.Errorf("second run: %+v", again)
	}
	if n := rs.up.count("GET blob") - blobGets; n != 0 {
		t.Errorf("second run: %d blob GETs", n)
	}
	if n := rs.up.count("GET manifest") - manifestGets; n != 0 {
		t.Errorf("second run: %d manifest GETs (want HEADs only)", n)
	}

	// Into another prefix: every blob is in berth already and is linked.
	other := rs.run(t, replicate.Rule{To: "local/other", Repositories: []string{"team/app"}})
	if other.Blobs != 0 || other.Linked == 0 || other.Errors != 0 {
		t.Errorf("into another prefix: %+v, want every blob linked", other)
	}
	if n := rs.up.count("GET blob") - blobGets; n != 0 {
		t.Errorf("linking: %d blob GETs", n)
	}
	if got := rs.digestAt(t, "local/other/team/app:v1"); got != rs.digests["team/app:v1"].String() {
		t.Errorf("linked copy serves %s", got)
	}
}

func TestReplicateFilters(t *testing.T) {
	rs := newReplicaSetup(t)
	cases := []struct {
		rule replicate.Rule
		want []string // tags of team/app in the target
	}{
		{replicate.Rule{To: "local/glob", Repositories: []string{"team/app"}, Tags: []string{"v1*"}}, []string{"v1", "v1.1.0"}},
		{replicate.Rule{To: "local/semver", Repositories: []string{"team/app"}, Semver: ">=1.1 <3"}, []string{"v1.1.0", "v2.0.0"}},
		{replicate.Rule{To: "local/newest", Repositories: []string{"team/app"}, Newest: 2}, []string{"v1.1.0", "v2.0.0"}},
		{replicate.Rule{To: "local/caret", Repositories: []string{"team/app"}, Semver: "^1.0"}, []string{"v1", "v1.1.0"}},
	}
	for _, c := range cases {
		rs.run(t, c.rule)
		got, err := rs.b.store.Tags(context.Background(), c.rule.To+"/team/app")
		if err != nil || strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%s: tags %v (%v), want %v", c.rule.To, got, err, c.want)
		}
	}
	// One platform of an index: the index keeps its digest, the other
	// platform's child is not copied.
	rs.run(t, replicate.Rule{To: "local/amd", Repositories: []string{"multi"}, Platforms: []string{"linux/amd64"}})
	r := rs.b.ref("local/amd/multi:v1")
	if got := rs.digestAt(t, "local/amd/multi:v1"); got != rs.digests["multi:v1"].String() {
		t.Fatalf("partial index: %s", got)
	}
	idx, _ := remote.Index(r)
	im, _ := idx.IndexManifest()
	for _, c := range im.Manifests {
		_, err := remote.Head(r.Context().Digest(c.Digest.String()))
		if have := err == nil; have != (c.Platform.Architecture == "amd64") {
			t.Errorf("%s child: present %v", c.Platform.Architecture, have)
		}
	}
	// Exclude, and a dry run that writes nothing.
	dry := rs.run(t, replicate.Rule{To: "local/dry", Exclude: []string{"team/**"}, DryRun: true})
	if dry.Repositories != 1 || dry.Bytes == 0 || dry.Tags != 1 {
		t.Errorf("dry run: %+v, want multi only, with its size", dry)
	}
	if repos, _ := rs.b.store.Repositories(context.Background(), "local/dry/"); len(repos) != 0 {
		t.Errorf("dry run wrote %v", repos)
	}
}

func TestReplicateMirrorsDeletions(t *testing.T) {
	rs := newReplicaSetup(t)
	rule := replicate.Rule{Repositories: []string{"team/app"}, Delete: true}
	rs.run(t, rule)
	req, _ := http.NewRequest(http.MethodDelete, rs.up.seed.URL+"/v2/team/app/manifests/v1.1.0", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("delete at the source: %v %v", resp, err)
	}
	rep := rs.run(t, rule)
	if rep.Deleted != 1 {
		t.Errorf("report %+v, want 1 deleted", rep)
	}
	tags, _ := rs.b.store.Tags(context.Background(), "local/mirror/team/app")
	if strings.Join(tags, ",") != "latest,sigtmp,v1,v2.0.0" {
		t.Errorf("target tags %v", tags)
	}
}

// A hostile source: a manifest that is not of its digest, a tag list
// that never ends, a blob that is not of its digest. Each is refused and
// counted; nothing it sent is stored; the rest of the run goes on.
func TestReplicateRefusesABadSource(t *testing.T) {
	rs := newReplicaSetup(t)
	app := rs.digests["team/app:v2.0.0"]
	tool := rs.digests["team/tool:1.0.0"]
	toolRef, _ := name.ParseReference(strings.TrimPrefix(rs.up.seed.URL, "http://")+"/team/tool@"+tool.String(), name.Insecure)
	img, err := remote.Image(toolRef)
	if err != nil {
		t.Fatal(err)
	}
	toolLayer := firstLayer(t, img)
	rs.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.URL.Path == "/v2/team/app/manifests/"+app.String() && r.Method == http.MethodGet:
			w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
			w.Write([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`))
			return true
		case r.URL.Path == "/v2/multi/tags/list":
			w.Header().Set("Link", `</v2/multi/tags/list?last=a&n=1000>; rel="next"`)
			w.Write([]byte(`{"name":"multi","tags":["v1"]}`))
			return true
		case r.URL.Path == "/v2/team/tool/blobs/"+toolLayer.String():
			w.Header().Set("Content-Length", "0")
			return true
		}
		return false
	})
	rep := rs.run(t, replicate.Rule{})
	if rep.Errors < 3 {
		t.Errorf("report %+v: want the three faults counted", rep)
	}
	joined := strings.Join(rep.FirstErrors, "\n")
	for _, want := range []string{"team/app:v2.0.0: ", "does not match its digest", "multi: ", "does not end", "team/tool:1.0.0: ", "does not match its descriptor"} {
		if !strings.Contains(joined, want) {
			t.Errorf("errors %q do not say %q", joined, want)
		}
	}
	if got := rs.digestAt(t, "local/mirror/team/app:v1"); got != rs.digests["team/app:v1"].String() {
		t.Errorf("the rest of the run: team/app:v1 is %s", got)
	}
	for _, ref := range []string{"team/app:v2.0.0", "team/tool:1.0.0", "multi:v1"} {
		if got := rs.digestAt(t, "local/mirror/"+ref); !strings.HasPrefix(got, "missing") {
			t.Errorf("%s stored from a bad source: %s", ref, got)
		}
	}
	if _, err := rs.b.store.StatBlob(context.Background(), store.Digest{}); err == nil {
		t.Error("zero digest stored")
	}
	if probs, err := rs.b.store.Check(context.Background(), store.CheckOptions{}); err != nil || len(probs) != 0 {
		t.Errorf("store check: %v %v", probs, err)
	}
}

// A run cancelled halfway resumes: the blobs it committed are not
// fetched again.
func TestReplicateResumes(t *testing.T) {
	rs := newReplicaSetup(t)
	ctx, cancel := context.WithCancel(context.Background())
	dst, _ := ReplicaTarget(rs.b.srv, "local/mirror")
	blobs := 0
	rule := replicate.Rule{Name: "resume", To: "local/mirror", Concurrency: 1}
	replicate.Run(ctx, rule, rs.src, dst, func(ev replicate.Event) {
		if ev.Kind == "blob" {
			if blobs++; blobs == 4 {
				cancel()
			}
		}
	})
	first := rs.up.count("GET blob")
	rep, err := replicate.Run(context.Background(), rule, rs.src, dst, nil)
	if err != nil || rep.Errors != 0 {
		t.Fatalf("resumed run: %v %+v", err, rep)
	}
	if first < 4 {
		t.Errorf("cut after %d blob GETs", first)
	}
	// Every blob crossed once: a run into a fresh prefix links them all.
	all := rs.run(t, replicate.Rule{To: "local/fresh"})
	if got := rs.up.count("GET blob"); got != all.Linked || all.Blobs != 0 {
		t.Errorf("%d blob GETs (%d before the cut, %d after) for %d blobs", got, first, rep.Blobs, all.Linked)
	}
}

// The admin listener runs configured rules and one-off sources; the
// status page and /metrics show the rules' last runs; a rule runs once
// at a time.
func TestReplicateAdminStatusAndMetrics(t *testing.T) {
	up := newFakeUpstream(t)
	want := up.push("team/app", "v1", randomImage(t, 2000, 2))
	src, _ := upstream.New(upstream.Options{URL: up.srv.URL, HeaderTimeout: 5 * time.Second})
	var sourcesMade int
	b := newTestBerth(t, up, withHosted, func(_ *Repository, o *Options) {
		runner := replicate.NewRunner(o.Registry)
		runner.Known("nightly")
		o.Replication = &Replication{Runner: runner,
			Rules: []ReplicationRule{{Rule: replicate.Rule{Name: "nightly", To: "local/mirror"}, Source: src}},
			NewSource: func(spec SourceSpec) (replicate.Source, error) {
				sourcesMade++
				return upstream.New(upstream.Options{URL: spec.URL})
			}}
	})
	admin := httptest.NewServer(b.srv.AdminHandler("local"))
	t.Cleanup(admin.Close)
	ac := AdminClient{Base: admin.URL, HTTP: admin.Client()}
	ctx := context.Background()

	if page := string(readAll(t, b.get("GET", "/"))); !strings.Contains(page, "nightly") || !strings.Contains(page, "not yet") {
		t.Errorf("status page before a run does not show the rule waiting")
	}
	var done *replicate.Report
	var kinds []string
	err := ac.Replicate(ctx, ReplicateRequest{Name: "nightly"}, func(ev replicate.Event) {
		kinds = append(kinds, ev.Kind)
		if ev.Kind == "done" {
			done = ev.Report
		}
	})
	if err != nil || done == nil || done.Tags != 1 || done.Blobs != 3 {
		t.Fatalf("admin run: %v %+v (events %v)", err, done, kinds)
	}
	if d, err := remote.Head(b.ref("local/mirror/team/app:v1")); err != nil || d.Digest != want {
		t.Fatalf("replicated image: %v %v", d, err)
	}
	page := string(readAll(t, b.get("GET", "/")))
	for _, s := range []string{"Replication", "nightly", "local/mirror", ">ok<", "ago"} {
		if !strings.Contains(page, s) {
			t.Errorf("status page does not show %q", s)
		}
	}
	if v := ruleMetric(t, b.reg, "berth_replicate_images_total", "nightly"); v != 1 {
		t.Errorf("berth_replicate_images_total = %v", v)
	}
	if v := ruleMetric(t, b.reg, "berth_replicate_last_success_timestamp_seconds", "nightly"); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last success %v", v)
	}

	// A one-off source, and the errors an operator can make.
	err = ac.Replicate(ctx, ReplicateRequest{Rule: &replicate.Rule{Name: "cli", To: "local/once"}, Source: &SourceSpec{URL: up.srv.URL}}, func(replicate.Event) {})
	if err != nil || sourcesMade != 1 {
		t.Fatalf("one-off: %v (sources made %d)", err, sourcesMade)
	}
	for req, msg := range map[*ReplicateRequest]string{
		{Name: "nope"}: `no replication rule "nope" (this berth has nightly)`,
		{Rule: &replicate.Rule{Name: "x", To: "hub"}, Source: &SourceSpec{URL: up.srv.URL}}:         `no hosted repository "hub"`,
		{Rule: &replicate.Rule{Name: "x", To: "local", Semver: "!"}, Source: &SourceSpec{URL: "x"}}: "semver",
		{}: "want a rule name",
	} {
		if err := ac.Replicate(ctx, *req, func(replicate.Event) {}); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%+v: %v, want %q", req, err, msg)
		}
	}

	// One run of a rule at a time.
	release := make(chan struct{})
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/tags/list") {
			<-release
		}
		return false
	})
	first := make(chan error, 1)
	go func() { first <- ac.Replicate(ctx, ReplicateRequest{Name: "nightly"}, func(replicate.Event) {}) }()
	if eventually(func() float64 { return ruleMetric(t, b.reg, "berth_replicate_running", "nightly") }, 1) != 1 {
		t.Fatal("the first run did not start")
	}
	var second []string
	ac.Replicate(ctx, ReplicateRequest{Name: "nightly"}, func(ev replicate.Event) { second = append(second, ev.Error) })
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if len(second) != 1 || !strings.Contains(second[0], "already running") {
		t.Errorf("second run while the first ran: %v", second)
	}
}

// ruleMetric is the value of a berth_replicate_* series of rule.
func ruleMetric(t *testing.T, reg *prometheus.Registry, name, rule string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			if mf.GetName() == name && labelMap(m)["rule"] == rule {
				if m.Counter != nil {
					return m.Counter.GetValue()
				}
				return m.Gauge.GetValue()
			}
		}
	}
	return -1
}

// A source that answers 429 for one repository and cuts a blob short
// once: the run names the repository and tag it failed on and copies the
// rest; the cut blob is fetched again within the run; the next run
// brings what the 429 held back.
func TestReplicateThroughSourceFaults(t *testing.T) {
	rs := newReplicaSetup(t)
	img, err := remote.Image(rs.up.seedRef(t, "team/app@"+rs.digests["team/app:v1"].String()))
	if err != nil {
		t.Fatal(err)
	}
	layer := firstLayer(t, img)
	var cut atomic.Bool
	rs.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case strings.HasPrefix(r.URL.Path, "/v2/team/tool/manifests/"):
			w.Header().Set("Retry-After", "0")
			http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, http.StatusTooManyRequests)
			return true
		case r.URL.Path == "/v2/team/app/blobs/"+layer.String() && cut.CompareAndSwap(false, true):
			w.Header().Set("Content-Length", "5000")
			w.WriteHeader(http.StatusOK)
			w.Write(make([]byte, 100))
			panic(http.ErrAbortHandler) // the connection drops mid-body
		}
		return false
	})
	rep := rs.run(t, replicate.Rule{Repositories: []string{"team/app", "team/tool"}})
	if rep.Errors == 0 || !strings.Contains(strings.Join(rep.FirstErrors, "\n"), "team/tool:1.0.0: ") || !strings.Contains(strings.Join(rep.FirstErrors, "\n"), "429") {
		t.Errorf("errors %v, want team/tool:1.0.0 named with its 429", rep.FirstErrors)
	}
	if !cut.Load() || rs.up.countPath("GET", "/blobs/"+layer.String()) != 2 {
		t.Errorf("the cut blob was fetched %d times, want 2", rs.up.countPath("GET", "/blobs/"+layer.String()))
	}
	if got := rs.digestAt(t, "local/mirror/team/app:v1"); got != rs.digests["team/app:v1"].String() {
		t.Errorf("team/app:v1 after a cut blob: %s", got)
	}
	rs.up.setFault(nil)
	again := rs.run(t, replicate.Rule{Repositories: []string{"team/app", "team/tool"}})
	if again.Errors != 0 || again.Tags != 2 { // 1.0.0 and its .sig
		t.Errorf("next run: %+v", again)
	}
	if got := rs.digestAt(t, "local/mirror/team/tool:1.0.0"); got != rs.digests["team/tool:1.0.0"].String() {
		t.Errorf("team/tool:1.0.0 after the 429 ended: %s", got)
	}
}

// seedRef names s in the fake registry itself (no faults, no counts).
func (f *fakeUpstream) seedRef(t *testing.T, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(f.seed.URL, "http://")+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// POST /replicate/notify/<rule>: with the rule's token a run is due (one,
// however many notifications); without it, 401; a rule that takes none,
// 404.
func TestReplicateNotify(t *testing.T) {
	wake := make(chan struct{}, 1)
	b := newTestBerth(t, newFakeUpstream(t), withHosted, func(_ *Repository, o *Options) {
		o.Replication = &Replication{Runner: replicate.NewRunner(nil), Rules: []ReplicationRule{
			{Rule: replicate.Rule{Name: "primary", To: "local"}, NotifyToken: "0123456789abcdef-token", Wake: wake},
			{Rule: replicate.Rule{Name: "quiet", To: "local"}, Wake: make(chan struct{}, 1)},
		}}
	})
	post := func(rule, authz string) int {
		req, _ := http.NewRequest(http.MethodPost, b.http.URL+"/replicate/notify/"+rule, strings.NewReader(`{"events":[{"action":"push"}]}`))
		req.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v2+json")
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		rule, authz string
		want        int
	}{
		{"primary", "", http.StatusUnauthorized},
		{"primary", "Bearer wrong", http.StatusUnauthorized},
		{"primary", "Basic MDEyMzQ1Njc4OWFiY2RlZi10b2tlbg==", http.StatusUnauthorized},
		{"quiet", "Bearer 0123456789abcdef-token", http.StatusNotFound},
		{"nope", "Bearer 0123456789abcdef-token", http.StatusNotFound},
	} {
		if got := post(c.rule, c.authz); got != c.want {
			t.Errorf("%s with %q: %d, want %d", c.rule, c.authz, got, c.want)
		}
	}
	if len(wake) != 0 {
		t.Fatal("woken without the token")
	}
	for range 3 {
		if got := post("primary", "Bearer 0123456789abcdef-token"); got != http.StatusAccepted {
			t.Fatalf("notify: %d", got)
		}
	}
	if len(wake) != 1 {
		t.Errorf("%d runs due after 3 notifications, want 1", len(wake))
	}
}
