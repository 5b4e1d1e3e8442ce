package policy

import (
	"strings"
	"testing"
	"time"
)

const (
	dA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	dB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestDecide(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	prod := Policy{Name: "prod", Default: Deny, Allow: []string{"library/*", "team/**"}, Deny: []string{"library/debug"},
		DenyTags: []string{"*-rc*", "latest"}, DenyDigests: []string{dB}, AllowDigests: []string{dA}}
	aged := Policy{Name: "aged", Default: Allow, MinAge: 72 * time.Hour}
	for _, tc := range []struct {
		name   string
		p      Policy
		s      Subject
		want   Decision
		rule   string
		reason string // a part of the reason
	}{
		{"allowed image", prod, Subject{Image: "library/alpine", Digest: "sha256:1", Tags: []string{"3.20"}}, Allow, "image", `"library/*"`},
		{"a star stays in one segment", prod, Subject{Image: "library/x/y", Digest: "sha256:1"}, Deny, "default", "deny by default"},
		{"double star spans segments", prod, Subject{Image: "team/a/b/c", Digest: "sha256:1"}, Allow, "image", `"team/**"`},
		{"not allowed: deny by default", prod, Subject{Image: "other/app", Digest: "sha256:1"}, Deny, "default", `not allowed by policy "prod"`},
		{"denied image wins over allowed", prod, Subject{Image: "library/debug", Digest: "sha256:1"}, Deny, "image", `"library/debug"`},
		{"a denied tag denies its digest", prod, Subject{Image: "library/alpine", Digest: "sha256:1", Tags: []string{"3.21-rc1"}}, Deny, "tag", "whatever name pulls its digest"},
		{"any tag naming the digest counts", prod, Subject{Image: "library/alpine", Digest: "sha256:1", Tags: []string{"3.20", "latest"}}, Deny, "tag", `"latest"`},
		{"a denied digest wins over everything", prod, Subject{Image: "library/alpine", Digest: dB}, Deny, "digest", dB},
		{"an allowed digest wins over deny by default", prod, Subject{Image: "other/app", Digest: dA, Tags: []string{"latest"}}, Allow, "digest", ""},
		{"young digest held", aged, Subject{Image: "x", Digest: "sha256:1", FirstSeen: now.Add(-time.Hour)}, Hold, "min_age", "quarantined until 2026-12-09T11:00:00Z"},
		{"never seen: held from now", aged, Subject{Image: "x", Digest: "sha256:1"}, Hold, "min_age", "2026-12-09T12:00:00Z"},
		{"old enough", aged, Subject{Image: "x", Digest: "sha256:1", FirstSeen: now.Add(-73 * time.Hour)}, Allow, "default", ""},
		{"approved early", aged, Subject{Image: "x", Digest: "sha256:1", FirstSeen: now, Approved: true}, Allow, "approved", ""},
		{"a denied image is not released by age", Policy{Name: "d", Default: Deny, MinAge: time.Hour}, Subject{Image: "x", Digest: "sha256:1", FirstSeen: now.Add(-48 * time.Hour)}, Deny, "default", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.p.Check(); err != nil {
				t.Fatal(err)
			}
			v := tc.p.Decide(tc.s, now)
			if v.Decision != tc.want || v.Rule != tc.rule || !strings.Contains(v.Reason, tc.reason) {
				t.Fatalf("Decide = %+v, want %s by %s with %q", v, tc.want, tc.rule, tc.reason)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	for _, p := range []Policy{
		{Name: "a", Default: "maybe"},
		{Name: "b", Allow: []string{"[broken"}},
		{Name: "c", DenyDigests: []string{"sha256:short"}},
		{Name: "d", AllowDigests: []string{"md5:" + strings.Repeat("a", 64)}},
		{Name: "e", DenyDigests: []string{"sha256:" + strings.Repeat("A", 64)}},
		{Name: "f", MinAge: -time.Second},
	} {
		if err := p.Check(); err == nil || !strings.Contains(err.Error(), `policy "`+p.Name+`"`) {
			t.Errorf("%+v: Check = %v, want an error naming the policy", p, err)
		}
	}
	p := Policy{Name: "ok"}
	if err := p.Check(); err != nil || p.Default != Allow {
		t.Fatalf("empty policy: %v, default %q", err, p.Default)
	}
}

func TestFingerprint(t *testing.T) {
	a := Policy{Name: "p", Deny: []string{"x"}}
	b := a
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("same policy, two fingerprints")
	}
	b.Deny = []string{"y"}
	if a.Fingerprint() == b.Fingerprint() {
		t.Fatal("a changed policy keeps its fingerprint")
	}
}
