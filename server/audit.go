package server

import (
	"context"
	"path"
	"slices"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/store"
)

// record sends ev to the audit sinks, with the user and client address
// of the request in ctx where ev names none.
func record(s *Server, ctx context.Context, ev audit.Event) {
	if s.opts.Audit == nil {
		return
	}
	info := infoOf(ctx)
	if ev.User == "" {
		switch {
		case info.principal.internal:
			ev.User = "berth"
		case info.principal.user != nil:
			ev.User = info.principal.user.Name
		default:
			ev.User = "anonymous"
		}
	}
	if ev.Client == "" {
		ev.Client = info.client
	}
	s.opts.Audit.Record(ev)
}

// immutableRule is the glob of rp's immutable_tags that tag matches ("":
// none).
func immutableRule(rp *repo, tag string) string {
	i := slices.IndexFunc(rp.ImmutableTags, func(g string) bool { ok, _ := path.Match(g, tag); return ok })
	if i < 0 {
		return ""
	}
	return rp.ImmutableTags[i]
}

// checkTagMove refuses to point an immutable tag of rp's image (path) at
// d when it points elsewhere (the same digest again is fine).
func checkTagMove(ctx context.Context, s *Server, rp *repo, path, tag string, d store.Digest) error {
	rule := immutableRule(rp, tag)
	if rule == "" {
		return nil
	}
	ti, err := s.manifests.ResolveTag(ctx, path, tag)
	switch {
	case store.IsNotFound(err):
		return nil
	case err != nil:
		return err
	case ti.Digest == d:
		return nil
	}
	return errf(codeDenied, "tag %s is immutable (rule %q of repository %s): it stays at %s", tag, rule, rp.Name, ti.Digest).
		withDetail(map[string]string{"tag": tag, "rule": rule})
}

// checkTagDelete refuses to delete an immutable tag of rp, or (tag "")
// a manifest an immutable tag points at.
func checkTagDelete(ctx context.Context, s *Server, rp *repo, path, tag string, d store.Digest) error {
	if len(rp.ImmutableTags) == 0 {
		return nil
	}
	if tag != "" {
		if rule := immutableRule(rp, tag); rule != "" {
			return errf(codeDenied, "tag %s is immutable (rule %q of repository %s): it cannot be deleted", tag, rule, rp.Name)
		}
		return nil
	}
	tags, err := s.manifests.Tags(ctx, path)
	if err != nil {
		return err
	}
	for _, t := range tags {
		rule := immutableRule(rp, t)
		if rule == "" {
			continue
		}
		if ti, err := s.manifests.ResolveTag(ctx, path, t); err == nil && ti.Digest == d {
			return errf(codeDenied, "manifest %s is tagged %s, immutable (rule %q of repository %s): it cannot be deleted", d, t, rule, rp.Name)
		}
	}
	return nil
}

// pushTags checks that the push ev describes may set tags in rp's image
// (path) and returns where each pointed before (for the tag-moved
// events); a refusal is recorded.
func pushTags(ctx context.Context, s *Server, rp *repo, path string, tags []string, ev audit.Event) (map[string]string, error) {
	d, _ := store.ParseDigest(ev.Digest)
	before := map[string]string{}
	for _, t := range tags {
		if err := checkTagMove(ctx, s, rp, path, t, d); err != nil {
			ev.Tag, ev.Outcome, ev.Detail = t, "refused", err.Error()
			record(s, ctx, ev)
			return nil, err
		}
		if ti, err := s.manifests.ResolveTag(ctx, path, t); err == nil {
			before[t] = ti.Digest.String()
		}
	}
	return before, nil
}

// tagEvents records a push: one event per tag (or one by digest), and a
// tag moved for each tag that pointed elsewhere before.
func tagEvents(s *Server, ctx context.Context, ev audit.Event, tags []string, before map[string]string) {
	if len(tags) == 0 {
		record(s, ctx, ev)
		return
	}
	for _, t := range tags {
		e := ev
		e.Tag = t
		record(s, ctx, e)
		if old, ok := before[t]; ok && old != ev.Digest {
			e.Action, e.Detail = audit.TagMoved, "from "+old
			record(s, ctx, e)
		}
	}
}
