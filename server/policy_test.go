package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/store"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// withPolicy puts policy p on the proxy "hub".
func withPolicy(p policy.Policy) berthOpt {
	return func(r *Repository, o *Options) {
		if err := p.Check(); err != nil {
			panic(err)
		}
		r.Policy = &p
	}
}

// denied reports whether err is berth's 403 DENIED with want in its
// message.
func denied(t *testing.T, err error, want string) {
	t.Helper()
	var te *transport.Error
	if err == nil {
		t.Fatalf("served; want 403 DENIED (%s)", want)
	}
	if !asTransportError(err, &te) || te.StatusCode != http.StatusForbidden || len(te.Errors) == 0 ||
		te.Errors[0].Code != "DENIED" || !strings.Contains(te.Errors[0].Message, want) {
		t.Fatalf("error %v; want 403 DENIED with %q", err, want)
	}
}

func asTransportError(err error, te **transport.Error) bool {
	e, ok := err.(*transport.Error)
	if ok {
		*te = e
	}
	return ok
}

func TestPolicyImagesAndDefault(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("library/app", "v1", randomImage(t, 512, 1))
	up.push("other/app", "v1", randomImage(t, 512, 1))
	up.push("library/debug", "v1", randomImage(t, 512, 1))
	b := newTestBerth(t, up, withPolicy(policy.Policy{Name: "prod", Default: policy.Deny,
		Allow: []string{"library/*"}, Deny: []string{"library/debug"}}))
	if _, err := remote.Image(b.ref("library/app:v1")); err != nil {
		t.Fatalf("allowed image: %v", err)
	}
	_, err := remote.Head(b.ref("other/app:v1"))
	if err == nil {
		t.Fatal("other/app served under deny by default")
	}
	_, err = remote.Image(b.ref("other/app:v1"))
	denied(t, err, `not allowed by policy "prod" (deny by default)`)
	_, err = remote.Image(b.ref("library/debug:v1"))
	denied(t, err, `pattern "library/debug"`)
	if got := testutil.ToFloat64(b.srv.m.policyDecisions.WithLabelValues("hub", "prod", "deny", "default")); got < 1 {
		t.Errorf("deny by default decisions counted %v", got)
	}
	if got := testutil.ToFloat64(b.srv.m.policyDecisions.WithLabelValues("hub", "prod", "allow", "image")); got < 1 {
		t.Errorf("allowed decisions counted %v", got)
	}
}

// TestPolicyDeniedTagHoldsForTheDigest: a tag denied, then its digest
// pulled by digest: refused too (the bypass of a deny list by tag).
func TestPolicyDeniedTagHoldsForTheDigest(t *testing.T) {
	up := newFakeUpstream(t)
	d := up.push("library/app", "latest", randomImage(t, 512, 1))
	up.push("library/app", "v1", randomImage(t, 512, 1))
	b := newTestBerth(t, up, withPolicy(policy.Policy{Name: "pinned", DenyTags: []string{"latest"}}))
	_, err := remote.Image(b.ref("library/app:latest"))
	denied(t, err, `tag "latest"`)
	_, err = remote.Image(b.ref("library/app@" + d.String()))
	denied(t, err, `tag "latest"`)
	if _, err := remote.Image(b.ref("library/app:v1")); err != nil {
		t.Fatalf("another tag: %v", err)
	}
	// A changed policy decides afresh: the remembered deny was the old
	// policy's.
	p := policy.Policy{Name: "pinned", DenyTags: []string{"nightly"}}
	p.Check()
	if err := b.srv.SetPolicies(map[string]*policy.Policy{"hub": &p}); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Image(b.ref("library/app@" + d.String())); err != nil {
		t.Fatalf("after the policy changed: %v", err)
	}
}

