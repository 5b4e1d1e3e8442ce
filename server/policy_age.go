package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/store"
)

// A policy's min_age holds a digest berth first knew less than min_age
// ago. When berth first knew it is remembered once per digest, under any
// policy ("seen@"): an eviction or a changed policy does not start the
// quarantine again. An index's platform manifests count as known when
// the index was. An operator's approval ("approved@", berth approve)
// releases a digest early. While a tag's new digest is held, the tag
// serves the last digest the policy let through under it ("passed@"),
// when there is one.

// aging is what min_age decides with: when d was first known, whether
// it is approved.
func (g *gate) aging(ctx context.Context, d string) (first time.Time, approved bool, err error) {
	first, err = g.seenAt(ctx, d, time.Now())
	if err != nil {
		return first, false, err
	}
	_, approved, err = g.s.verdicts.GetVerdict(ctx, "approved@"+d)
	return first, approved, err
}

// seenAt returns when d was first known, remembering at as that time
// when nothing is remembered yet.
func (g *gate) seenAt(ctx context.Context, d string, at time.Time) (time.Time, error) {
	v, ok, err := g.s.verdicts.GetVerdict(ctx, "seen@"+d)
	if err != nil || ok {
		return v.At, err
	}
	return at, g.s.verdicts.PutVerdict(ctx, "seen@"+d, store.Verdict{Decision: "seen", At: at})
}

// passedKey is where the last digest a policy let through under a tag is
// remembered.
func passedKey(p *gatePolicy, img imageRef, tag string) string {
	return "passed@" + p.fp + "@" + img.path() + ":" + tag
}

// notePassed remembers d as the tag's last digest let through.
func (g *gate) notePassed(ctx context.Context, p *gatePolicy, img imageRef, tag, d string) {
	key := passedKey(p, img, tag)
	if v, ok, err := g.s.verdicts.GetVerdict(ctx, key); err == nil && ok && v.Digest == d {
		return
	}
	if err := g.s.verdicts.PutVerdict(ctx, key, store.Verdict{Decision: string(policy.Allow), Digest: d, At: time.Now()}); err != nil {
		g.s.log.Warn("cannot remember a tag's passed digest", "repository", g.rp.Name, "name", img.name, "tag", tag, "err", err)
	}
}

// previous answers a tag whose new digest is held with the last digest
// the policy let through under it: ok is false when there is none, or it
// does not pass now.
func (g *gate) previous(ctx context.Context, p *gatePolicy, img imageRef, tag, held string, head bool) (manifestAnswer, bool) {
	v, ok, err := g.s.verdicts.GetVerdict(ctx, passedKey(p, img, tag))
	if err != nil || !ok || v.Digest == held {
		return manifestAnswer{}, false
	}
	d, err := store.ParseDigest(v.Digest)
	if err != nil {
		return manifestAnswer{}, false
	}
	rt := route{kind: routeManifest, name: img.name, ref: d.String(), digest: d}
	a, err := g.repository.manifest(ctx, img, rt, head)
	if err != nil {
		return manifestAnswer{}, false
	}
	if pv, _ := g.decide(ctx, p, img, rt, d.String(), a); pv.Decision != policy.Allow {
		return manifestAnswer{}, false
	}
	g.s.log.Info("policy holds a tag's new digest; serving the one before", "repository", g.rp.Name, "name", img.name, "tag", tag, "held", held, "serving", d)
	return a, true
}

// ApproveReply is what berth approve did.
type ApproveReply struct {
	Name   string    `json:"name"`
	Digest string    `json:"digest"`
	At     time.Time `json:"at"`
}

// approve releases a digest from every policy's min_age: ref is
// "NAME@DIGEST" (the name is for the record; a digest is the same
// content under any name).
func approve(ctx context.Context, vs verdictStore, ref, by string) (ApproveReply, error) {
	i := strings.LastIndexByte(ref, '@')
	if i <= 0 {
		return ApproveReply{}, errf(codeRequestInvalid, "approve %q: want NAME@DIGEST", truncate(ref, 200))
	}
	name, ds := ref[:i], ref[i+1:]
	if err := validateName(name); err != nil {
		return ApproveReply{}, errf(codeNameInvalid, "approve %q: %v", truncate(name, 200), err)
	}
	d, err := store.ParseDigest(ds)
	if err != nil {
		return ApproveReply{}, errf(codeDigestInvalid, "approve: digest %q: %v", truncate(ds, 100), err)
	}
	now := time.Now()
	v := store.Verdict{Decision: string(policy.Allow), Rule: "approved", Reason: fmt.Sprintf("approved by %s as %s", by, name), At: now}
	if err := vs.PutVerdict(ctx, "approved@"+d.String(), v); err != nil {
		return ApproveReply{}, fmt.Errorf("approve: %w", err)
	}
	return ApproveReply{Name: name, Digest: d.String(), At: now}, nil
}
