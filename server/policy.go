package server

import (
	"context"
	"fmt"
	"time"

	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/store"
)

// A repository with a policy is served through a gate: a layer around
// its kind that decides every manifest on its digest before it goes out
// (internal/policy), and lets what follows a manifest (a proxy's eager
// layers) start only for one it let through. The kinds call their
// repository's impl (the gate, when there is one) for the manifests they
// answer, so every way to a manifest passes the gate: a pull by tag or by
// digest, through a group, or a prefetch.
//
// What a decision learns beyond the digest is remembered in the store
// under the policy's fingerprint: a digest a denied tag names stays
// denied when pulled by digest, and the platform manifests of an index
// get the index's verdict. A changed policy has another fingerprint: its
// decisions are made afresh.
type gate struct {
	repository // the kind behind the policy
	rp         *repo
	s          *Server
	pol        *policy.Policy
	fp         string
}

func (s *Server) newGate(rp *repo, kind repository, p *policy.Policy) *gate {
	return &gate{repository: kind, rp: rp, s: s, pol: p, fp: p.Fingerprint()}
}

// manifest finds the manifest through the kind, then decides it.
func (g *gate) manifest(ctx context.Context, img imageRef, rt route, head bool) (manifestAnswer, error) {
	a, err := g.repository.manifest(ctx, img, rt, head)
	if err != nil {
		return a, err
	}
	d := a.digest()
	if d == "" {
		d = rt.digest.String()
	}
	v := g.decide(ctx, img, rt, d)
	g.s.m.policyDecisions.WithLabelValues(g.rp.Name, g.pol.Name, string(v.Decision), v.Rule).Inc()
	if index := a.index(); index != nil {
		g.inherit(ctx, index, v)
	}
	if v.Decision != policy.Allow {
		g.s.log.Info("policy refused a manifest", "repository", g.rp.Name, "name", img.name, "digest", d, "policy", g.pol.Name, "rule", v.Rule, "reason", v.Reason)
		return manifestAnswer{}, errf(codeDenied, "%s@%s: %s", img.name, d, v.Reason)
	}
	return a, nil
}

// decide applies the policy to digest d of the image, asked as rt, with
// what was remembered of d.
func (g *gate) decide(ctx context.Context, img imageRef, rt route, d string) policy.Verdict {
	if d == "" {
		return policy.Verdict{Decision: policy.Deny, Rule: "digest", Reason: fmt.Sprintf("the manifest's digest is not known: policy %q decides on digests", g.pol.Name)}
	}
	subject := policy.Subject{Image: g.rp.grantPrefix + img.name, Digest: d}
	if rt.digest.IsZero() {
		subject.Tags = []string{rt.ref}
	}
	v := g.pol.Decide(subject, time.Now())
	if v.Rule == "digest" {
		return v // named outright: nothing remembered overrides it
	}
	known, ok, err := g.s.verdicts.GetVerdict(ctx, g.key(d))
	switch {
	case err == nil && ok && known.Decision == string(policy.Deny):
		return policy.Verdict{Decision: policy.Deny, Rule: known.Rule, Reason: known.Reason} // a denied tag or index named it
	case err == nil && ok && v.Decision == policy.Hold:
		return policy.Verdict{Decision: policy.Decision(known.Decision), Rule: known.Rule, Reason: known.Reason} // its index passed
	case v.Decision == policy.Deny && v.Rule == "tag":
		g.remember(ctx, d, v)
	}
	return v
}

// inherit gives the platform manifests of an index the index's verdict
// when it was learned beyond their digests (a denied tag; an index
// allowed).
func (g *gate) inherit(ctx context.Context, index *parsedManifest, v policy.Verdict) {
	if v.Decision == policy.Allow && v.Rule != "tag" && v.Rule != "min_age" && v.Rule != "approved" {
		return // decided on the image alone: a child gets the same answer by itself
	}
	for _, c := range index.children {
		child := v
		if v.Decision == policy.Allow {
			child.Rule, child.Reason = "index", fmt.Sprintf("listed by an index policy %q let through", g.pol.Name)
			if known, ok, err := g.s.verdicts.GetVerdict(ctx, g.key(c.String())); err != nil || (ok && known.Decision == string(policy.Deny)) {
				continue // a deny learned elsewhere stands
			}
		}
		g.remember(ctx, c.String(), child)
	}
}

func (g *gate) remember(ctx context.Context, d string, v policy.Verdict) {
	if err := g.s.verdicts.PutVerdict(ctx, g.key(d), store.Verdict{Decision: string(v.Decision), Rule: v.Rule, Reason: v.Reason, At: time.Now()}); err != nil {
		g.s.log.Warn("cannot remember a policy verdict", "repository", g.rp.Name, "digest", d, "err", err)
	}
}

// key is where a verdict on d under this policy is remembered.
func (g *gate) key(d string) string { return g.fp + "@" + d }

// served lets what follows a manifest start: only for one the gate let
// through (manifest returned it).
func (g *gate) served(img imageRef, a manifestAnswer) { g.repository.served(img, a) }
