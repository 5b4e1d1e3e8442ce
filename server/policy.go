package server

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/berth-registry/berth/internal/audit"

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
//
// Every repository is served through its gate; one without a policy lets
// everything through. SetPolicies changes them while serving (SIGHUP).
type gate struct {
	repository // the kind behind the policy
	rp         *repo
	s          *Server
	cur        atomic.Pointer[gatePolicy] // nil: no policy
}

// gatePolicy is a gate's policy and its fingerprint, swapped whole.
type gatePolicy struct {
	*policy.Policy
	fp string
}

func newGate(s *Server, rp *repo, kind repository, p *policy.Policy) *gate {
	g := &gate{repository: kind, rp: rp, s: s}
	g.set(p)
	return g
}

func (g *gate) set(p *policy.Policy) {
	if p == nil {
		g.cur.Store(nil)
		return
	}
	g.cur.Store(&gatePolicy{Policy: p, fp: p.Fingerprint()})
}

// SetPolicies puts new policies on the repositories (by name; a missing
// one has none from now on), per-host proxies included. Verdicts
// remembered under an old policy are not used by a changed one.
func (s *Server) SetPolicies(byRepo map[string]*policy.Policy) error {
	for name := range byRepo {
		if s.repos[name] == nil {
			return fmt.Errorf("policies: no repository %q", name)
		}
	}
	for _, rp := range s.order {
		rp.gate().set(byRepo[rp.Name])
	}
	for _, rp := range s.hosts.repos.Values() {
		rp.gate().set(byRepo[rp.access.Name])
	}
	s.goSafe("prune policy verdicts", func() { pruneVerdicts(s) })
	return nil
}

// pruneVerdicts forgets what policies no repository has now learned.
func pruneVerdicts(s *Server) {
	live := map[string]bool{}
	for _, rp := range append(slices.Clone(s.order), s.hosts.repos.Values()...) {
		if p := rp.gate().cur.Load(); p != nil {
			live[p.fp] = true
		}
	}
	n, err := s.verdicts.PruneVerdicts(context.Background(), func(fp string) bool { return live[fp] })
	if err != nil {
		s.log.Warn("cannot prune the verdicts of old policies", "err", err)
	} else if n > 0 {
		s.log.Info("pruned the verdicts of policies no longer in use", "verdicts", n)
	}
}

// manifest finds the manifest through the kind, then decides it.
func (g *gate) manifest(ctx context.Context, img imageRef, rt route, head bool) (manifestAnswer, error) {
	a, err := g.repository.manifest(ctx, img, rt, head)
	p := g.cur.Load()
	if err != nil || p == nil {
		return a, err
	}
	d := a.digest()
	if d == "" {
		d = rt.digest.String()
	}
	v, first := g.decide(ctx, p, img, rt, d, a)
	g.s.m.policyDecisions.WithLabelValues(g.rp.Name, p.Name, string(v.Decision), v.Rule).Inc()
	if index := a.index(); index != nil {
		g.inherit(ctx, p, index, v, first)
	}
	byTag := rt.digest.IsZero() && p.MinAge > 0
	switch {
	case v.Decision == policy.Allow:
		if byTag {
			g.notePassed(ctx, p, img, rt.ref, d)
		}
		g.s.refused.served(g.rp, img.name, d)
		return a, nil
	case v.Decision == policy.Hold && byTag:
		if prev, ok := g.previous(ctx, p, img, rt.ref, d, head); ok {
			return prev, nil
		}
	}
	if v.Decision == policy.Hold {
		v.Reason += fmt.Sprintf("; berth approve %s@%s releases it now", img.path(), d)
	}
	g.s.refused.note(g.rp, img.name, d, v)
	record(g.s, ctx, audit.Event{Action: audit.Policy, Repository: g.rp.Name, Image: img.name, Digest: d, Outcome: "refused",
		Detail: fmt.Sprintf("policy %s: %s (rule %s): %s", p.Name, v.Decision, v.Rule, v.Reason)})
	g.s.log.Info("policy refused a manifest", "repository", g.rp.Name, "name", img.name, "digest", d, "policy", p.Name, "rule", v.Rule, "reason", v.Reason)
	return manifestAnswer{}, errf(codeDenied, "%s@%s: %s", img.name, d, v.Reason)
}