// TestPolicyIndexVerdictForItsChildren: an index refused for its tag
// refuses its platform manifests by digest; a denied digest is refused
// whatever names it.
func TestPolicyIndexVerdictForItsChildren(t *testing.T) {
	up := newFakeUpstream(t)
	idx, err := random.Index(256, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	up.pushIndex("library/multi", "rc", idx)
	im, _ := idx.IndexManifest()
	child := im.Manifests[0].Digest
	b := newTestBerth(t, up, withPolicy(policy.Policy{Name: "no-rc", DenyTags: []string{"rc"}}))
	_, err = remote.Index(b.ref("library/multi:rc"))
	denied(t, err, `tag "rc"`)
	_, err = remote.Image(b.ref("library/multi@" + child.String()))
	denied(t, err, `tag "rc"`)
	// Asking for the refused index again reads its children's verdicts;
	// they are not written again (a client hammering it costs no writes).
	key := b.srv.repos["hub"].gate().cur.Load().key(child.String())
	first, ok, err := b.store.GetVerdict(context.Background(), key)
	if err != nil || !ok {
		t.Fatalf("no verdict remembered for the child: %v", err)
	}
	_, err = remote.Index(b.ref("library/multi:rc"))
	denied(t, err, `tag "rc"`)
	if again, _, _ := b.store.GetVerdict(context.Background(), key); !again.At.Equal(first.At) {
		t.Fatalf("the child's verdict was written again (%v, then %v)", first.At, again.At)
	}

	up2 := newFakeUpstream(t)
	bad := up2.push("library/app", "v1", randomImage(t, 256, 1))
	b2 := newTestBerth(t, up2, withPolicy(policy.Policy{Name: "recall", DenyDigests: []string{bad.String()}}))
	for _, ref := range []string{"library/app:v1", "library/app@" + bad.String()} {
		_, err := remote.Image(b2.ref(ref))
		denied(t, err, "is denied by policy \"recall\"")
	}
}

// TestPolicyRefusedLayersNotFetched: a refused image's layers are not
// fetched ahead (eager layers start only for what the policy let out).
func TestPolicyRefusedLayersNotFetched(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("library/app", "v1", randomImage(t, 4096, 3))
	b := newTestBerth(t, up, func(r *Repository, o *Options) { r.EagerLayers = true },
		withPolicy(policy.Policy{Name: "none", Default: policy.Deny}))
	_, err := remote.Image(b.ref("library/app:v1"))
	denied(t, err, "deny by default")
	waitNoDownloads(t, b.srv)
	if n := up.count("GET blob"); n != 0 {
		t.Fatalf("%d blobs of a refused image fetched", n)
	}
}

func TestSetPolicies(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("library/app", "v1", randomImage(t, 256, 1))
	b := newTestBerth(t, up)
	if _, err := remote.Image(b.ref("library/app:v1")); err != nil {
		t.Fatalf("no policy: %v", err)
	}
	p := policy.Policy{Name: "closed", Default: policy.Deny}
	p.Check()
	if err := b.srv.SetPolicies(map[string]*policy.Policy{"hub": &p}); err != nil {
		t.Fatal(err)
	}
	_, err := remote.Image(b.ref("library/app:v1"))
	denied(t, err, `policy "closed"`)
	if err := b.srv.SetPolicies(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Image(b.ref("library/app:v1")); err != nil {
		t.Fatalf("policy removed: %v", err)
	}
	if err := b.srv.SetPolicies(map[string]*policy.Policy{"nosuch": &p}); err == nil {
		t.Fatal("a policy for no repository: no error")
	}
}

// brokenVerdicts is a verdict store that cannot be read.
type brokenVerdicts struct{ verdictStore }

func (brokenVerdicts) GetVerdict(context.Context, string) (store.Verdict, bool, error) {
	return store.Verdict{}, false, errors.New("index unreadable")
}

// TestPolicyFailsClosed: when what a policy learned cannot be read, a
// manifest its rules alone would allow is refused, not served.
func TestPolicyFailsClosed(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("library/app", "v1", randomImage(t, 256, 1))
	b := newTestBerth(t, up, withPolicy(policy.Policy{Name: "pinned", DenyTags: []string{"latest"}}))
	b.srv.verdicts = brokenVerdicts{b.srv.verdicts}
	_, err := remote.Image(b.ref("library/app:v1"))
	denied(t, err, "cannot be read now")
}
