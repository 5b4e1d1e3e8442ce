package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/internal/replicate"
	"github.com/berth-registry/berth/upstream"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// events is an audit sink that keeps what it records.
type events struct {
	mu   sync.Mutex
	list []audit.Event
}

func (e *events) Record(ev audit.Event) {
	e.mu.Lock()
	e.list = append(e.list, audit.Stamp(ev))
	e.mu.Unlock()
}

// of returns the events of action.
func (e *events) of(action string) []audit.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []audit.Event
	for _, ev := range e.list {
		if ev.Action == action {
			out = append(out, ev)
		}
	}
	return out
}

func withAudit(ev *events) berthOpt {
	return func(_ *Repository, o *Options) { o.Audit = ev }
}

func withImmutable(globs ...string) berthOpt {
	return func(_ *Repository, o *Options) {
		for i := range o.Repositories {
			if o.Repositories[i].Name == "local" {
				o.Repositories[i].ImmutableTags = globs
			}
		}
	}
}

// Immutable tags: a push that would move one is refused with the rule's
// name, the same digest again is fine, and neither the tag nor its
// manifest can be deleted; other tags move and go as before.
func TestImmutableTags(t *testing.T) {
	ev := &events{}
	b := newTestBerth(t, newFakeUpstream(t), withHosted, withImmutable("v*"), withAudit(ev))
	one, two := randomImage(t, 1000, 1), randomImage(t, 1000, 1)
	for _, tag := range []string{"v1", "latest"} {
		if err := remote.Write(b.ref("team/app:"+tag), one); err != nil {
			t.Fatal(err)
		}
	}
	if err := remote.Write(b.ref("team/app:v1"), one); err != nil {
		t.Fatalf("the same digest again: %v", err)
	}
	err := remote.Write(b.ref("team/app:v1"), two)
	if err == nil || !strings.Contains(err.Error(), `tag v1 is immutable (rule "v*" of repository local)`) {
		t.Fatalf("moving v1: %v", err)
	}
	if err := remote.Write(b.ref("team/app:latest"), two); err != nil {
		t.Fatalf("moving latest: %v", err)
	}
	d1, _ := one.Digest()
	if got, _ := remote.Head(b.ref("team/app:v1")); got == nil || got.Digest != d1 {
		t.Fatalf("v1 is %v, want %s", got, d1)
	}
	for _, path := range []string{"/v2/team/app/manifests/v1", "/v2/team/app/manifests/" + d1.String()} {
		wantStatus(t, b.do(http.MethodDelete, path, nil), http.StatusForbidden, "DENIED")
	}
	wantStatus(t, b.do(http.MethodDelete, "/v2/team/app/manifests/latest", nil), http.StatusAccepted, "")

	// The audit events of it all.
	pushes := ev.of(audit.Push) // v1, latest, v1 moved (refused), latest moved; the same digest again sends no manifest
	if len(pushes) != 4 || pushes[2].Outcome != "refused" || pushes[2].Tag != "v1" || pushes[0].Repository != "local" || pushes[0].Image != "team/app" || pushes[0].Tag != "v1" || pushes[0].Digest != d1.String() || pushes[0].User != "anonymous" || pushes[0].Client != "127.0.0.1" {
		t.Errorf("push events: %+v", pushes)
	}
	if moved := ev.of(audit.TagMoved); len(moved) != 1 || moved[0].Tag != "latest" || !strings.Contains(moved[0].Detail, d1.String()) {
		t.Errorf("tag moved events: %+v", moved)
	}
	dels := ev.of(audit.Delete)
	if len(dels) != 3 || dels[0].Outcome != "refused" || dels[1].Outcome != "refused" || dels[2].Outcome != "ok" || dels[2].Tag != "latest" {
		t.Errorf("delete events: %+v", dels)
	}
	for _, e := range ev.list {
		line, _ := json.Marshal(e)
		if e.ID == "" || e.Time.IsZero() || !strings.Contains(string(line), `"action":"`+e.Action+`"`) {
			t.Errorf("event without id, time or action: %s", line)
		}
	}
}

// Failed logins, refusals and operator actions are audited, without the
// password.
func TestAuditLoginsDenialsAndAdmin(t *testing.T) {
	ev := &events{}
	b := newTestBerth(t, newFakeUpstream(t), withHosted, withAudit(ev), func(_ *Repository, o *Options) {
		o.Repositories = append(o.Repositories, Repository{Name: "private", Kind: KindHosted})
		o.Auth.Users = []User{{Name: "alice", PasswordHash: mustHash("alice-pw"), Pull: []string{"*"}},
			{Name: "bob", PasswordHash: mustHash("bobpass"), Pull: []string{"private"}}}
	})
	resp := b.get(http.MethodGet, "/v2/", "Authorization", basic("alice", "wrong-password"))
	resp.Body.Close()
	resp = b.get(http.MethodPut, "/v2/private/team/app/manifests/v1", "Authorization", basic("bob", "bobpass"))
	resp.Body.Close()
	as := httptest.NewServer(b.srv.AdminHandler("local"))
	t.Cleanup(as.Close)
	admin := AdminClient{Base: as.URL, HTTP: as.Client()}
	if _, err := admin.GC(context.Background(), GCRequest{Grace: 0, DryRun: true}); err != nil {
		t.Fatal(err)
	}
	fails := ev.of(audit.LoginFailed)
	if len(fails) != 1 || fails[0].User != "alice" || fails[0].Outcome != "refused" {
		t.Errorf("login failed events: %+v", fails)
	}
	if denied := ev.of(audit.Denied); len(denied) != 1 || denied[0].User != "bob" || denied[0].Repository != "private" || denied[0].Detail != "may not push" {
		t.Errorf("denied events: %+v", denied)
	}
	if adm := ev.of(audit.Admin); len(adm) != 1 || !strings.HasPrefix(adm[0].Detail, "gc:") {
		t.Errorf("admin events: %+v", adm)
	}
	for _, e := range ev.list {
		if line, _ := json.Marshal(e); strings.Contains(string(line), "wrong-password") || strings.Contains(string(line), "bobpass") {
			t.Errorf("a password in the audit log: %s", line)
		}
	}
}

// A policy's refusals and replication's tags are audited.
func TestAuditPolicyAndReplication(t *testing.T) {
	up := newFakeUpstream(t)
	up.push("other/app", "v1", randomImage(t, 512, 1))
	ev := &events{}
	b := newTestBerth(t, up, withHosted, withAudit(ev), withPolicy(policy.Policy{Name: "prod", Default: policy.Deny, Allow: []string{"library/*"}}))
	_, err := remote.Image(b.ref("hub/other/app:v1"))
	denied(t, err, "deny by default")
	if p := ev.of(audit.Policy); len(p) == 0 || p[0].Repository != "hub" || p[0].Image != "other/app" || p[0].Outcome != "refused" || !strings.Contains(p[0].Detail, `policy prod: deny (rule default)`) {
		t.Errorf("policy events: %+v", p)
	}
	src, _ := upstream.New(upstream.Options{URL: up.srv.URL})
	dst, _ := ReplicaTarget(b.srv, "local/mirror")
	if _, err := replicate.Run(context.Background(), replicate.Rule{Name: "r", To: "local/mirror", Repositories: []string{"other/app"}}, src, dst, nil); err != nil {
		t.Fatal(err)
	}
	if r := ev.of(audit.Replicate); len(r) != 1 || r[0].Repository != "local" || r[0].Image != "mirror/other/app" || r[0].Tag != "v1" || r[0].User != "berth" {
		t.Errorf("replicate events: %+v", r)
	}
}