// decide applies the policy to digest d of the image, asked as rt, with
// what was remembered of d; first is when d was first known (min_age).
func (g *gate) decide(ctx context.Context, p *gatePolicy, img imageRef, rt route, d string, a manifestAnswer) (v policy.Verdict, first time.Time) {
	if d == "" {
		return policy.Verdict{Decision: policy.Deny, Rule: "digest", Reason: fmt.Sprintf("the manifest's digest is not known: policy %q decides on digests", p.Name)}, first
	}
	unreadable := func(err error) policy.Verdict {
		// What was learned of d cannot be read: refuse rather than
		// forget a deny (fail closed).
		g.s.log.Error("cannot read a remembered policy verdict", "repository", g.rp.Name, "digest", d, "err", err)
		return policy.Verdict{Decision: policy.Deny, Rule: "unknown", Reason: fmt.Sprintf("what policy %q learned of this digest cannot be read now; try again", p.Name)}
	}
	subject := policy.Subject{Image: g.rp.grantPrefix + img.name, Digest: d}
	if rt.digest.IsZero() {
		subject.Tags = []string{rt.ref}
	}
	// A signature holds nothing to run: it is not held, nor signed itself.
	// (Parsed only for a policy that holds or requires signatures: the
	// others' warm pulls read nothing more.)
	sigArtifact := (p.MinAge > 0 || p.RequireSignature) && signatureArtifact(a)
	if p.MinAge > 0 && !sigArtifact {
		var err error
		if subject.FirstSeen, subject.Approved, err = g.aging(ctx, d); err != nil {
			return unreadable(err), first
		}
		first = subject.FirstSeen
	}
	v = p.Decide(subject, time.Now())
	if v.Rule == "digest" {
		return v, first // named outright: nothing remembered overrides it
	}
	known, ok, err := g.s.verdicts.GetVerdict(ctx, p.key(d))
	switch {
	case err != nil:
		return unreadable(err), first
	case ok && known.Decision == string(policy.Deny):
		return policy.Verdict{Decision: policy.Deny, Rule: known.Rule, Reason: known.Reason}, first // a denied tag or index named it
	case ok && known.Decision == string(policy.Allow) && (v.Decision == policy.Hold || v.Decision == policy.Allow && p.RequireSignature):
		// It passed the whole policy before (by itself: its signature
		// verified; or its index did): a warm pull checks nothing again.
		return policy.Verdict{Decision: policy.Allow, Rule: known.Rule, Reason: known.Reason}, first
	case v.Decision == policy.Deny && v.Rule == "tag":
		g.remember(ctx, p, d, v)
	}
	if v.Decision == policy.Allow && p.RequireSignature && !sigArtifact {
		v = g.checkSignature(ctx, p, img, d)
	}
	return v, first
}

// inherit gives the platform manifests of an index the index's verdict
// when it was learned beyond their digests (a denied tag; an index
// allowed), and the time the index was first known (first) as theirs.
func (g *gate) inherit(ctx context.Context, p *gatePolicy, index *parsedManifest, v policy.Verdict, first time.Time) {
	if !first.IsZero() {
		for _, c := range index.children {
			if _, err := g.seenAt(ctx, c.String(), first); err != nil {
				g.s.log.Warn("cannot remember when a platform manifest was first known", "repository", g.rp.Name, "digest", c, "err", err)
			}
		}
	}
	if v.Decision == policy.Hold || v.Decision == policy.Allow && (v.Rule == "image" || v.Rule == "default" || v.Rule == "digest") {
		return // decided on the image alone (or its age): a child gets the same answer by itself
	}
	for _, c := range index.children {
		child := v
		if v.Decision == policy.Allow {
			child.Rule, child.Reason = "index", fmt.Sprintf("listed by an index policy %q let through", p.Name)
			if known, ok, err := g.s.verdicts.GetVerdict(ctx, p.key(c.String())); err != nil || (ok && known.Decision == string(policy.Deny)) {
				continue // a deny learned elsewhere stands
			}
		}
		g.remember(ctx, p, c.String(), child)
	}
}

// remember keeps v for d under p, unless it is kept already: a client
// asking again for a refused index or tag costs a read, not a write.
func (g *gate) remember(ctx context.Context, p *gatePolicy, d string, v policy.Verdict) {
	if known, ok, err := g.s.verdicts.GetVerdict(ctx, p.key(d)); err == nil && ok && known.Decision == string(v.Decision) && known.Rule == v.Rule {
		return
	}
	if err := g.s.verdicts.PutVerdict(ctx, p.key(d), store.Verdict{Decision: string(v.Decision), Rule: v.Rule, Reason: v.Reason, At: time.Now()}); err != nil {
		g.s.log.Warn("cannot remember a policy verdict", "repository", g.rp.Name, "digest", d, "err", err)
	}
}

// key is where a verdict on d under this policy is remembered.
func (p *gatePolicy) key(d string) string { return p.fp + "@" + d }

// gate is the gate rp is served through.
func (rp *repo) gate() *gate { return rp.impl.(*gate) }

// served lets what follows a manifest start: only for one the gate let
// through (manifest returned it).
func (g *gate) served(img imageRef, a manifestAnswer) { g.repository.served(img, a) }
