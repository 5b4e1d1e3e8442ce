// Package policy decides whether berth may serve an image: by the
// manifest digest, never by the name a client used for it. A deny by tag
// is a deny of the digests the tag names, so pulling the digest instead
// gets the same answer; an index's verdict holds for the platform
// manifests it lists.
//
// A Policy is what an operator wrote; Decide applies it to one Subject
// (an image, the tags known to name its digest, the digest, when berth
// first knew it). Signatures are checked elsewhere: a Policy only says
// whether one is required.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/sigverify"
)

// Decision is a policy's answer.
type Decision string

const (
	Allow Decision = "allow"
	Deny  Decision = "deny"
	Hold  Decision = "hold" // quarantined until the digest is old enough, or approved
)

// Policy is one [[policy]] table.
type Policy struct {
	Name string
	// Default answers what no rule below decides: Allow, or Deny (deny
	// by default: only what Allow names is served).
	Default Decision
	// Allow and Deny are image globs ("library/*", "team/**"; "*" alone
	// is every image); for an allowlist proxy the name starts with the
	// registry host ("ghcr.io/acme/*").
	Allow, Deny []string
	// DenyTags are tag globs: a digest one of them names is denied.
	DenyTags []string
	// AllowDigests and DenyDigests name manifests outright; they win over
	// every other rule (deny first).
	AllowDigests, DenyDigests []string
	// MinAge holds a digest berth first knew less than MinAge ago (zero:
	// none), unless approved.
	MinAge time.Duration
	// RequireSignature: the image must carry a valid signature from one
	// of Verifiers (checked by the caller).
	RequireSignature bool
	// Verifiers are the keys and keyless identities a signature may be
	// by; their IDs are part of the fingerprint.
	Verifiers []*sigverify.Verifier `json:"-"`
}

// Subject is what a decision is about.
type Subject struct {
	Image     string    // the name within the repository (for an allowlist proxy: "<host>/<name>")
	Digest    string    // the manifest digest
	Tags      []string  // tags known to name Digest (the one asked for, and any other berth holds)
	FirstSeen time.Time // when berth first knew Digest (zero: now)
	Approved  bool      // an operator released it (berth approve)
}

// Verdict is a decision and why.
type Verdict struct {
	Decision Decision
	Reason   string    // for the client's error message and the metrics' reason label (Rule)
	Rule     string    // which rule decided: digest, tag, image, default, min_age, approved
	Until    time.Time // Hold: when the digest is old enough
}

// Check reports what is wrong with p: an unknown default, a glob that
// does not parse, a digest that is not one.
func (p *Policy) Check() error {
	switch p.Default {
	case Allow, Deny:
	case "":
		p.Default = Allow
	default:
		return fmt.Errorf("policy %q: default %q: want allow or deny", p.Name, p.Default)
	}
	for _, g := range slices.Concat(p.Allow, p.Deny, p.DenyTags) {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("policy %q: pattern %q: %v", p.Name, g, err)
		}
	}
	for _, d := range slices.Concat(p.AllowDigests, p.DenyDigests) {
		alg, hexPart, ok := strings.Cut(d, ":")
		if !ok || alg != "sha256" || len(hexPart) != 64 || strings.ToLower(hexPart) != hexPart {
			return fmt.Errorf("policy %q: digest %q: want sha256:<64 lower-case hex>", p.Name, d)
		}
		if _, err := hex.DecodeString(hexPart); err != nil {
			return fmt.Errorf("policy %q: digest %q: %v", p.Name, d, err)
		}
	}
	if p.MinAge < 0 {
		return fmt.Errorf("policy %q: min_age must not be negative", p.Name)
	}
	if p.RequireSignature && len(p.Verifiers) == 0 {
		return fmt.Errorf("policy %q: require_signature needs a key or a keyless identity to check signatures with", p.Name)
	}
	return nil
}

// Fingerprint identifies what p decides: a verdict remembered under
// another fingerprint is decided again.
func (p *Policy) Fingerprint() string {
	b, _ := json.Marshal(p)
	for _, v := range p.Verifiers {
		b = append(append(b, 0), v.ID()...)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Decide applies p to s at now. The order: a digest named outright, a
// denied tag, a denied image, then an allowed image or the default; an
// allowed digest is then held while younger than MinAge, unless approved.
// A required signature is the caller's next step for what is allowed.
func (p *Policy) Decide(s Subject, now time.Time) Verdict {
	v := p.rules(s)
	if v.Decision != Allow || p.MinAge == 0 || slices.Contains(p.AllowDigests, s.Digest) {
		return v
	}
	if s.Approved {
		return Verdict{Decision: Allow, Rule: "approved", Reason: "approved by an operator"}
	}
	first := s.FirstSeen
	if first.IsZero() {
		first = now
	}
	if until := first.Add(p.MinAge); now.Before(until) {
		return Verdict{Decision: Hold, Rule: "min_age", Until: until,
			Reason: fmt.Sprintf("quarantined until %s (min_age %s of policy %q)", until.UTC().Format(time.RFC3339), p.MinAge, p.Name)}
	}
	return v
}

func (p *Policy) rules(s Subject) Verdict {
	switch {
	case slices.Contains(p.DenyDigests, s.Digest):
		return Verdict{Decision: Deny, Rule: "digest", Reason: fmt.Sprintf("digest %s is denied by policy %q", s.Digest, p.Name)}
	case slices.Contains(p.AllowDigests, s.Digest):
		return Verdict{Decision: Allow, Rule: "digest", Reason: fmt.Sprintf("digest allowed by policy %q", p.Name)}
	}
	for _, t := range s.Tags {
		if g, ok := firstMatch(p.DenyTags, t); ok {
			return Verdict{Decision: Deny, Rule: "tag", Reason: fmt.Sprintf("tag %q (pattern %q) is denied by policy %q, whatever name pulls its digest", t, g, p.Name)}
		}
	}
	if g, ok := firstImageMatch(p.Deny, s.Image); ok {
		return Verdict{Decision: Deny, Rule: "image", Reason: fmt.Sprintf("image %q (pattern %q) is denied by policy %q", s.Image, g, p.Name)}
	}
	if g, ok := firstImageMatch(p.Allow, s.Image); ok {
		return Verdict{Decision: Allow, Rule: "image", Reason: fmt.Sprintf("image allowed by pattern %q of policy %q", g, p.Name)}
	}
	if p.Default == Deny {
		return Verdict{Decision: Deny, Rule: "default", Reason: fmt.Sprintf("image %q is not allowed by policy %q (deny by default)", s.Image, p.Name)}
	}
	return Verdict{Decision: Allow, Rule: "default", Reason: fmt.Sprintf("allowed by default by policy %q", p.Name)}
}

func firstMatch(globs []string, s string) (string, bool) {
	for _, g := range globs {
		if ok, _ := path.Match(g, s); ok {
			return g, true
		}
	}
	return "", false
}

// firstImageMatch matches image globs: "*" alone is every image, a
// trailing "/**" every image under the prefix, else path.Match (a "*"
// stays within one segment).
func firstImageMatch(globs []string, image string) (string, bool) {
	for _, g := range globs {
		if g == "*" || g == "**" {
			return g, true
		}
		if prefix, ok := strings.CutSuffix(g, "/**"); ok && strings.HasPrefix(image, prefix+"/") {
			return g, true
		}
		if ok, _ := path.Match(g, image); ok {
			return g, true
		}
	}
	return "", false
}
