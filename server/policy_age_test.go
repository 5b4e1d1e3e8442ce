package server

import (
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/store"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func withMinAge(age time.Duration) berthOpt {
	return func(r *Repository, o *Options) {
		withPolicy(policy.Policy{Name: "aged", MinAge: age})(r, o)
		r.TagTTL = time.Nanosecond // every pull by tag asks the upstream: a new digest shows at once
	}
}

// seenLongAgo makes berth believe it first knew d two days ago.
func seenLongAgo(t *testing.T, st *store.Store, d string) {
	t.Helper()
	if err := st.PutVerdict(context.Background(), "seen@"+d, store.Verdict{Decision: "seen", At: time.Now().Add(-48 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyQuarantine: a new digest is held; an approval releases it;
// a tag whose new digest is held keeps serving the one before.
func TestPolicyQuarantine(t *testing.T) {
	up := newFakeUpstream(t)
	d1 := up.push("app", "v1", randomImage(t, 512, 1))
	b := newTestBerth(t, up, withMinAge(24*time.Hour))
	ctx := context.Background()

	_, err := remote.Get(b.ref("app:v1"))
	denied(t, err, "quarantined until ")
	denied(t, err, "berth approve hub/app@"+d1.String()+" releases it now")
	if _, err := remote.Get(b.ref("app@" + d1.String())); err == nil {
		t.Fatal("the held digest served by digest")
	}
	if _, err := approve(ctx, b.store, "hub/app@"+d1.String(), "test"); err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(b.ref("app:v1"))
	if err != nil || desc.Digest != d1 {
		t.Fatalf("approved: %v %v", desc, err)
	}

	// A new digest of the tag: held; the tag keeps the approved one.
	d2 := up.push("app", "v1", randomImage(t, 512, 1))
	desc, err = remote.Get(b.ref("app:v1"))
	if err != nil || desc.Digest != d1 {
		t.Fatalf("tag with a held new digest: got %v (%v), want the previous %s", desc.Digest, err, d1)
	}
	_, err = remote.Get(b.ref("app@" + d2.String()))
	denied(t, err, "quarantined")
	if _, err := approve(ctx, b.store, "hub/app@"+d2.String(), "test"); err != nil {
		t.Fatal(err)
	}
	if desc, err = remote.Get(b.ref("app:v1")); err != nil || desc.Digest != d2 {
		t.Fatalf("after approving the new digest: %v (%v)", desc.Digest, err)
	}

	// Old enough: served without approval.
	d3 := up.push("app", "old", randomImage(t, 512, 1))
	seenLongAgo(t, b.store, d3.String())
	if _, err := remote.Get(b.ref("app:old")); err != nil {
		t.Fatalf("an old digest: %v", err)
	}
	for _, bad := range []string{"hub/app", "hub/app@sha256:short", "BAD NAME@" + d1.String(), "@" + d1.String()} {
		if _, err := approve(ctx, b.store, bad, "test"); err == nil {
			t.Errorf("approve %q accepted", bad)
		}
	}
}

// TestPolicyQuarantineIndex: an index's platform manifests age with it,
// and an approved index releases them.
func TestPolicyQuarantineIndex(t *testing.T) {
	up := newFakeUpstream(t)
	idx, err := random.Index(256, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := random.Index(256, 1, 2)
	d := up.pushIndex("multi", "new", idx)
	od := up.pushIndex("multi", "old", old)
	b := newTestBerth(t, up, withMinAge(24*time.Hour))
	im, _ := idx.IndexManifest()
	om, _ := old.IndexManifest()

	seenLongAgo(t, b.store, od.String())
	if _, err := remote.Index(b.ref("multi:old")); err != nil {
		t.Fatalf("an old index: %v", err)
	}
	if _, err := remote.Get(b.ref("multi@" + om.Manifests[0].Digest.String())); err != nil {
		t.Fatalf("a platform manifest of an old index: %v", err)
	}

	_, err = remote.Index(b.ref("multi:new"))
	denied(t, err, "quarantined")
	_, err = remote.Get(b.ref("multi@" + im.Manifests[0].Digest.String()))
	denied(t, err, "quarantined")
	if _, err := approve(context.Background(), b.store, "hub/multi@"+d.String(), "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Index(b.ref("multi:new")); err != nil {
		t.Fatalf("the approved index: %v", err)
	}
	if _, err := remote.Get(b.ref("multi@" + im.Manifests[1].Digest.String())); err != nil {
		t.Fatalf("a platform manifest of the approved index: %v", err)
	}
}

// TestPolicyTestExplains: berth policy test's answer, without serving.
func TestPolicyTestExplains(t *testing.T) {
	up := newFakeUpstream(t)
	d := up.push("app", "v1", randomImage(t, 512, 1))
	b := newTestBerth(t, up, withMinAge(24*time.Hour))
	res, err := policyTest(context.Background(), b.srv, "hub", "hub/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Decision != "hold" || res.Digest != d.String() || res.Policy != "aged" || res.Until.IsZero() || !strings.Contains(res.Reason, "quarantined") {
		t.Fatalf("policy test: %+v", res)
	}
	if b.cacheCount("manifest", "miss") != 0 {
		t.Error("policy test counted as a client's pull")
	}
	for _, bad := range []string{"", "hub/app", "hub/app@sha256:zz", "nope/app:v1"} {
		if _, err := policyTest(context.Background(), b.srv, "hub", bad); err == nil {
			t.Errorf("policy test %q: no error", bad)
		}
	}
}

// TestStatusPageHeldImages: the status page lists a held image with its
// reason; an admin user approves it there, nobody else can, and no
// other site can make an admin's browser do it.
func TestStatusPageHeldImages(t *testing.T) {
	up := newFakeUpstream(t)
	d := up.push("app", "v1", randomImage(t, 512, 1))
	b := newTestBerth(t, up, withMinAge(24*time.Hour), func(r *Repository, o *Options) {
		o.Auth.Users = []User{
			{Name: "root", PasswordHash: mustHash("root-pw"), Pull: []string{"*"}, Admin: true},
			{Name: "bob", PasswordHash: mustHash("bob-pw"), Pull: []string{"hub"}},
		}
	})
	_, err := remote.Get(b.ref("app:v1"))
	denied(t, err, "quarantined")
	page := func(hdr ...string) string {
		resp := b.get("GET", "/ui/policy", hdr...)
		body := string(readAll(t, resp))
		if resp.StatusCode != 200 {
			t.Fatalf("/ui/policy: %d %s", resp.StatusCode, body)
		}
		return body
	}
	anon := page()
	if !strings.Contains(anon, d.String()) || !strings.Contains(anon, "quarantined until") || strings.Contains(anon, `action="/ui/approve"`) {
		t.Fatalf("anonymous view:\n%s", anon)
	}
	if strings.Contains(page("Authorization", basic("bob", "bob-pw")), `action="/ui/approve"`) {
		t.Fatal("a user who is not an admin gets the approve button")
	}
	root := page("Authorization", basic("root", "root-pw"))
	m := regexp.MustCompile(`name="token" value="([0-9a-f]+)"`).FindStringSubmatch(root)
	if m == nil {
		t.Fatalf("no approve form for the admin:\n%s", root)
	}
	post := func(token, origin string, authz string) int {
		form := url.Values{"ref": {"hub/app@" + d.String()}, "token": {token}}
		req, _ := http.NewRequest("POST", b.http.URL+"/ui/approve", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", authz)
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for name, code := range map[string]int{
		"bob with the admin's token": post(m[1], "", basic("bob", "bob-pw")),
		"no token":                   post("", "", basic("root", "root-pw")),
		"another site":               post(m[1], "https://evil.example", basic("root", "root-pw")),
	} {
		if code != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", name, code)
		}
	}
	if _, err := remote.Get(b.ref("app:v1")); err == nil {
		t.Fatal("served before the approval")
	}
	if code := post(m[1], b.http.URL, basic("root", "root-pw")); code != http.StatusSeeOther {
		t.Fatalf("the admin's approval: %d", code)
	}
	if _, err := remote.Get(b.ref("app:v1")); err != nil {
		t.Fatalf("after the approval from the page: %v", err)
	}
	if got := page("Authorization", basic("root", "root-pw")); strings.Contains(got, d.String()) {
		t.Fatalf("the served image is still listed:\n%s", got)
	}
}

// TestSetPoliciesPrunes: a changed policy's old verdicts are deleted.
func TestSetPoliciesPrunes(t *testing.T) {
	up := newFakeUpstream(t)
	d := up.push("app", "latest", randomImage(t, 256, 1))
	old := policy.Policy{Name: "p", DenyTags: []string{"latest"}}
	b := newTestBerth(t, up, withPolicy(old))
	if _, err := remote.Get(b.ref("app:latest")); err == nil {
		t.Fatal("served")
	}
	oldKey := b.srv.repos["hub"].gate().cur.Load().key(d.String())
	if _, ok, _ := b.store.GetVerdict(context.Background(), oldKey); !ok {
		t.Fatal("the tag's deny was not remembered")
	}
	next := policy.Policy{Name: "p", DenyTags: []string{"nightly"}}
	next.Check()
	if err := b.srv.SetPolicies(map[string]*policy.Policy{"hub": &next}); err != nil {
		t.Fatal(err)
	}
	eventually(func() bool { _, ok, _ := b.store.GetVerdict(context.Background(), oldKey); return ok }, false)
	if _, ok, _ := b.store.GetVerdict(context.Background(), oldKey); ok {
		t.Fatal("the old policy's verdict is still kept")
	}
	if _, err := remote.Get(b.ref("app@" + d.String())); err != nil {
		t.Fatalf("after the change: %v", err)
	}
}
